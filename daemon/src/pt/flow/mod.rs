//! Instruction flow: the executed instructions reconstructed from Intel PT packets and code.
//!
//! Layers, each usable alone (libipt's model):
//! - [`events`]: packets to an ordered stream of [`Event`]s (TNT and TIP included), binding
//!   FUPs, PIPs, MODEs, OVFs and PSB+ status updates to the packets they belong to;
//! - [`block`]: walks code through an [`Image`] from event to event, consuming TNT bits (with
//!   return compression and a 64-entry return stack) and TIPs (deferred TIPs included) in code
//!   order, and hands out [`Block`]s and the events due between them;
//! - [`insn`]: iced-x86 classification and the per-(context, IP) [`Cache`] of instructions and
//!   straight-line runs, so hot code is decoded once.
//!
//! [`decode`] and [`decode_segment`] drive a [`BlockDecoder`] over a whole buffer or one PSB
//! segment, resynchronising at the next PSB after an error (libipt's rule), and report
//! [`FlowItem`]s to a callback without allocating per item. With
//! [`BlockConfig::perf_resync`] the decoder instead reads damaged trace as perf 6.1 does and
//! offers perf's recovery ([`BlockDecoder::skip_bad_packet`], [`PerfWalk`]), which the perf
//! pipeline's driver (`decode/queue.rs`) uses.
//!
//! Nothing here knows perf.data: a perf-backed [`Image`] picks the address space from the
//! [`Context`] (CR3, NR, VMCS, and a caller-set space id).

pub mod block;
pub mod errata;
pub mod events;
pub mod image;
pub mod insn;
pub mod pgd;
pub mod ptxed;
pub mod time;

pub use block::{Block, BlockConfig, BlockDecoder, Status};
pub use errata::{AddrFilter, AddrRange, AddrRangeKind, Errata};
pub use events::{Event, EventConfig, EventKind, PerfWalk, ResyncIp, WalkStep};
pub use image::{Context, Image, RawImage};
pub use insn::{BranchKind, Cache, ExecMode, Insn, InsnClass, InsnKind};
pub use pgd::PgdFilter;
pub use time::TimeConv;

use thiserror::Error;

/// Why decoding failed, with libipt's names and messages (`pt_errstr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum ErrorKind {
    #[error("internal error")]
    Internal,
    #[error("decoder out of sync")]
    Nosync,
    #[error("unknown opcode")]
    BadOpc,
    #[error("unknown packet")]
    BadPacket,
    #[error("unexpected packet context")]
    BadContext,
    #[error("reached end of trace stream")]
    Eos,
    #[error("trace stream does not match query")]
    BadQuery,
    #[error("out of memory")]
    Nomem,
    #[error("no ip")]
    Noip,
    #[error("ip has been suppressed")]
    IpSuppressed,
    #[error("no memory mapped at this address")]
    Nomap,
    #[error("unknown instruction")]
    BadInsn,
    #[error("compressed return without call")]
    RetstackEmpty,
    #[error("bad compressed return")]
    BadRetcomp,
    #[error("bad status update")]
    BadStatusUpdate,
    #[error("expected tracing enabled event")]
    NoEnable,
    #[error("event ignored")]
    EventIgnored,
    /// Not in libipt, which would loop: a million instructions ran without trace (an endless
    /// cycle of direct jumps, or code that does not match the trace).
    #[error("no progress without trace")]
    NoProgress,
}

/// A decode error and where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("Intel PT flow at trace offset {offset:#x}, ip {ip:#x}: {kind}")]
pub struct FlowError {
    /// Trace offset of the packet the decoder was at.
    pub offset: usize,
    /// The instruction the error is attributed to (libipt/ptxed's choice).
    pub ip: u64,
    pub kind: ErrorKind,
}

/// What [`decode`] reports, in trace order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowItem<'b> {
    /// Instructions executed (possibly empty).
    Block(&'b Block),
    /// An event (status updates from PSB+ included, flagged as such).
    Event(&'b Event),
    /// Decoding failed; it resumes at the next PSB.
    Error(FlowError),
    /// The trace ended while tracing was enabled.
    EndOfTrace,
}

/// Options of [`decode`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowConfig {
    pub block: BlockConfig,
}

/// Counts over one [`decode`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub instructions: u64,
    pub blocks: u64,
    pub errors: u64,
}

/// The IP an error after `block` is attributed to, as ptxed attributes it: the instruction
/// after the block's last one, the last one itself for a trace mismatch, or the block's start
/// when it is empty.
pub fn error_ip(decoder: &mut BlockDecoder<'_>, block: &Block, kind: ErrorKind) -> u64 {
    if block.ninsn == 0 {
        return block.ip;
    }
    if kind == ErrorKind::BadQuery {
        return block.end_ip;
    }
    // ptxed steps over the last instruction, following a branch displacement if it has one.
    match decoder.block_insn(block, block.end_ip) {
        Ok(insn) => insn.target.unwrap_or_else(|| insn.next_ip()),
        Err(_) => block.end_ip,
    }
}

/// Decodes a whole trace buffer: synchronises at the first PSB, reports every block and event,
/// and after an error resynchronises at the next PSB.
pub fn decode(
    trace: &[u8],
    image: &dyn Image,
    config: &FlowConfig,
    mut sink: impl FnMut(FlowItem<'_>),
) -> FlowStats {
    let mut decoder = BlockDecoder::new(trace, image, config.block);
    run(&mut decoder, 0, None, &mut sink)
}

/// Decodes the PSB segment starting at `psb` (a PSB's offset) up to the next PSB, on its own,
/// so segments can be decoded in parallel. Offsets in errors are offsets in `trace`.
pub fn decode_segment(
    trace: &[u8],
    psb: usize,
    image: &dyn Image,
    config: &FlowConfig,
    mut sink: impl FnMut(FlowItem<'_>),
) -> FlowStats {
    let start = psb.min(trace.len());
    let end = crate::pt::packets::next_psb(trace, start.saturating_add(1)).unwrap_or(trace.len());
    let segment = &trace[start..end];
    let mut decoder = BlockDecoder::new(segment, image, config.block);
    run(&mut decoder, start, Some(psb_fup_ip(trace, end)), &mut sink)
}

/// The IP of the FUP in the PSB+ at `psb`, if it has one: where the flow is at that PSB.
fn psb_fup_ip(trace: &[u8], psb: usize) -> Option<u64> {
    use crate::pt::packets::{self, BlockContext, LastIp, Packet};
    let mut pos = psb;
    let mut last = LastIp::new();
    loop {
        let packet = packets::decode(trace.get(..)?, pos, BlockContext::None).ok()?;
        pos += packet.size();
        match packet {
            Packet::Fup(ip) => {
                last.update(&ip);
                return last.get();
            }
            Packet::PsbEnd | Packet::Ovf => return None,
            _ => {}
        }
    }
}

/// `once`: decode one segment and stop; with the IP the next segment starts at, if known.
fn run(
    decoder: &mut BlockDecoder<'_>,
    base: usize,
    once: Option<Option<u64>>,
    sink: &mut impl FnMut(FlowItem<'_>),
) -> FlowStats {
    let mut stats = FlowStats::default();
    let mut block = Block::default();
    let mut last_sync: Option<usize> = None;
    loop {
        block = Block {
            ip: 0,
            ninsn: 0,
            ..block
        };
        let mut status = match decoder.sync_forward() {
            Ok(status) => status,
            Err(ErrorKind::Eos) => return stats,
            Err(kind) => {
                stats.errors += 1;
                sink(FlowItem::Error(FlowError {
                    offset: base + decoder.offset(),
                    ip: 0,
                    kind,
                }));
                // Without progress there is nothing more to find.
                let now = decoder.sync_offset();
                if once.is_some() || now.is_none() || now <= last_sync {
                    return stats;
                }
                last_sync = now;
                continue;
            }
        };
        last_sync = decoder.sync_offset();
        let error = 'segment: loop {
            while status.event_pending() {
                match decoder.event() {
                    Ok((event, next)) => {
                        sink(FlowItem::Event(&event));
                        status = next;
                    }
                    Err(kind) => break 'segment kind,
                }
            }
            if status.eos() {
                if status.ip_suppressed() {
                    return stats;
                }
                // A segment alone goes on to where the next one starts, as a sequential
                // decode does before the next PSB+ applies.
                let Some(Some(next)) = once else {
                    sink(FlowItem::EndOfTrace);
                    return stats;
                };
                let result = decoder.walk_to(&mut block, next);
                stats.blocks += 1;
                stats.instructions += u64::from(block.ninsn);
                sink(FlowItem::Block(&block));
                match result {
                    Ok(()) => return stats,
                    Err(kind) => break kind,
                }
            }
            let result = decoder.next_block(&mut block);
            stats.blocks += 1;
            stats.instructions += u64::from(block.ninsn);
            sink(FlowItem::Block(&block));
            match result {
                Ok(next) => status = next,
                Err(kind) => break kind,
            }
        };
        if error == ErrorKind::Eos {
            return stats;
        }
        stats.errors += 1;
        let ip = error_ip(decoder, &block, error);
        sink(FlowItem::Error(FlowError {
            offset: base + decoder.offset(),
            ip,
            kind: error,
        }));
        if once.is_some() {
            return stats;
        }
    }
}
