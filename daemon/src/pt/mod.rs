//! Intel Processor Trace over raw bytes and code images. Knows nothing of perf.data.

pub mod dump;
pub mod flow;
pub mod packets;
