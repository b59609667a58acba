//! PSB segments decoded apart: again on demand ([`decode_segments`]), and all of them on every
//! core ([`decode_parallel`]).
//!
//! A PSB+ carries the decoder's whole state, so a run of segments ("chunk") decodes alone from
//! its first PSB. What a chunk cannot know is perf's queue time before it (`ptq->timestamp`,
//! which picks the sideband record a state is attributed under, and which a state only moves
//! forward). [`decode_parallel`] decodes each chunk from a guess (the TSC in its PSB+), then
//! walks each queue's chunks in order with the true starting time (the previous chunk's end)
//! and decodes again, in order, every chunk for which the guess could have made a difference:
//! the counts are exactly those of [`super::decode`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::debuginfo::BinaryCache;
use crate::perf::Recording;
use crate::pt::flow::{Block, Image};
use crate::pt::packets::{next_psb, Packet, Packets};
use crate::sideband::Model;

use super::filter::RecordedFilter;
use super::pipeline::{
    prepare, queue_decoder, returns_to_user, segment_end, DecodeError, DecodeOptions, DecodeStats,
    Prepared, Queue, Runner, SegmentRef, Sink,
};
use super::queue::{JoinedTrace, StateKind};

/// How [`decode_parallel`] splits the work.
#[derive(Debug, Clone, Copy)]
pub struct ParallelOptions {
    /// Worker threads (at least 1).
    pub jobs: usize,
    /// Trace bytes per chunk (a chunk is whole PSB segments of one queue); `None` picks a size
    /// that gives every worker several chunks.
    pub chunk_bytes: Option<u64>,
}

impl Default for ParallelOptions {
    fn default() -> Self {
        ParallelOptions {
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            chunk_bytes: None,
        }
    }
}

/// The queue's state where a chunk begins: perf's queue time, and whether the queue has had
/// its first timestamp (perf's setup drops what comes before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Start {
    timestamp: u64,
    started: bool,
}

/// How the first state of a chunk moved the queue time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstMove {
    /// Set outright (an error's or a return to user space's estimate, or the first timestamp).
    Set,
    /// Raised to the state's time, if later.
    Raise(u64),
}

/// What decoding a chunk from a [`Start`] found.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// The queue time after the chunk's last state; `None` when no state moved it.
    end: Option<u64>,
    started: bool,
    first: Option<FirstMove>,
    /// The chunk's first segment was given the start's time as its `queue_tsc`.
    first_segment_at_start: Option<usize>,
    /// The queue time when the flow first ran into the next chunk's code: the `queue_tsc`
    /// the whole decode gives the next chunk's first segment.
    next_segment_tsc: Option<u64>,
}

/// Sideband times and their TSCs, to find the record perf has applied at a queue time.
struct Clock<'t> {
    times: &'t [u64],
    tscs: &'t [u64],
    timeless: bool,
}

impl Clock<'_> {
    /// The perf time of the last sideband record perf has applied when the queue time is `tsc`.
    fn applied(&self, tsc: u64) -> Option<u64> {
        if self.timeless {
            return self.times.last().copied();
        }
        let n = self.tscs.partition_point(|&t| t <= tsc);
        n.checked_sub(1).map(|i| self.times[i])
    }
}

/// Decodes the segments `psbs` (PSB offsets, `start..end`) of `q` from `start`, handing
/// their states and blocks to `run`'s sink with the threads, CPUs and times perf's whole
/// decode gives them.
fn decode_chunk(
    run: &mut Runner<'_>,
    clock: &Clock<'_>,
    q: &mut Queue<'_>,
    psbs: (usize, usize),
    start: Start,
) -> Outcome {
    let (first_psb, end_psb) = psbs;
    let wanted =
        |segment: Option<usize>| segment.is_some_and(|s| (first_psb..end_psb).contains(&s));
    q.decoder.only_segments(first_psb, end_psb);
    q.timestamp = start.timestamp;
    let mut outcome = Outcome {
        end: None,
        started: start.started,
        first: None,
        first_segment_at_start: None,
        next_segment_tsc: None,
    };
    q.segment_tsc = (None, 0, 0);
    loop {
        run.applied = clock.applied(q.timestamp);
        let origin = run.origin(q);
        q.decoder.set_space(run.space(&origin));
        let counting = outcome.started;
        let at_start = outcome.first.is_none();
        let source = run.block_source(q, origin);
        let timestamp = q.timestamp;
        let (stats, sink, walked) = (&mut run.stats, &mut *run.sink, &mut q.segment_tsc);
        let first_segment_at_start = &mut outcome.first_segment_at_start;
        let next_segment_tsc = &mut outcome.next_segment_tsc;
        let mut on_block = |block: &Block, segment: Option<usize>| {
            if !counting {
                return;
            }
            if !wanted(segment) {
                if segment.is_some_and(|s| s >= end_psb) {
                    next_segment_tsc.get_or_insert(timestamp);
                    source.hand_beyond(sink, block);
                }
                return;
            }
            stats.instructions += u64::from(block.ninsn);
            let began = source.hand(sink, walked, block, segment);
            if began && at_start && segment == Some(first_psb) {
                *first_segment_at_start = segment;
            }
        };
        let Some(state) = q.decoder.next_state(&mut on_block) else {
            break;
        };
        // The flow runs a little past the chunk to settle its last branch: what it finds
        // there belongs to the next chunk.
        if !wanted(state.segment) {
            continue;
        }
        let is_error = matches!(state.kind, StateKind::Error { .. });
        if !outcome.started {
            // perf's setup: the first timestamp sets the queue time; nothing before it counts.
            if is_error || state.tsc == 0 {
                continue;
            }
            outcome.started = true;
            q.timestamp = state.tsc;
            outcome.first.get_or_insert(FirstMove::Set);
        } else if is_error || (!run.timeless && returns_to_user(&state.kind)) {
            q.timestamp = state.est;
            outcome.first.get_or_insert(FirstMove::Set);
        } else {
            q.timestamp = q.timestamp.max(state.tsc);
            outcome.first.get_or_insert(FirstMove::Raise(state.tsc));
        }
        outcome.end = Some(q.timestamp);
        run.applied = clock.applied(q.timestamp);
        let origin = run.origin(q);
        run.deliver(q, &origin, state);
    }
    outcome
}

/// Whether decoding a chunk from `guess` gave what decoding it from `actual` gives.
fn same_from(clock: &Clock<'_>, outcome: &Outcome, guess: Start, actual: Start) -> bool {
    if guess == actual || clock.timeless && guess.started == actual.started {
        return true;
    }
    if guess.started != actual.started
        || clock.applied(guess.timestamp) != clock.applied(actual.timestamp)
    {
        return false;
    }
    match outcome.first {
        None | Some(FirstMove::Set) => true,
        Some(FirstMove::Raise(tsc)) => guess.timestamp.max(tsc) == actual.timestamp.max(tsc),
    }
}

/// The TSC in the PSB+ at `psb`, if it has one.
fn psb_tsc(trace: &[u8], psb: usize) -> Option<u64> {
    let mut packets = Packets::new(trace);
    packets.seek(psb);
    for item in packets {
        match item {
            Ok((_, Packet::Tsc { tsc })) => return Some(tsc),
            Ok((_, Packet::PsbEnd)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// Decodes PSB segments of one recording again, as often as asked ("the events at this
/// line"): the setup (sideband times, code image, joined traces) is made once.
pub struct SegmentDecoder<'m> {
    model: &'m Model,
    prepared: Prepared<'m>,
    /// TSCs of the sideband records' times.
    tscs: Vec<u64>,
}

impl<'m> SegmentDecoder<'m> {
    pub fn new(
        recording: &Recording<'_>,
        model: &'m Model,
        binaries: &'m BinaryCache,
    ) -> Result<SegmentDecoder<'m>, DecodeError> {
        let prepared = prepare(recording, model, binaries)?;
        let tscs = prepared
            .times
            .iter()
            .map(|&t| model.perf_to_tsc(t))
            .collect();
        Ok(SegmentDecoder {
            model,
            prepared,
            tscs,
        })
    }

    /// Decodes the PSB segments `segments` (as [`crate::index::Index`] names them) and hands
    /// their branch events and blocks to `sink`, with the threads, CPUs and times a full
    /// [`super::decode`] gives them: each segment alone from its PSB, timed from the queue's
    /// time before it. Segments come in (queue, offset) order.
    pub fn decode(
        &self,
        segments: &mut dyn Iterator<Item = SegmentRef>,
        sink: &mut dyn Sink,
    ) -> DecodeStats {
        let Prepared {
            times,
            image,
            traces,
            config,
            filter,
        } = &self.prepared;
        let image_ref: &dyn Image = image;
        let filter = filter
            .clone()
            .map(|entries| RecordedFilter::new(entries, image));
        let mut run = Runner::new(
            self.model,
            image,
            sink,
            DecodeStats {
                queues: traces.len(),
                ..DecodeStats::default()
            },
        );
        let clock = Clock {
            times,
            tscs: &self.tscs,
            timeless: run.timeless,
        };
        // perf's order within a queue is trace order.
        let mut wanted: Vec<SegmentRef> = segments.collect();
        wanted.sort_unstable();
        wanted.dedup_by_key(|s| (s.queue, s.offset));
        for seg in wanted {
            let Some((idx, tid, cpu, bytes)) = traces.iter().find(|t| t.0 == seg.queue) else {
                continue;
            };
            let Ok(psb) = usize::try_from(seg.offset) else {
                continue;
            };
            run.stats.trace_bytes += segment_end(bytes, psb).saturating_sub(seg.offset);
            let mut q = Queue {
                idx: *idx,
                tid: *tid,
                cpu: *cpu,
                decoder: queue_decoder(bytes, image_ref, *config, filter.as_ref()),
                timestamp: 0,
                segment_tsc: (None, 0, 0),
                pending: None,
            };
            let start = Start {
                timestamp: seg.queue_tsc,
                started: seg.queue_tsc != 0 || run.timeless,
            };
            decode_chunk(
                &mut run,
                &clock,
                &mut q,
                (psb, psb.saturating_add(1)),
                start,
            );
        }
        let mut stats = run.stats;
        stats.missing_binaries = image.missing();
        stats
    }
}

/// [`SegmentDecoder::decode`] once: decodes again only the PSB segments `segments` of
/// `recording`.
pub fn decode_segments(
    recording: &Recording<'_>,
    model: &Model,
    binaries: &BinaryCache,
    _options: &DecodeOptions,
    segments: &mut dyn Iterator<Item = SegmentRef>,
    sink: &mut dyn Sink,
) -> Result<DecodeStats, DecodeError> {
    Ok(SegmentDecoder::new(recording, model, binaries)?.decode(segments, sink))
}

/// A chunk to decode: whole segments of one queue.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Position of the queue in the prepared traces.
    trace: usize,
    psbs: (usize, usize),
    bytes: u64,
    /// The first chunk of its queue.
    first: bool,
}

/// Decodes every PSB segment of `recording` on `parallel.jobs` threads: each chunk (a run of
/// whole segments of one queue) into its own sink made by `new_sink`, handed to `finished` in
/// (queue, trace offset) order as soon as it and every chunk before it are done (so memory
/// holds only the chunks in flight, about one per thread). Per chunk, the sink sees exactly the blocks and branch
/// events [`super::decode`] gives those segments (same threads, CPUs and times); events arrive
/// in trace order per chunk, not in perf's order across queues — this is for counting.
///
/// That holds for a trace without damage. After a decoding error other than an overflow
/// ([`DecodeStats::overflows`]), perf's recovery (one byte on, or on to the next IP packet,
/// with its clock and IP carried along) can run across PSBs, which a chunk decoded alone
/// cannot know: a caller that needs exact results decodes a damaged recording in order.
pub fn decode_parallel<S, F>(
    recording: &Recording<'_>,
    model: &Model,
    binaries: &BinaryCache,
    options: &DecodeOptions,
    parallel: &ParallelOptions,
    new_sink: F,
    mut finished: impl FnMut(S),
) -> Result<DecodeStats, DecodeError>
where
    S: Sink + Send,
    F: Fn() -> S + Sync,
{
    let Prepared {
        times,
        image,
        traces,
        config,
        filter,
    } = prepare(recording, model, binaries)?;
    let total: u64 = traces.iter().map(|t| t.3.len() as u64).sum();
    let jobs = parallel.jobs.max(1);
    let chunk_bytes = parallel
        .chunk_bytes
        .unwrap_or_else(|| (total / (jobs as u64 * 8)).clamp(64 << 10, 16 << 20))
        .max(1);
    let chunks = split(&traces, chunk_bytes);
    let timeless = model.pt.as_ref().is_some_and(|pt| pt.timeless_decoding());
    let tscs: Vec<u64> = times.iter().map(|&t| model.perf_to_tsc(t)).collect();
    let clock = Clock {
        times: &times,
        tscs: &tscs,
        timeless,
    };
    let image_ref: &dyn Image = &image;
    let filter = filter.map(|entries| RecordedFilter::new(entries, &image));
    let guess = |chunk: &Chunk| {
        if chunk.first {
            Start {
                timestamp: 0,
                started: timeless,
            }
        } else {
            let trace = &traces[chunk.trace].3;
            Start {
                timestamp: psb_tsc(trace, chunk.psbs.0).unwrap_or(0),
                started: true,
            }
        }
    };
    let decode_one = |chunk: &Chunk, start: Start| {
        let (idx, tid, cpu, bytes) = &traces[chunk.trace];
        let mut sink = new_sink();
        let mut run = Runner::new(model, &image, &mut sink, DecodeStats::default());
        let mut q = Queue {
            idx: *idx,
            tid: *tid,
            cpu: *cpu,
            decoder: queue_decoder(bytes, image_ref, config, filter.as_ref()),
            timestamp: 0,
            segment_tsc: (None, 0, 0),
            pending: None,
        };
        let outcome = decode_chunk(&mut run, &clock, &mut q, chunk.psbs, start);
        let stats = run.stats;
        (sink, outcome, stats)
    };

    let done_bytes = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    // Workers run at most `window` chunks ahead of the one handed out next: each chunk's sink
    // holds its counts until handed out, so the window bounds memory.
    let window = jobs + 1;
    let slots = Mutex::new(Slots {
        results: (0..chunks.len()).map(|_| None).collect(),
        handed: 0,
        failed: false,
    });
    let (ready, room) = (Condvar::new(), Condvar::new());
    if let Some(progress) = options.progress {
        progress(0, total);
    }
    let mut stats = DecodeStats {
        queues: traces.len(),
        trace_bytes: total,
        ..DecodeStats::default()
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(chunks.len()) {
            scope.spawn(|| {
                // A worker that panics must not leave the hand-out loop waiting for its chunk.
                let _guard = PanicFlag(&slots, &ready);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(chunk) = chunks.get(i) else { break };
                    {
                        let mut s = lock(&slots);
                        while i >= s.handed + window && !s.failed {
                            s = room.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    let result = decode_one(chunk, guess(chunk));
                    lock(&slots).results[i] = Some(result);
                    ready.notify_all();
                    let done = done_bytes.fetch_add(chunk.bytes, Ordering::Relaxed) + chunk.bytes;
                    if let Some(progress) = options.progress {
                        progress(done, total);
                    }
                }
            });
        }

        // Each queue's chunks in order, with the true start: the previous chunk's end.
        let mut actual = Start {
            timestamp: 0,
            started: timeless,
        };
        let mut next_segment_tsc = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let result = {
                let mut s = lock(&slots);
                loop {
                    if let Some(result) = s.results[i].take() {
                        s.handed = i + 1;
                        break Some(result);
                    }
                    if s.failed {
                        break None;
                    }
                    s = ready.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            };
            room.notify_all();
            let Some((mut sink, mut outcome, mut chunk_stats)) = result else {
                return;
            };
            if chunk.first {
                actual = Start {
                    timestamp: 0,
                    started: timeless,
                };
            }
            let guessed = guess(chunk);
            let mut first_segment_tsc = outcome.first_segment_at_start.map(|_| guessed.timestamp);
            if !same_from(&clock, &outcome, guessed, actual) {
                tracing::debug!(
                    queue = traces[chunk.trace].0,
                    psb = chunk.psbs.0,
                    "chunk decoded again from the queue's true time"
                );
                (sink, outcome, chunk_stats) = decode_one(chunk, actual);
                first_segment_tsc = outcome.first_segment_at_start.map(|_| actual.timestamp);
            }
            // The whole decode's queue time for the chunk's first segment: where the previous
            // chunk's flow ran into it, else the chunk's start.
            if let Some(recorded) = first_segment_tsc {
                let wanted = if chunk.first {
                    actual.timestamp
                } else {
                    next_segment_tsc.unwrap_or(actual.timestamp)
                };
                if recorded != wanted {
                    sink.segment_queue_tsc(traces[chunk.trace].0, chunk.psbs.0 as u64, wanted);
                }
            }
            next_segment_tsc = outcome.next_segment_tsc;
            actual = Start {
                timestamp: outcome.end.unwrap_or(actual.timestamp),
                started: outcome.started,
            };
            stats.branches += chunk_stats.branches;
            stats.errors += chunk_stats.errors;
            stats.overflows += chunk_stats.overflows;
            stats.instructions += chunk_stats.instructions;
            finished(sink);
        }
    });
    if let Some(progress) = options.progress {
        progress(total, total);
    }
    stats.missing_binaries = image.missing();
    Ok(stats)
}

/// The chunks decoded and not yet handed out, shared by the workers and the hand-out loop.
struct Slots<T> {
    results: Vec<Option<T>>,
    /// Chunks handed out so far (in order).
    handed: usize,
    /// A worker panicked.
    failed: bool,
}

fn lock<T>(slots: &Mutex<Slots<T>>) -> std::sync::MutexGuard<'_, Slots<T>> {
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks the slots failed when a worker unwinds.
struct PanicFlag<'a, T>(&'a Mutex<Slots<T>>, &'a Condvar);

impl<T> Drop for PanicFlag<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(self.0).failed = true;
            self.1.notify_all();
        }
    }
}

/// Splits every queue's trace into chunks of whole PSB segments of about `chunk_bytes`.
fn split(traces: &[(u32, i32, i32, JoinedTrace)], chunk_bytes: u64) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (t, (_, _, _, bytes)) in traces.iter().enumerate() {
        let mut psbs = Vec::new();
        let mut at = 0;
        while let Some(psb) = next_psb(bytes, at) {
            psbs.push(psb);
            at = psb + 1;
        }
        let mut first = true;
        let mut i = 0;
        while i < psbs.len() {
            let start = psbs[i];
            let mut j = i + 1;
            while j < psbs.len() && ((psbs[j] - start) as u64) < chunk_bytes {
                j += 1;
            }
            let end = psbs.get(j).copied().unwrap_or(bytes.len());
            chunks.push(Chunk {
                trace: t,
                psbs: (start, psbs.get(j).copied().unwrap_or(usize::MAX)),
                bytes: (end - start) as u64,
                first,
            });
            first = false;
            i = j;
        }
    }
    chunks
}
