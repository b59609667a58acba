//! [`IndexBuilder`]: the [`Sink`] that counts a decode into an [`Index`].

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::debuginfo::BuildId;
use crate::decode::{
    BlockRun, BranchEvent, BranchFlags, BranchKind as EventKind, RecordingImage, Sink,
};
use crate::pt::flow::insn::{classify, AddrHasher, MAX_INSN_LEN};
use crate::pt::flow::{BranchKind, Context, ExecMode, Image};

use super::{
    merge_ranges, BinaryId, BinaryKey, CodeAddr, Counts, Index, InsnShape, Segment, Target, PAGE,
};

/// Which queue an event belongs to, as far as its origin tells: its CPU, or its thread when
/// the recording is per thread (events do not carry the queue).
type QueueKey = (i32, i32);

/// Maps keyed by addresses and code identities: counted per block, so hashing must be cheap.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// A block as counted: start, mode, instructions known, thread (pid, tid), AUX queue.
type BlockKey = (CodeAddr, ExecMode, u32, (i32, i32), u32);

fn queue_key(cpu: i32, tid: i32) -> QueueKey {
    if cpu == -1 {
        (-1, tid)
    } else {
        (cpu, -1)
    }
}

/// Counts blocks and branch events into an [`Index`]; [`IndexBuilder::finish`] hands it out.
///
/// Instructions are counted from blocks (each block's instructions decoded once per start
/// address and cached); taken branches from the branch events, which are perf's samples
/// exactly (a block ending in a jcc whose target is its own fall-through does not say whether
/// it was taken). An event's addresses are named through the blocks of its queue just decoded,
/// so they are resolved in the address space the decoder used.
#[derive(Debug, Default, Clone)]
pub struct IndexBuilder {
    index: Index,
    /// Instructions from a block start (offsets relative to it), decoded as far as needed.
    runs: FastMap<(CodeAddr, ExecMode), Vec<(u32, InsnShape)>>,
    /// Executions per (block start, mode, instructions, thread, queue): hot code costs one count per
    /// block, expanded to instructions once, in [`IndexBuilder::finish`].
    blocks: FastMap<BlockKey, u64>,
    /// Per queue key, a branch target not decoded yet (a trace start is reported before the
    /// block it starts): its entry is counted when the block arrives.
    pending_entry: FastMap<QueueKey, ((i32, i32), u64)>,
    /// Per queue key, the code identity of IPs its recent blocks started, ended or branched at.
    recent: FastMap<QueueKey, FastMap<u64, Option<CodeAddr>>>,
    /// The same for all queues, when an event's origin names no queue seen.
    recent_any: FastMap<u64, Option<CodeAddr>>,
    queue_of: FastMap<QueueKey, u32>,
    /// Per (queue, PSB offset): the segment so far (the code ranges its blocks ran, merged
    /// now and then), and per binary the length at which its ranges are merged next.
    segments: FastMap<(u32, u64), (Segment, FastMap<BinaryKey, usize>)>,
    /// Per queue key, the first block counted (its IP and code), unless a branch target was
    /// left pending before it: what settles the pending entry of the chunk before this one
    /// ([`IndexBuilder::settle`]).
    opening: FastMap<QueueKey, Option<(u64, CodeAddr)>>,
}

/// Adds `times` executions of the instructions `insns` (offsets relative to `start`).
fn count_into(
    index: &mut Index,
    thread: (i32, i32),
    start: &CodeAddr,
    insns: &[(u32, InsnShape)],
    times: u64,
) {
    let per_thread = index.threads.entry(thread).or_default();
    for &(rel, shape) in insns {
        let addr = CodeAddr {
            binary: start.binary.clone(),
            offset: start.offset.wrapping_add(u64::from(rel)),
        };
        let mut c = Counts {
            instructions: times,
            ..Counts::default()
        };
        if let Some(kind) = shape.branch {
            c.branches = times;
            if kind == BranchKind::Conditional {
                c.cond_branches = times;
            }
        }
        per_thread.entry(addr.clone()).or_default().add(&c);
        index.counts.entry(addr.clone()).or_default().add(&c);
        index.shapes.entry(addr).or_insert(shape);
    }
}

/// The code identity of `ip` in `ctx`, as the decoder's image maps it.
pub(crate) fn locate(image: &RecordingImage<'_>, ctx: &Context, ip: u64) -> Option<CodeAddr> {
    let map = image.map_for(ctx, ip)?;
    let id = match map
        .build_id
        .as_ref()
        .and_then(|b| BuildId::new(b.as_bytes()))
    {
        Some(id) => BinaryId::BuildId(id),
        None => BinaryId::Path(map.filename.clone()),
    };
    Some(CodeAddr {
        binary: BinaryKey { machine_pid: 0, id },
        offset: map.file_offset(ip),
    })
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        IndexBuilder::default()
    }

    /// The counts so far.
    pub fn finish(mut self) -> Index {
        let mut segments: Vec<Segment> = std::mem::take(&mut self.segments)
            .into_values()
            .map(|(mut segment, _)| {
                for ranges in segment.code.values_mut() {
                    merge_ranges(ranges);
                }
                segment
            })
            .collect();
        segments.sort_unstable_by_key(|s| (s.queue, s.offsets.0));
        let mut index = std::mem::take(&mut self.index);
        index.merge(Index {
            segments,
            ..Index::default()
        });
        self.index = index;
        for ((start, mode, n, thread, queue), times) in std::mem::take(&mut self.blocks) {
            let Some(run) = self.runs.get(&(start.clone(), mode)) else {
                continue;
            };
            let run = &run[..(n as usize).min(run.len())];
            count_into(&mut self.index, thread, &start, run, times);
            if let Some(&(rel, _)) = run.last() {
                let pages = self
                    .index
                    .queues
                    .entry(queue)
                    .or_default()
                    .pages
                    .entry(start.binary.clone())
                    .or_default();
                let first = start.offset / PAGE;
                let last = start.offset.saturating_add(u64::from(rel)) / PAGE;
                pages.extend(first..=last.min(first.saturating_add(16)));
            }
        }
        // A thread whose blocks had no known instructions leaves an empty map behind.
        self.index.threads.retain(|_, counts| !counts.is_empty());
        self.index
    }

    /// A builder with this one's caches and no counts: what a decoder of the next segment
    /// knows, so that counting the rest of a stream with it and merging gives exactly the
    /// counts of one builder.
    pub fn fork(&self) -> IndexBuilder {
        IndexBuilder {
            index: Index::default(),
            blocks: FastMap::default(),
            ..self.clone()
        }
    }

    /// Counts one block's instructions. The code-free core of [`Sink::block`], for tests and
    /// other callers.
    pub fn count_block(
        &mut self,
        thread: (i32, i32),
        start: &CodeAddr,
        insns: &[(u32, InsnShape)],
    ) {
        count_into(&mut self.index, thread, start, insns, 1);
    }

    /// Counts control arriving at `to` by a branch (or a trace start), for `thread`.
    pub fn count_entry(&mut self, thread: (i32, i32), to: &CodeAddr) {
        let c = Counts {
            entries: 1,
            ..Counts::default()
        };
        self.index.counts.entry(to.clone()).or_default().add(&c);
        let per_thread = self.index.threads.entry(thread).or_default();
        per_thread.entry(to.clone()).or_default().add(&c);
    }

    /// Counts one branch sample whose source is `from` (resolved), for `thread`.
    pub fn count_taken(
        &mut self,
        thread: (i32, i32),
        from: Option<&CodeAddr>,
        conditional: bool,
        target: Option<Target>,
    ) {
        let Some(from) = from else {
            self.index.unmapped.taken += 1;
            return;
        };
        let c = Counts {
            taken: 1,
            cond_taken: u64::from(conditional),
            ..Counts::default()
        };
        self.index.counts.entry(from.clone()).or_default().add(&c);
        let per_thread = self.index.threads.entry(thread).or_default();
        per_thread.entry(from.clone()).or_default().add(&c);
        if let Some(target) = target {
            let targets = self.index.targets.entry(from.clone()).or_default();
            *targets.entry(target).or_default() += 1;
        }
    }

    /// How many of a block's `ninsn` instructions from `start` are known, decoding what the
    /// cache lacks: fewer than `ninsn` when the code cannot be read or decoded.
    fn insns(
        &mut self,
        image: &RecordingImage<'_>,
        ctx: &Context,
        mode: ExecMode,
        ip: u64,
        start: &CodeAddr,
        ninsn: u32,
    ) -> usize {
        let run = self.runs.entry((start.clone(), mode)).or_default();
        let want = ninsn as usize;
        while run.len() < want {
            let rel = match run.last() {
                Some(&(rel, shape)) => rel.saturating_add(u32::from(shape.size)),
                None => 0,
            };
            let at = ip.wrapping_add(u64::from(rel));
            let mut buf = [0u8; MAX_INSN_LEN];
            let len = image.read(ctx, at, &mut buf);
            let Ok(insn) = classify(&buf[..len], mode, at) else {
                break;
            };
            run.push((
                rel,
                InsnShape {
                    size: insn.size,
                    branch: insn.branch_kind(),
                },
            ));
        }
        want.min(run.len())
    }

    /// Counts the entry still pending at the end of this builder's chunk when `next` (the
    /// builder of the queue's next chunk, decoded apart) opened at that target: what one
    /// builder over both chunks counts.
    pub fn settle(&mut self, next: &IndexBuilder) {
        for (key, (who, ip)) in std::mem::take(&mut self.pending_entry) {
            if let Some(Some((at, addr))) = next.opening.get(&key) {
                if *at == ip {
                    self.count_entry(who, addr);
                }
            }
        }
    }

    /// Remembers the code identity of the IPs `run`'s block starts, ends and branches at;
    /// returns its queue key and start.
    fn remember_block(&mut self, run: &BlockRun<'_>) -> (QueueKey, Option<CodeAddr>) {
        let block = run.block;
        let key = queue_key(run.origin.cpu, run.origin.tid);
        let start = locate(run.image, &block.ctx, block.ip);
        self.remember(key, block.ip, start.clone());
        if let Some(last) = block.last {
            for ip in [Some(last.ip), Some(last.next_ip()), last.target]
                .into_iter()
                .flatten()
            {
                let addr = locate(run.image, &block.ctx, ip);
                self.remember(key, ip, addr);
            }
        }
        (key, start)
    }

    fn remember(&mut self, key: QueueKey, ip: u64, addr: Option<CodeAddr>) {
        self.recent_any.insert(ip, addr.clone());
        self.recent.entry(key).or_default().insert(ip, addr);
    }

    fn resolve(&self, key: QueueKey, ip: u64) -> Option<CodeAddr> {
        match self.recent.get(&key).and_then(|m| m.get(&ip)) {
            Some(addr) => addr.clone(),
            None => self.recent_any.get(&ip).cloned().flatten(),
        }
    }
}

impl Sink for IndexBuilder {
    fn event(&mut self, event: &BranchEvent) {
        let o = &event.origin;
        let key = queue_key(o.cpu, o.tid);
        if let Some(&queue) = self.queue_of.get(&key) {
            let summary = self.index.queues.entry(queue).or_default();
            summary.time = Some(match summary.time {
                Some((a, b)) => (a.min(o.time), b.max(o.time)),
                None => (o.time, o.time),
            });
        }
        let (from, to, flags) = match &event.kind {
            EventKind::Error(_) => {
                self.index.errors += 1;
                return;
            }
            EventKind::Branch { from, to, flags } => (*from, *to, *flags),
        };
        // Entries come from events, not from block adjacency, so that counts of segments
        // decoded apart add up exactly.
        if to != 0 {
            match self.resolve(key, to) {
                Some(addr) => self.count_entry((o.pid, o.tid), &addr),
                None => {
                    self.pending_entry.insert(key, ((o.pid, o.tid), to));
                    self.opening.entry(key).or_insert(None);
                }
            }
        }
        // A trace start has no source: perf prints it at ip 0, with no line.
        if from == 0 {
            return;
        }
        let source = self.resolve(key, from);
        let indirect = source
            .as_ref()
            .and_then(|s| self.index.shapes.get(s))
            .and_then(|s| s.branch)
            .is_some_and(|k| {
                matches!(
                    k,
                    BranchKind::IndirectJump | BranchKind::IndirectCall | BranchKind::Return
                )
            });
        let target = (indirect && to != 0).then(|| match self.resolve(key, to) {
            Some(addr) => Target::Code(addr),
            None => Target::Unresolved(to),
        });
        self.count_taken(
            (o.pid, o.tid),
            source.as_ref(),
            flags.contains(BranchFlags::CONDITIONAL),
            target,
        );
    }

    fn segment_queue_tsc(&mut self, queue: u32, psb: u64, queue_tsc: u64) {
        if let Some((segment, _)) = self.segments.get_mut(&(queue, psb)) {
            segment.queue_tsc = queue_tsc;
        }
    }

    fn beyond(&mut self, run: &BlockRun<'_>) {
        if run.block.ninsn != 0 {
            self.remember_block(run);
        }
    }

    fn block(&mut self, run: &BlockRun<'_>) {
        let block = run.block;
        if block.ninsn == 0 {
            return;
        }
        let (key, start) = self.remember_block(run);
        self.queue_of.insert(key, run.queue);
        let Some(start) = start else {
            self.index.unmapped.instructions += u64::from(block.ninsn);
            return;
        };
        if !self.index.paths.contains_key(&start.binary) {
            if let Some(map) = run.image.map_for(&block.ctx, block.ip) {
                self.index
                    .paths
                    .insert(start.binary.clone(), map.filename.clone());
            }
        }
        let known = self.insns(
            run.image,
            &block.ctx,
            block.mode,
            block.ip,
            &start,
            block.ninsn,
        );
        // Code that cannot be decoded again is counted, not dropped.
        self.index.unmapped.instructions += u64::from(block.ninsn) - known as u64;
        let thread = (run.origin.pid, run.origin.tid);
        self.opening
            .entry(key)
            .or_insert_with(|| Some((block.ip, start.clone())));
        if let Some((who, ip)) = self.pending_entry.get(&key).copied() {
            if ip == block.ip {
                self.pending_entry.remove(&key);
                self.count_entry(who, &start);
            }
        }
        if let Some((psb, end)) = run.segment {
            let (segment, code) = self.segments.entry((run.queue, psb)).or_insert_with(|| {
                (
                    Segment {
                        queue: run.queue,
                        offsets: (psb, end),
                        queue_tsc: run.queue_tsc,
                        ..Segment::default()
                    },
                    FastMap::default(),
                )
            });
            if let Some(t) = run.time {
                segment.time = Some(match segment.time {
                    Some((a, b)) => (a.min(t), b.max(t)),
                    None => (t, t),
                });
            }
            // The block's code is contiguous in its mapping (blocks end at every taken
            // branch); a bound keeps a nonsense span from claiming a whole binary.
            let span = block.end_ip.saturating_sub(block.ip).min(PAGE);
            let last_len = block.last.map_or(1, |i| u64::from(i.size.max(1)));
            let end = start.offset.saturating_add(span).saturating_add(last_len);
            let ranges = segment.code.entry(start.binary.clone()).or_default();
            ranges.push((start.offset, end));
            // Hot code repeats: merge now and then, so a segment holds its merged ranges,
            // not one entry per block run.
            let merge_at = code.entry(start.binary.clone()).or_insert(64);
            if ranges.len() >= *merge_at {
                merge_ranges(ranges);
                *merge_at = (ranges.len() * 2).max(64);
            }
        }
        let n = u32::try_from(known).unwrap_or(u32::MAX);
        *self
            .blocks
            .entry((start, block.mode, n, thread, run.queue))
            .or_default() += 1;
    }
}
