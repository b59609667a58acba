//! Decoding PSB segments in parallel gives exactly the counts of decoding them in order: on
//! every committed sample and on the real Skylake recording, `index::build` (PSB segments in
//! chunks of one segment, of a few segments and of the default size, on several threads)
//! builds the same index as one `IndexBuilder` over the sequential `decode`, and
//! `decode_parallel` with a chunk per segment hands out the same branch events per queue.

#[path = "perf_support.rs"]
mod perf_support;
#[path = "support/queues.rs"]
mod queues;

use std::path::Path;

use ptlens::debuginfo::{BinaryCache, SearchPaths};
use ptlens::decode::{self, BranchEvent, DecodeOptions, ParallelOptions};
use ptlens::index::{self, IndexBuilder};
use ptlens::perf::PerfData;
use ptlens::sideband::Model;
use queues::per_queue;

fn check(dir: &Path) {
    let data = PerfData::open(dir.join("perf.data")).unwrap();
    let recording = data.recording().unwrap();
    let model = Model::build(&recording);
    let binaries = BinaryCache::new(SearchPaths::new().with_buildid_dir(dir));
    let options = DecodeOptions::default();

    let mut builder = IndexBuilder::new();
    let stats = decode::decode(&recording, &model, &binaries, &options, &mut builder).unwrap();
    let whole = builder.finish();
    let mut events = Vec::new();
    decode::decode(
        &recording,
        &model,
        &binaries,
        &options,
        &mut |e: &BranchEvent| events.push(e.clone()),
    )
    .unwrap();
    let whole_events = per_queue(events);
    assert!(stats.branches > 0, "{}: no branches", dir.display());

    for (jobs, chunk_bytes) in [(2, Some(1)), (3, Some(3000)), (2, None)] {
        let parallel = ParallelOptions { jobs, chunk_bytes };
        let what = format!("{} jobs {jobs} chunk {chunk_bytes:?}", dir.display());

        let (index, pstats) =
            index::build(&recording, &model, &binaries, &options, &parallel).unwrap();
        for (a, b) in index.segments.iter().zip(&whole.segments) {
            assert_eq!(a, b, "{what}: segment");
        }
        assert_eq!(
            index.segments.len(),
            whole.segments.len(),
            "{what}: segments"
        );
        assert_eq!(index.threads, whole.threads, "{what}: per thread");
        assert_eq!(index, whole, "{what}: index");
        assert_eq!(
            (pstats.branches, pstats.errors, pstats.instructions),
            (stats.branches, stats.errors, stats.instructions),
            "{what}: stats"
        );

        // Events: the smallest chunks are the hardest case (a chunk boundary at every PSB).
        if chunk_bytes != Some(1) {
            continue;
        }
        let mut events = Vec::new();
        decode::decode_parallel(
            &recording,
            &model,
            &binaries,
            &options,
            &parallel,
            Vec::<BranchEvent>::new,
            |chunk| events.extend(chunk),
        )
        .unwrap();
        let events = per_queue(events);
        assert_eq!(
            events.keys().collect::<Vec<_>>(),
            whole_events.keys().collect::<Vec<_>>(),
            "{what}: queues"
        );
        for (queue, seq) in &whole_events {
            let par = &events[queue];
            if let Some(i) = (0..seq.len().max(par.len())).find(|&i| seq.get(i) != par.get(i)) {
                panic!(
                    "{what}: queue {queue:?} event {i} differs:\n  sequential {:?}\n  parallel   {:?}",
                    seq.get(i),
                    par.get(i)
                );
            }
        }
    }
}

#[test]
fn parallel_segments_count_as_the_sequential_decode() {
    for dir in perf_support::samples() {
        check(&dir);
    }
}

#[test]
fn parallel_segments_on_the_skylake_recording() {
    check(&perf_support::repo().join("tests/data/skylake-echo"));
}
