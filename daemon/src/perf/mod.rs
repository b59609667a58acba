//! Reading perf.data files (tools/perf/Documentation/perf.data-file-format.txt). Knows nothing of
//! Intel PT packets.
//!
//! Zero-copy: [`PerfData`] maps the file (or buffers a pipe or decompressed records), and
//! everything parsed from it borrows those bytes. An AUXTRACE payload is a slice of the mapping
//! plus its file offset ([`Auxtrace::data`], [`Auxtrace::data_offset`]). Every error carries the
//! file and offset where parsing stopped.
//!
//! ```no_run
//! let data = ptlens::perf::PerfData::open("perf.data")?;
//! let recording = data.recording()?;
//! for record in recording.records() {
//!     let record = record?;
//!     println!("{:#x} {:?}", record.offset, record.type_name());
//! }
//! for queue in &recording.aux_queues()?.queues {
//!     println!("queue {}: {} bytes", queue.idx, queue.size());
//! }
//! # Ok::<(), ptlens::perf::Error>(())
//! ```

mod attr;
mod bytes;
mod error;
mod features;
mod file;
mod record;

pub use attr::{attr_flags, sample_type, EventAttr};
pub use bytes::{Bytes, Endian};
pub use error::{Error, ErrorKind, Result};
pub use features::{
    feature, AuxtraceIndexEntry, BuildId, Compression, Features, FileHeader, NrCpus, PmuMapping,
    Section,
};
pub use file::{AuxBuffer, AuxQueue, AuxQueues, PerfData, Recording, Records};
pub use record::{
    misc, record_type, Auxtrace, AuxtraceError, AuxtraceInfo, IdIndex, IdIndexEntry, IntelPtInfo,
    Mmap, Mmap2File, Record, RecordBody, RecordHeader, Sample, SampleId, Source, Task, TimeConv,
    AUXTRACE_INTEL_PT,
};
