//! The decode pipeline: a perf.data recording's Intel PT trace turned into branch events with
//! `perf script --itrace=be` semantics.
//!
//! The [`BranchEvent`] stream is the contract: same branches, kinds, threads, CPUs and times as
//! perf 6.1, errors included, in perf's order.

mod event;
mod filter;
mod image;
mod kernel;
mod parallel;
mod pipeline;
mod queue;

pub use event::{error_code, BranchEvent, BranchFlags, BranchKind, Origin, TraceError};
pub use filter::{
    parse_filter, pgd_leaves, FilterAction, FilterEntry, FilterParseError, RecordedFilter,
};
pub use image::RecordingImage;
pub use kernel::{
    find_kallsyms, find_vmlinux, is_kernel_map, kernel_symbol_address, vmlinux_address,
    FoundKallsyms, KernelCode, Vmlinux, KERNEL_NAME,
};
pub use parallel::{decode_parallel, decode_segments, ParallelOptions, SegmentDecoder};
pub use pipeline::{decode, BlockRun, DecodeError, DecodeOptions, DecodeStats, SegmentRef, Sink};
