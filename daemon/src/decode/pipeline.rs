//! The pipeline: every AUX queue decoded with the sideband applied in time order, and the
//! queues interleaved, as perf 6.1's `intel_pt_process_queues` does it.
//!
//! perf walks the sideband records in time order; before applying one at time T it decodes
//! every queue up to T (the queue with the earliest timestamp first, each up to the next
//! queue's timestamp), and it synthesises a decoder state's sample only when it resumes the
//! queue, so that sample already carries the thread the next run starts with. Reproducing
//! that schedule is what makes threads, CPUs and order agree with `perf script`.

use std::collections::BTreeMap;

use crate::debuginfo::BinaryCache;
use crate::perf::{RecordBody, Recording};
use crate::pt::flow::time::PerfTiming;
use crate::pt::flow::{Block, BlockConfig, EventConfig, Image};
use crate::sideband::{Instant, Model, When};

use super::event::{error_code, BranchEvent, BranchKind, Origin, TraceError};
use super::filter::{parse_filter, FilterEntry, FilterParseError, RecordedFilter};
use super::image::RecordingImage;
use super::queue::{JoinedTrace, QueueDecoder, State, StateKind};

/// Why a recording could not be decoded at all.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Perf(#[from] crate::perf::Error),
    #[error("the recording has no Intel PT trace (no AUXTRACE_INFO)")]
    NoIntelPt,
    /// The recorded address filter string is malformed (perf refuses to decode it too).
    #[error(transparent)]
    Filter(#[from] FilterParseError),
}

/// One run of instructions as the flow decoder walked it, with who ran it; for counting.
#[derive(Debug, Clone, Copy)]
pub struct BlockRun<'b> {
    /// The AUX queue.
    pub queue: u32,
    /// Thread and CPU as perf would attribute a branch decoded now (`time` is the queue's
    /// time so far).
    pub origin: Origin,
    pub block: &'b Block,
    /// The code image the block was decoded over ([`RecordingImage::map_for`] names its code).
    pub image: &'b RecordingImage<'b>,
    /// The PSB segment the block belongs to: the trace offset (in the queue's stream) of its
    /// PSB, and where the segment ends (the next PSB, or the stream's end).
    pub segment: Option<(u64, u64)>,
    /// Perf time of the block's last timing packet ([`Block::tsc`]); `None` when timeless.
    pub time: Option<u64>,
    /// The queue's time (TSC) before the segment's first state: what a decode of the segment
    /// alone starts its clock from ([`super::decode_segments`]).
    pub queue_tsc: u64,
}

/// A PSB segment to decode again with [`super::decode_segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentRef {
    pub queue: u32,
    /// Trace offset of the segment's PSB in the queue's stream.
    pub offset: u64,
    /// The queue's time (TSC) before the segment's first state ([`BlockRun::queue_tsc`]).
    pub queue_tsc: u64,
}

/// Receives the decoded stream.
pub trait Sink {
    /// Every branch and error, in perf's order.
    fn event(&mut self, event: &BranchEvent);
    /// Every block, in decode order (blocks of one queue in trace order).
    fn block(&mut self, _run: &BlockRun<'_>) {}
    /// A correction to the [`BlockRun::queue_tsc`] this sink was given for the segment at
    /// `psb` of `queue` ([`decode_parallel`](super::decode_parallel) learns a chunk's
    /// starting queue time only after decoding it).
    fn segment_queue_tsc(&mut self, _queue: u32, _psb: u64, _queue_tsc: u64) {}
    /// A block past the segments asked for, decoded only to settle their last branch: it is
    /// not theirs to count (the next chunk counts it), but it says where control went.
    fn beyond(&mut self, _run: &BlockRun<'_>) {}
}

/// Collects the events.
impl Sink for Vec<BranchEvent> {
    fn event(&mut self, event: &BranchEvent) {
        self.push(event.clone());
    }
}

impl<F: FnMut(&BranchEvent)> Sink for F {
    fn event(&mut self, event: &BranchEvent) {
        self(event)
    }
}

/// Counts over a decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub branches: u64,
    /// Decoder errors reported, overflows included.
    pub errors: u64,
    /// Of `errors`, trace overflows (the hardware's, not damage to the recording).
    pub overflows: u64,
    pub instructions: u64,
    pub queues: usize,
    pub trace_bytes: u64,
    /// Binaries not found, by recorded name, with the code reads that failed.
    pub missing_binaries: BTreeMap<String, u64>,
}

/// Options of [`decode`].
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Called with (trace bytes decoded, total) now and then, for progress bars.
    pub progress: Option<fn(u64, u64)>,
}

/// What perf keeps per queue (`struct intel_pt_queue`), as far as branches need it.
pub(super) struct Queue<'a> {
    pub(super) idx: u32,
    pub(super) tid: i32,
    pub(super) cpu: i32,
    pub(super) decoder: QueueDecoder<'a>,
    /// `ptq->timestamp`, in TSC.
    pub(super) timestamp: u64,
    /// The segment decoded last, `timestamp` before its first state, and its end.
    pub(super) segment_tsc: (Option<usize>, u64, u64),
    /// The state decoded last, whose sample is synthesised when the queue resumes.
    pub(super) pending: Option<State>,
}

/// perf's `auxtrace_heap` (util/auxtrace.c), ported as it is: which queue goes first when
/// timestamps tie depends on its exact sift order.
#[derive(Debug, Default)]
struct AuxHeap {
    /// (queue index, ordinal).
    items: Vec<(usize, u64)>,
}

impl AuxHeap {
    fn heapify(&mut self, mut pos: usize, item: (usize, u64)) {
        while pos > 0 {
            let parent = (pos - 1) >> 1;
            if self.items[parent].1 <= item.1 {
                break;
            }
            self.items[pos] = self.items[parent];
            pos = parent;
        }
        self.items[pos] = item;
    }

    fn add(&mut self, queue: usize, ordinal: u64) {
        self.items.push((queue, ordinal));
        let pos = self.items.len() - 1;
        self.heapify(pos, (queue, ordinal));
    }

    fn top(&self) -> Option<(usize, u64)> {
        self.items.first().copied()
    }

    fn pop(&mut self) {
        let count = self.items.len();
        if count == 0 {
            return;
        }
        let mut pos = 0;
        loop {
            let left = (pos << 1) + 1;
            if left >= count {
                break;
            }
            let right = left + 1;
            if right >= count {
                self.items[pos] = self.items[left];
                self.items.truncate(count - 1);
                return;
            }
            let child = if self.items[left].1 < self.items[right].1 {
                left
            } else {
                right
            };
            self.items[pos] = self.items[child];
            pos = child;
        }
        let last = self.items[count - 1];
        self.items.truncate(count - 1);
        if pos < self.items.len() {
            self.heapify(pos, last);
        }
    }
}

fn as_i32(v: u32) -> i32 {
    v as i32
}

/// Decodes every AUX queue of `recording` and hands the branch stream to `sink`.
pub fn decode(
    recording: &Recording<'_>,
    model: &Model,
    binaries: &BinaryCache,
    options: &DecodeOptions,
    sink: &mut dyn Sink,
) -> Result<DecodeStats, DecodeError> {
    let pt = model.pt.as_ref().ok_or(DecodeError::NoIntelPt)?;
    let Prepared {
        times,
        image,
        traces,
        config,
        filter,
    } = prepare(recording, model, binaries)?;
    let total: u64 = traces.iter().map(|t| t.3.len() as u64).sum();
    let image_ref: &dyn Image = &image;
    let filter = filter.map(|entries| RecordedFilter::new(entries, &image));
    let mut queues: Vec<Queue<'_>> = traces
        .iter()
        .map(|(idx, tid, cpu, bytes)| Queue {
            idx: *idx,
            tid: *tid,
            cpu: *cpu,
            decoder: queue_decoder(bytes, image_ref, config, filter.as_ref()),
            timestamp: 0,
            segment_tsc: (None, 0, 0),
            pending: None,
        })
        .collect();
    decode_prepared(model, pt, &times, &image, &mut queues, total, options, sink)
}

/// What [`decode`] and [`super::decode_segments`] need from a recording before decoding.
pub(super) struct Prepared<'m> {
    /// Perf times of the sideband records.
    pub(super) times: Vec<u64>,
    pub(super) image: RecordingImage<'m>,
    /// Per AUX queue: index, tid, cpu, its buffers joined.
    pub(super) traces: Vec<(u32, i32, i32, JoinedTrace)>,
    pub(super) config: BlockConfig,
    /// The recorded address filter's entries, when the recording has a non-empty one.
    pub(super) filter: Option<Vec<FilterEntry>>,
}

/// The decoder of one queue's `trace` over `image` with `config`, and the recorded address
/// filter, if any, applied as perf 6.1 applies it: at each TIP.PGD, to the branch target, through
/// the maps of the process and the moment the decoder's context names (the queue's current
/// thread as the sideband has it when the queue runs, exactly the maps its code is read
/// through), per process and per time, per-CPU queues included.
pub(super) fn queue_decoder<'a>(
    trace: &'a JoinedTrace,
    image: &'a dyn Image,
    config: BlockConfig,
    filter: Option<&'a RecordedFilter<'a>>,
) -> QueueDecoder<'a> {
    let decoder = QueueDecoder::over(trace, image, config);
    match filter {
        Some(filter) => decoder.with_pgd_filter(filter),
        None => decoder,
    }
}

pub(super) fn prepare<'m>(
    recording: &Recording<'_>,
    model: &'m Model,
    binaries: &'m BinaryCache,
) -> Result<Prepared<'m>, DecodeError> {
    let pt = model.pt.as_ref().ok_or(DecodeError::NoIntelPt)?;
    let aux = recording.aux_queues()?;

    // Sideband times, and the records that can change an address space.
    let mut times = Vec::new();
    let mut epochs = Vec::new();
    for record in recording.records() {
        let Ok(record) = record else { break };
        let time = match &record.body {
            RecordBody::Fork(task) | RecordBody::Exit(task) => {
                record.sample_id.time.or(Some(task.time))
            }
            RecordBody::Auxtrace(_) => None,
            _ => record.sample_id.time,
        };
        let Some(time) = time else { continue };
        times.push(time);
        if matches!(
            record.body,
            RecordBody::Mmap(_)
                | RecordBody::Mmap2(_)
                | RecordBody::Comm { .. }
                | RecordBody::Fork(_)
                | RecordBody::Exit(_)
        ) {
            epochs.push(time);
        }
    }
    times.sort_unstable();
    let image = RecordingImage::new(model, binaries, epochs);

    // Consecutive buffers of a queue are one stream (last IP, return stack carry over).
    let traces: Vec<(u32, i32, i32, JoinedTrace)> = aux
        .queues
        .iter()
        .map(|q| {
            let bytes = JoinedTrace::join(q.buffers.iter().map(|b| b.auxtrace.data));
            let tid = q.tid().map_or(-1, as_i32);
            let cpu = q.cpu().map_or(-1, as_i32);
            (q.idx, tid, cpu, bytes)
        })
        .collect();
    let config = BlockConfig {
        events: EventConfig {
            mtc_freq: u8::try_from(pt.mtc_period()).unwrap_or(0),
            ctc_ratio: (pt.tsc_ctc_ratio_d != 0).then(|| {
                (
                    u32::try_from(pt.tsc_ctc_ratio_n).unwrap_or(0),
                    u32::try_from(pt.tsc_ctc_ratio_d).unwrap_or(1),
                )
            }),
            // perf's clock: perf script's times, queue order and threads follow it.
            perf: Some(PerfTiming {
                max_non_turbo_ratio: u32::try_from(pt.max_nonturbo_ratio).unwrap_or(0),
            }),
        },
        perf_resync: true,
        ..BlockConfig::default()
    };
    // Only a recording with a non-empty filter string gets address ranges.
    let filter = match pt.filter.as_deref() {
        Some(text) => Some(parse_filter(text)?).filter(|e| !e.is_empty()),
        None => None,
    };
    Ok(Prepared {
        times,
        image,
        traces,
        config,
        filter,
    })
}

#[allow(clippy::too_many_arguments)]
fn decode_prepared(
    model: &Model,
    pt: &crate::sideband::PtConfig,
    times: &[u64],
    image: &RecordingImage<'_>,
    queues: &mut [Queue<'_>],
    total: u64,
    options: &DecodeOptions,
    sink: &mut dyn Sink,
) -> Result<DecodeStats, DecodeError> {
    let mut run = Runner {
        model,
        image,
        timeless: pt.timeless_decoding(),
        applied: None,
        heap: AuxHeap::default(),
        sink,
        stats: DecodeStats {
            queues: queues.len(),
            trace_bytes: total,
            ..DecodeStats::default()
        },
    };
    if let Some(progress) = options.progress {
        progress(0, total);
    }
    if run.timeless {
        // perf decodes each queue whole, with every sideband record applied.
        run.applied = times.last().copied();
        for q in queues.iter_mut() {
            run.run_queue(q, u64::MAX);
            run.flush(q);
        }
    } else {
        let mut set_up = false;
        for &time in times {
            if !set_up {
                for (i, q) in queues.iter_mut().enumerate() {
                    run.setup(i, q);
                }
                set_up = true;
            }
            let tsc = model.perf_to_tsc(time);
            run.process_queues(queues, tsc);
            run.applied = Some(time);
        }
        if !set_up {
            for (i, q) in queues.iter_mut().enumerate() {
                run.setup(i, q);
            }
        }
        run.process_queues(queues, u64::MAX);
        for q in queues.iter_mut() {
            run.flush(q);
        }
    }
    if let Some(progress) = options.progress {
        progress(total, total);
    }
    let mut stats = run.stats;
    stats.missing_binaries = image.missing();
    Ok(stats)
}

/// perf's `kernel_start` on x86_64: the only addresses above 2^63 are the kernel's.
const KERNEL_START: u64 = 1 << 63;

/// A branch into user space from the kernel or from nowhere (a trace start), which perf
/// times with its estimate.
pub(super) fn returns_to_user(kind: &StateKind) -> bool {
    match *kind {
        StateKind::Branch { from, to, .. } => {
            (from >= KERNEL_START || from == 0) && to != 0 && to < KERNEL_START
        }
        StateKind::Error { .. } => false,
    }
}

pub(super) struct Runner<'r> {
    pub(super) model: &'r Model,
    pub(super) image: &'r RecordingImage<'r>,
    pub(super) timeless: bool,
    /// Perf time of the last sideband record applied.
    pub(super) applied: Option<u64>,
    heap: AuxHeap,
    pub(super) sink: &'r mut dyn Sink,
    pub(super) stats: DecodeStats,
}

impl<'r> Runner<'r> {
    pub(super) fn new(
        model: &'r Model,
        image: &'r RecordingImage<'r>,
        sink: &'r mut dyn Sink,
        stats: DecodeStats,
    ) -> Runner<'r> {
        Runner {
            model,
            image,
            timeless: model.pt.as_ref().is_some_and(|pt| pt.timeless_decoding()),
            applied: None,
            heap: AuxHeap::default(),
            sink,
            stats,
        }
    }

    fn when(&self) -> When {
        match self.applied {
            Some(t) => When::Time(t),
            None => When::Instant(Instant::START),
        }
    }

    /// perf's `intel_pt_set_pid_tid_cpu`: who the queue's samples belong to now.
    pub(super) fn origin(&self, q: &Queue<'_>) -> Origin {
        let when = self.when();
        let thread = self.model.queue_thread(q.tid, q.cpu, when);
        let (pid, tid) = match thread {
            Some(t) => (t.pid, t.tid),
            None if q.tid != -1 && !self.switches() => (-1, q.tid),
            None => (-1, -1),
        };
        Origin {
            time: 0,
            cpu: q.cpu,
            pid,
            tid,
            machine_pid: 0,
            vcpu: -1,
        }
    }

    fn switches(&self) -> bool {
        self.model
            .pt
            .as_ref()
            .is_some_and(|p| p.have_sched_switch != 0)
    }

    pub(super) fn space(&self, origin: &Origin) -> u64 {
        let epoch = match self.applied {
            Some(t) => self.image.epoch_at(t),
            None => 0,
        };
        let epoch = if self.timeless {
            self.image.last_epoch()
        } else {
            epoch
        };
        RecordingImage::space(origin.pid, epoch)
    }

    fn perf_time(&self, tsc: u64) -> u64 {
        if self.timeless {
            0
        } else {
            self.model.tsc_to_perf(tsc)
        }
    }

    /// perf's `intel_pt_setup_queue`: decodes up to the first state with a timestamp (errors
    /// before it are dropped, as perf drops them) and puts the queue on the heap.
    fn setup(&mut self, index: usize, q: &mut Queue<'_>) {
        let origin = self.origin(q);
        q.decoder.set_space(self.space(&origin));
        let mut blocks = |_: &Block, _: Option<usize>| {};
        loop {
            match q.decoder.next_state(&mut blocks) {
                None => return,
                Some(State {
                    kind: StateKind::Error { .. },
                    ..
                }) => continue,
                Some(state) if state.tsc != 0 => {
                    q.timestamp = state.tsc;
                    q.pending = Some(state);
                    self.heap.add(index, q.timestamp);
                    return;
                }
                Some(_) => continue,
            }
        }
    }

    /// perf's `intel_pt_process_queues`.
    fn process_queues(&mut self, queues: &mut [Queue<'_>], limit: u64) {
        while let Some((first, ordinal)) = self.heap.top() {
            if ordinal >= limit {
                return;
            }
            self.heap.pop();
            let ts = match self.heap.top() {
                Some((_, next)) => next.saturating_add(1).min(limit),
                None => limit,
            };
            if let Some(stop) = self.run_queue(&mut queues[first], ts) {
                self.heap.add(first, stop);
            }
        }
    }

    pub(super) fn deliver(&mut self, q: &Queue<'_>, origin: &Origin, state: State) {
        let origin = Origin {
            time: self.perf_time(q.timestamp),
            ..*origin
        };
        let kind = match state.kind {
            StateKind::Branch { from, to, flags } => {
                self.stats.branches += 1;
                BranchKind::Branch { from, to, flags }
            }
            StateKind::Error {
                code,
                ip,
                offset,
                detail,
            } => {
                self.stats.errors += 1;
                self.stats.overflows += u64::from(code == error_code::OVR);
                BranchKind::Error(TraceError {
                    code,
                    message: error_code::message(code),
                    ip,
                    queue: q.idx,
                    offset,
                    detail,
                })
            }
        };
        self.sink.event(&BranchEvent { origin, kind });
    }

    /// What the blocks `q` decodes next are handed to sinks with.
    pub(super) fn block_source<'q>(&self, q: &Queue<'q>, origin: Origin) -> BlockSource<'q>
    where
        'r: 'q,
    {
        BlockSource {
            queue: q.idx,
            origin,
            image: self.image,
            model: self.model,
            timeless: self.timeless,
            trace: q.decoder.trace(),
            timestamp: q.timestamp,
        }
    }

    /// perf's `intel_pt_run_decoder`: synthesises the pending sample, then decodes until the
    /// queue's timestamp reaches `limit`. Returns the queue's timestamp then, or `None` when
    /// the trace ended.
    fn run_queue(&mut self, q: &mut Queue<'_>, limit: u64) -> Option<u64> {
        let origin = self.origin(q);
        q.decoder.set_space(self.space(&origin));
        loop {
            if let Some(state) = q.pending.take() {
                self.deliver(q, &origin, state);
            }
            let source = self.block_source(q, origin);
            let (stats, sink, walked) = (&mut self.stats, &mut *self.sink, &mut q.segment_tsc);
            let mut on_block = |block: &Block, segment: Option<usize>| {
                stats.instructions += u64::from(block.ninsn);
                source.hand(sink, walked, block, segment);
            };
            let state = q.decoder.next_state(&mut on_block)?;
            if let StateKind::Error { .. } = state.kind {
                // perf: `ptq->timestamp = state->est_timestamp`, then the error at once.
                q.timestamp = state.est;
                self.deliver(q, &origin, state);
                continue;
            }
            if !self.timeless && returns_to_user(&state.kind) {
                // perf (`est_tsc`): the estimate on entering user space, even backwards.
                q.timestamp = state.est;
            } else if state.tsc > q.timestamp {
                q.timestamp = state.tsc;
            }
            q.pending = Some(state);
            if !self.timeless && q.timestamp >= limit {
                return Some(q.timestamp);
            }
        }
    }

    /// Synthesises a sample still pending when decoding ends.
    fn flush(&mut self, q: &mut Queue<'_>) {
        if let Some(state) = q.pending.take() {
            let origin = self.origin(q);
            self.deliver(q, &origin, state);
        }
    }
}

/// What a [`BlockRun`] says besides its block, for the blocks of one step of a queue's decode.
#[derive(Clone, Copy)]
pub(super) struct BlockSource<'r> {
    queue: u32,
    origin: Origin,
    image: &'r RecordingImage<'r>,
    model: &'r Model,
    timeless: bool,
    trace: &'r [u8],
    /// The queue's time before this step.
    timestamp: u64,
}

impl BlockSource<'_> {
    /// Hands `block`, of PSB segment `segment`, to `sink`. `walked` tracks the segment being
    /// walked (its PSB, the queue time before its first block, its end); returns whether the
    /// block began it.
    pub(super) fn hand(
        &self,
        sink: &mut dyn Sink,
        walked: &mut (Option<usize>, u64, u64),
        block: &Block,
        segment: Option<usize>,
    ) -> bool {
        let began = walked.0 != segment;
        if began {
            let end = segment.map_or(0, |psb| segment_end(self.trace, psb));
            *walked = (segment, self.timestamp, end);
        }
        sink.block(&BlockRun {
            queue: self.queue,
            origin: self.origin,
            block,
            image: self.image,
            segment: segment.map(|psb| (psb as u64, walked.2)),
            time: block
                .tsc
                .filter(|_| !self.timeless)
                .map(|tsc| self.model.tsc_to_perf(tsc)),
            queue_tsc: walked.1,
        });
        began
    }

    /// Hands `block`, walked past the segments asked for, to `sink` as [`Sink::beyond`].
    pub(super) fn hand_beyond(&self, sink: &mut dyn Sink, block: &Block) {
        sink.beyond(&BlockRun {
            queue: self.queue,
            origin: self.origin,
            block,
            image: self.image,
            segment: None,
            time: None,
            queue_tsc: self.timestamp,
        });
    }
}

/// Where the PSB segment at `psb` ends: the next PSB, or the trace's end.
pub(super) fn segment_end(trace: &[u8], psb: usize) -> u64 {
    crate::pt::packets::next_psb(trace, psb.saturating_add(1)).unwrap_or(trace.len()) as u64
}
