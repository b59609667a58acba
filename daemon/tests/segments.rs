//! "Events at this code" from the index's PSB segments: decoding again only the segments the
//! index says ran a branch instruction gives exactly the events of a full decode at it (same
//! from, to, flags, thread, CPU and time, in the same order per CPU or thread), for branch
//! instructions spread over each committed sample (a few hundred of single-thread's), with one
//! `SegmentDecoder` per recording.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[path = "perf_support.rs"]
mod perf_support;
#[path = "support/queues.rs"]
mod queues;

use ptlens::debuginfo::{BinaryCache, SearchPaths};
use ptlens::decode::{
    self, BlockRun, BranchEvent, BranchKind, DecodeOptions, SegmentDecoder, Sink,
};
use ptlens::index::{BinaryId, BinaryKey, IndexBuilder};
use ptlens::perf::PerfData;
use ptlens::sideband::Model;
use queues::per_queue;

/// The index, and every branch event, plus the code identity of each branch source.
#[derive(Default)]
struct Full {
    index: IndexBuilder,
    events: Vec<BranchEvent>,
    /// Virtual address of a block's last instruction → (binary, file offset).
    sources: HashMap<u64, (BinaryKey, u64)>,
}

impl Sink for Full {
    fn event(&mut self, event: &BranchEvent) {
        self.index.event(event);
        self.events.push(event.clone());
    }

    fn block(&mut self, run: &BlockRun<'_>) {
        self.index.block(run);
        let Some(last) = run.block.last else { return };
        let Some(map) = run.image.map_for(&run.block.ctx, last.ip) else {
            return;
        };
        let id = match map
            .build_id
            .as_ref()
            .and_then(|b| ptlens::debuginfo::BuildId::new(b.as_bytes()))
        {
            Some(id) => BinaryId::BuildId(id),
            None => BinaryId::Path(map.filename.clone()),
        };
        let key = BinaryKey { machine_pid: 0, id };
        self.sources
            .insert(last.ip, (key, map.file_offset(last.ip)));
    }
}

fn branch_from(event: &BranchEvent) -> Option<u64> {
    match event.kind {
        BranchKind::Branch { from, .. } if from != 0 => Some(from),
        _ => None,
    }
}

/// Checks at most `limit` branch sources of the sample in `dir`, spread evenly.
fn check(dir: &Path, limit: usize) {
    let data = PerfData::open(dir.join("perf.data")).unwrap();
    let recording = data.recording().unwrap();
    let model = Model::build(&recording);
    let binaries = BinaryCache::new(SearchPaths::new().with_buildid_dir(dir));
    let options = DecodeOptions::default();
    let mut full = Full::default();
    decode::decode(&recording, &model, &binaries, &options, &mut full).unwrap();
    let index = std::mem::take(&mut full.index).finish();
    assert!(!index.segments.is_empty(), "{}: no segments", dir.display());

    // Full-decode events per branch source.
    let mut by_source: BTreeMap<u64, Vec<BranchEvent>> = BTreeMap::new();
    for e in &full.events {
        if let Some(from) = branch_from(e) {
            by_source.entry(from).or_default().push(e.clone());
        }
    }
    let segments = SegmentDecoder::new(&recording, &model, &binaries).unwrap();
    let step = by_source.len().div_ceil(limit).max(1);
    let mut checked = 0;
    let mut decoded = 0usize;
    for (from, expected) in by_source.iter().step_by(step) {
        let Some((binary, offset)) = full.sources.get(from) else {
            continue;
        };
        let refs: Vec<_> = index
            .segments_touching(binary, *offset..offset + 1)
            .map(|s| s.to_ref())
            .collect();
        decoded += refs.len();
        let mut got = Vec::new();
        let mut sink = |e: &BranchEvent| {
            if branch_from(e) == Some(*from) {
                got.push(e.clone());
            }
        };
        segments.decode(&mut refs.into_iter(), &mut sink);
        assert_eq!(
            per_queue(got),
            per_queue(expected.clone()),
            "{}: events from {from:#x}",
            dir.display()
        );
        checked += 1;
    }
    assert!(
        checked >= by_source.len().min(limit).min(5),
        "{}: {checked} of {} branch sources checked",
        dir.display(),
        by_source.len()
    );
    eprintln!(
        "{}: {checked} branch sources, {} segments, {decoded} segment decodes",
        dir.display(),
        index.segments.len()
    );
}

#[test]
fn segments_touching_a_branch_give_its_events() {
    for dir in perf_support::samples() {
        let many = dir.ends_with("single-thread");
        check(&dir, if many { 400 } else { 40 });
    }
}
