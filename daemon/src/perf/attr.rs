//! `struct perf_event_attr` (include/uapi/linux/perf_event.h) and the ids that select it.

use super::bytes::{Bytes, Endian};
use super::error::Result;

/// `perf_event_attr.sample_type` bits (`enum perf_event_sample_format`).
pub mod sample_type {
    pub const IP: u64 = 1 << 0;
    pub const TID: u64 = 1 << 1;
    pub const TIME: u64 = 1 << 2;
    pub const ADDR: u64 = 1 << 3;
    pub const READ: u64 = 1 << 4;
    pub const CALLCHAIN: u64 = 1 << 5;
    pub const ID: u64 = 1 << 6;
    pub const CPU: u64 = 1 << 7;
    pub const PERIOD: u64 = 1 << 8;
    pub const STREAM_ID: u64 = 1 << 9;
    pub const RAW: u64 = 1 << 10;
    pub const IDENTIFIER: u64 = 1 << 16;
}

/// Bits of the `perf_event_attr` flag bitfield (the u64 at offset 40).
pub mod attr_flags {
    pub const DISABLED: u64 = 1 << 0;
    pub const EXCLUDE_USER: u64 = 1 << 4;
    pub const EXCLUDE_KERNEL: u64 = 1 << 5;
    pub const MMAP: u64 = 1 << 8;
    pub const COMM: u64 = 1 << 9;
    pub const FREQ: u64 = 1 << 10;
    pub const TASK: u64 = 1 << 13;
    pub const SAMPLE_ID_ALL: u64 = 1 << 18;
    pub const EXCLUDE_HOST: u64 = 1 << 19;
    pub const EXCLUDE_GUEST: u64 = 1 << 20;
    pub const MMAP2: u64 = 1 << 23;
    pub const CONTEXT_SWITCH: u64 = 1 << 26;
}

/// The smallest `perf_event_attr` (PERF_ATTR_SIZE_VER0): everything up to config1.
pub const ATTR_SIZE_VER0: usize = 64;

/// One event's attributes, as recorded.
#[derive(Clone, Debug)]
pub struct EventAttr<'a> {
    /// The attr bytes as stored (its own `size`, or what the file gives it).
    pub raw: Bytes<'a>,
    pub type_: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    /// The flag bitfield, normalised to little-endian bit numbering (see [`attr_flags`]).
    pub flags: u64,
    pub config1: u64,
    pub config2: Option<u64>,
    /// The sample ids that records of this event carry (ID / IDENTIFIER).
    pub ids: Vec<u64>,
}

impl<'a> EventAttr<'a> {
    /// Parses the attr in `raw` (at least `ATTR_SIZE_VER0` bytes; `raw` ends where the file says it
    /// does, which may differ from the attr's own `size`).
    pub fn parse(raw: Bytes<'a>, ids: Vec<u64>) -> Result<Self> {
        raw.slice(0, ATTR_SIZE_VER0, "perf_event_attr")?;
        let flag_bytes: [u8; 8] = raw.slice(40, 8, "perf_event_attr")?.try_into().expect("8");
        // A bitfield is allocated from the least significant bit on little-endian machines and from
        // the most significant on big-endian ones, so a big-endian writer's flags are our flags with
        // the bit order of the whole u64 reversed (perf's swap_bitfield says the same per byte).
        let flags = match raw.endian {
            Endian::Little => u64::from_le_bytes(flag_bytes),
            Endian::Big => u64::from_be_bytes(flag_bytes).reverse_bits(),
        };
        Ok(EventAttr {
            raw,
            type_: raw.u32(0, "perf_event_attr")?,
            size: raw.u32(4, "perf_event_attr")?,
            config: raw.u64(8, "perf_event_attr")?,
            sample_period: raw.u64(16, "perf_event_attr")?,
            sample_type: raw.u64(24, "perf_event_attr")?,
            read_format: raw.u64(32, "perf_event_attr")?,
            flags,
            config1: raw.u64(56, "perf_event_attr")?,
            config2: raw.opt_u64(64),
            ids,
        })
    }

    pub fn sample_id_all(&self) -> bool {
        self.flags & attr_flags::SAMPLE_ID_ALL != 0
    }

    /// Bytes of the sample-id trailer on this event's non-SAMPLE records.
    pub fn sample_id_size(&self) -> usize {
        if !self.sample_id_all() {
            return 0;
        }
        use sample_type::*;
        [TID, TIME, ID, STREAM_ID, CPU, IDENTIFIER]
            .iter()
            .filter(|&&bit| self.sample_type & bit != 0)
            .count()
            * 8
    }

    /// A short name in perf's spirit: `cycles`, `dummy`, `type 6 config 0x300e601`.
    pub fn name(&self) -> String {
        const HARDWARE: [&str; 10] = [
            "cycles",
            "instructions",
            "cache-references",
            "cache-misses",
            "branches",
            "branch-misses",
            "bus-cycles",
            "stalled-cycles-frontend",
            "stalled-cycles-backend",
            "ref-cycles",
        ];
        const SOFTWARE: [&str; 12] = [
            "cpu-clock",
            "task-clock",
            "page-faults",
            "context-switches",
            "cpu-migrations",
            "minor-faults",
            "major-faults",
            "alignment-faults",
            "emulation-faults",
            "dummy",
            "bpf-output",
            "cgroup-switches",
        ];
        let table: &[&str] = match self.type_ {
            0 => &HARDWARE,
            1 => &SOFTWARE,
            _ => &[],
        };
        match table.get(self.config as usize) {
            Some(name) => (*name).to_string(),
            None => format!("type {} config {:#x}", self.type_, self.config),
        }
    }
}
