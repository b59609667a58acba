//! The index on a real recording: counting a stream in two builders and merging gives the
//! counts of one builder (segments decoded apart add up exactly).

use std::path::PathBuf;

use ptlens::debuginfo::{BinaryCache, SearchPaths};
use ptlens::decode::{self, BlockRun, BranchEvent, DecodeOptions, Sink};
use ptlens::index::{aggregate, Index, IndexBuilder, Naming};
use ptlens::perf::PerfData;
use ptlens::sideband::Model;

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(name)
}

/// Sends everything to `first` until `cut` blocks were seen, then to a fork of it.
struct Split {
    first: IndexBuilder,
    second: Option<IndexBuilder>,
    blocks: usize,
    cut: usize,
}

impl Split {
    fn current(&mut self) -> &mut IndexBuilder {
        match &mut self.second {
            Some(b) => b,
            None => &mut self.first,
        }
    }
}

impl Sink for Split {
    fn event(&mut self, event: &BranchEvent) {
        self.current().event(event);
    }

    fn block(&mut self, run: &BlockRun<'_>) {
        if self.blocks == self.cut && self.second.is_none() {
            self.second = Some(self.first.fork());
        }
        self.blocks += 1;
        self.current().block(run);
    }
}

fn decode_split(dir: &std::path::Path, cut: usize) -> (Index, BinaryCache) {
    let data = PerfData::open(dir.join("perf.data")).unwrap();
    let recording = data.recording().unwrap();
    let model = Model::build(&recording);
    let binaries = BinaryCache::new(SearchPaths::new().with_buildid_dir(dir));
    let mut sink = Split {
        first: IndexBuilder::new(),
        second: None,
        blocks: 0,
        cut,
    };
    decode::decode(
        &recording,
        &model,
        &binaries,
        &DecodeOptions::default(),
        &mut sink,
    )
    .unwrap();
    let mut index = sink.first.finish();
    if let Some(second) = sink.second {
        index.merge(second.finish());
    }
    (index, binaries)
}

#[test]
fn split_decode_merges_to_the_whole() {
    let dir = sample("single-thread");
    let (whole, binaries) = decode_split(&dir, usize::MAX);
    assert!(whole.totals().instructions > 100_000);
    for cut in [0, 1, 1000, 12_345] {
        let (mut merged, _) = decode_split(&dir, cut);
        // An empty half leaves an empty per-thread map behind.
        merged.threads.retain(|_, m| !m.is_empty());
        let mut whole = whole.clone();
        whole.threads.retain(|_, m| !m.is_empty());
        assert_eq!(merged, whole, "cut at block {cut}");
    }
    // Lines aggregate every count: nothing is dropped between the index and the lines.
    let report = aggregate(&whole, &binaries, Naming::Dwarf);
    let lines: u64 = report.lines.iter().map(|l| l.instructions).sum();
    let u = &report.unresolved;
    let unresolved =
        u.no_mapping.instructions + u.binary_not_found.instructions + u.no_line.instructions;
    assert_eq!(
        lines + unresolved,
        whole.totals().instructions + whole.unmapped.instructions
    );
    let taken: u64 = report.lines.iter().map(|l| l.taken).sum();
    let unresolved = u.no_mapping.taken + u.binary_not_found.taken + u.no_line.taken;
    assert_eq!(
        taken + unresolved,
        whole.totals().taken + whole.unmapped.taken
    );
}
