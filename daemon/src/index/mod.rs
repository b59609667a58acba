//! The index: execution counts keyed by code identity (machine, binary, file offset), built as
//! a [`Sink`](crate::decode::Sink) of the decode pipeline and aggregated to source lines on demand ([`lines`]).
//!
//! Counts are keyed by the binary's build-id (or recorded path without one) and the file
//! offset, never by virtual address, so they survive ASLR and merge across processes. An
//! [`Index`] only grows by [`Index::merge`] (addition), so segments decoded in parallel give
//! exactly the counts of one decode in order.

mod build;
mod builder;
pub mod lines;
pub mod srcline;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use crate::debuginfo::BuildId;
use crate::pt::flow::insn::AddrHasher;
use crate::pt::flow::BranchKind;

pub use build::build;
pub use builder::IndexBuilder;
pub use lines::{
    aggregate, aggregate_with_kernel, BinaryReport, FunctionCounts, KernelSource, LineCounts,
    LineReport, Unresolved,
};
pub use srcline::Naming;

/// Which binary: by build-id when the recording has one (paths differ between machines and
/// cache layouts), by recorded path otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryId {
    BuildId(BuildId),
    Path(Arc<str>),
}

/// A binary of a machine (0: the host, else the VM's pid).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinaryKey {
    pub machine_pid: i32,
    pub id: BinaryId,
}

/// One instruction's identity: a file offset in a binary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodeAddr {
    pub binary: BinaryKey,
    pub offset: u64,
}

/// Counts of one instruction (or, summed, of anything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Times the instruction executed.
    pub instructions: u64,
    /// Times it was reached other than by falling through from the instruction before it in
    /// memory (a taken branch, a trace start, an interrupt return): what makes a line "entered".
    pub entries: u64,
    /// Executions of it as a branch instruction (0 unless it is one).
    pub branches: u64,
    /// perf's branch samples (`--itrace=b`) with it as source: taken branches, and trace ends
    /// and asynchronous events at it.
    pub taken: u64,
    /// Of `taken`, those of a conditional branch (perf's `jcc` flag).
    pub cond_taken: u64,
    /// Executions of it as a conditional branch.
    pub cond_branches: u64,
}

impl Counts {
    /// Conditional branches that fell through.
    pub fn not_taken(&self) -> u64 {
        self.cond_branches.saturating_sub(self.cond_taken)
    }

    pub fn add(&mut self, other: &Counts) {
        self.instructions += other.instructions;
        self.entries += other.entries;
        self.branches += other.branches;
        self.taken += other.taken;
        self.cond_taken += other.cond_taken;
        self.cond_branches += other.cond_branches;
    }
}

/// What is known of the instruction at a [`CodeAddr`], from decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsnShape {
    pub size: u8,
    pub branch: Option<BranchKind>,
}

/// Where an indirect branch went.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Code(CodeAddr),
    /// A virtual address in no known binary.
    Unresolved(u64),
}

/// Code touched by one AUX queue, and its time range: what a later "events at this line" query
/// re-decodes. Granularity is the queue for now; PSB segments need offsets the pipeline does
/// not hand out yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSummary {
    /// Pages (file offset / 4096) touched, per binary.
    pub pages: BTreeMap<BinaryKey, std::collections::BTreeSet<u64>>,
    /// Perf time of the first and last branch event attributed to the queue's CPU or thread.
    pub time: Option<(u64, u64)>,
}

/// One PSB segment of an AUX queue: where it is, when it ran, which code it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    pub queue: u32,
    /// Trace offsets (in the queue's stream) of its PSB and of its end (the next PSB).
    pub offsets: (u64, u64),
    /// Perf time of the first and last timing packet its blocks used (`None`: timeless).
    pub time: Option<(u64, u64)>,
    /// The queue's time (TSC) before its first state, to decode it alone with perf's times.
    pub queue_tsc: u64,
    /// File offset ranges (start, end exclusive) of the code it ran, per binary, sorted
    /// and merged.
    pub code: BTreeMap<BinaryKey, Vec<(u64, u64)>>,
}

impl Segment {
    /// Whether it ran code of `binary` in `range` (file offsets).
    pub fn touches(&self, binary: &BinaryKey, range: std::ops::Range<u64>) -> bool {
        let Some(ranges) = self.code.get(binary) else {
            return false;
        };
        // The first range ending after range.start decides.
        let i = ranges.partition_point(|&(_, end)| end <= range.start);
        ranges.get(i).is_some_and(|&(start, _)| start < range.end)
    }

    /// What [`crate::decode::decode_segments`] takes.
    pub fn to_ref(&self) -> crate::decode::SegmentRef {
        crate::decode::SegmentRef {
            queue: self.queue,
            offset: self.offsets.0,
            queue_tsc: self.queue_tsc,
        }
    }

    /// Adds `other` (the same segment, counted by another builder).
    fn merge(&mut self, other: Segment) {
        self.offsets.1 = self.offsets.1.max(other.offsets.1);
        self.time = match (self.time, other.time) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (a, b) => a.or(b),
        };
        for (binary, ranges) in other.code {
            let mine = self.code.entry(binary).or_default();
            mine.extend(ranges);
            merge_ranges(mine);
        }
    }
}

/// Sorts `ranges` and merges those that overlap or touch.
pub(crate) fn merge_ranges(ranges: &mut Vec<(u64, u64)>) {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    *ranges = out;
}

/// Page size of [`QueueSummary::pages`].
pub const PAGE: u64 = 4096;

/// Counts of executions that have no code identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmappedCounts {
    /// Instructions in blocks whose code is in no mapping (or could not be decoded again).
    pub instructions: u64,
    /// perf branch samples whose source address is in no mapping.
    pub taken: u64,
}

/// A map keyed by code identity, hashed cheaply (it is updated per block and per branch).
pub type CodeMap<V> = HashMap<CodeAddr, V, BuildHasherDefault<AddrHasher>>;

/// Immutable counts of a decoded recording. Build with [`IndexBuilder`]; combine with
/// [`Index::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// Per instruction.
    pub counts: CodeMap<Counts>,
    /// Per instruction, its size and branch kind.
    pub shapes: CodeMap<InsnShape>,
    /// Per thread (pid, tid), per instruction.
    pub threads: BTreeMap<(i32, i32), CodeMap<Counts>>,
    /// Per indirect branch (jump, call, return), its targets and how often each was taken.
    pub targets: CodeMap<BTreeMap<Target, u64>>,
    /// Per AUX queue.
    pub queues: BTreeMap<u32, QueueSummary>,
    /// Per PSB segment, the code it ran and its time, sorted by (queue, offset): what
    /// "events at this line" decodes again ([`Index::segments_touching`]).
    pub segments: Vec<Segment>,
    /// Recorded path of each binary (the first one seen for a build-id).
    pub paths: BTreeMap<BinaryKey, Arc<str>>,
    pub unmapped: UnmappedCounts,
    /// Decoder errors seen.
    pub errors: u64,
}

impl Index {
    /// Adds `other`'s counts to this index's.
    pub fn merge(&mut self, other: Index) {
        for (addr, c) in other.counts {
            self.counts.entry(addr).or_default().add(&c);
        }
        for (addr, shape) in other.shapes {
            self.shapes.entry(addr).or_insert(shape);
        }
        for (thread, counts) in other.threads {
            let mine = self.threads.entry(thread).or_default();
            for (addr, c) in counts {
                mine.entry(addr).or_default().add(&c);
            }
        }
        for (addr, targets) in other.targets {
            let mine = self.targets.entry(addr).or_default();
            for (target, n) in targets {
                *mine.entry(target).or_default() += n;
            }
        }
        for (queue, summary) in other.queues {
            let mine = self.queues.entry(queue).or_default();
            for (binary, pages) in summary.pages {
                mine.pages.entry(binary).or_default().extend(pages);
            }
            mine.time = match (mine.time, summary.time) {
                (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
                (a, b) => a.or(b),
            };
        }
        for segment in other.segments {
            let key = (segment.queue, segment.offsets.0);
            match self
                .segments
                .binary_search_by_key(&key, |s| (s.queue, s.offsets.0))
            {
                Ok(i) => self.segments[i].merge(segment),
                Err(i) => self.segments.insert(i, segment),
            }
        }
        for (key, path) in other.paths {
            self.paths.entry(key).or_insert(path);
        }
        self.unmapped.instructions += other.unmapped.instructions;
        self.unmapped.taken += other.unmapped.taken;
        self.errors += other.errors;
    }

    /// The PSB segments that ran code of `binary` in `range` (file offsets), in trace order
    /// per queue.
    pub fn segments_touching<'s>(
        &'s self,
        binary: &'s BinaryKey,
        range: std::ops::Range<u64>,
    ) -> impl Iterator<Item = &'s Segment> + 's {
        self.segments
            .iter()
            .filter(move |s| s.touches(binary, range.clone()))
    }

    /// The binaries counted, with their recorded paths.
    pub fn binaries(&self) -> impl Iterator<Item = (&BinaryKey, &Arc<str>)> {
        self.paths.iter()
    }

    /// Total counts over every instruction with a code identity.
    pub fn totals(&self) -> Counts {
        let mut total = Counts::default();
        for c in self.counts.values() {
            total.add(c);
        }
        total
    }
}

#[cfg(test)]
mod tests;
