//! The recorded address filter of `samples/filter-cpu` applied as perf applies it: a branch
//! target is judged in the maps of the process the decoder's context names, so the same
//! program mapped at two addresses (the parent, and a child that re-ran it through ld.so)
//! is inside the filter at its own address in each process, and the other process's address
//! means nothing there. (The decode itself is checked against perf by `branches_perf.rs`.)

use std::path::PathBuf;

use ptlens::debuginfo::{BinaryCache, SearchPaths};
use ptlens::decode::{parse_filter, FilterAction, RecordedFilter, RecordingImage};
use ptlens::perf::PerfData;
use ptlens::pt::flow::{Context, PgdFilter};
use ptlens::sideband::Model;

#[test]
fn the_filter_is_judged_in_each_process_own_maps() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/filter-cpu");
    let data = PerfData::open(dir.join("perf.data")).unwrap();
    let recording = data.recording().unwrap();
    let model = Model::build(&recording);
    let binaries = BinaryCache::new(SearchPaths::new().with_buildid_dir(&dir));
    let text = model.pt.as_ref().unwrap().filter.clone().expect("a filter");
    let entries = parse_filter(&text).unwrap();
    assert_eq!(entries.len(), 2, "{text}");
    assert!(entries.iter().all(|e| e.action == FilterAction::Filter));
    let program = entries[0].path.clone().unwrap();

    // Where each process has the program's code, at the end of the recording.
    let mut bases = Vec::new();
    for process in model.host().processes() {
        let code = process
            .address_space()
            .maps()
            .filter(|m| *m.filename == *program && m.prot.is_some_and(|p| p & 4 != 0))
            .max_by_key(|m| m.time);
        if let Some(map) = code {
            bases.push((process.pid, map.start - map.pgoff));
        }
    }
    bases.sort_by_key(|&(_, base)| base);
    bases.dedup_by_key(|b| b.1);
    assert_eq!(bases.len(), 2, "two load addresses: {bases:x?}");

    // One epoch, at the end: every map record applied.
    let image = RecordingImage::new(&model, &binaries, vec![u64::MAX]);
    let filter = RecordedFilter::new(entries.clone(), &image);
    let ctx = |pid: i32| Context {
        space: RecordingImage::space(pid, image.last_epoch()),
        ..Context::default()
    };
    let (hot, hot_size) = (entries[0].offset, entries[0].size);
    let mut foreign = 0;
    for (i, &(pid, base)) in bases.iter().enumerate() {
        let (_, other) = bases[1 - i];
        let me = ctx(pid);
        // Inside either range at this process's address: tracing goes on.
        assert!(!filter.leaves(&me, base + hot), "{pid}: hot");
        assert!(
            !filter.leaves(&me, base + hot + hot_size - 1),
            "{pid}: hot's end"
        );
        assert!(!filter.leaves(&me, base + entries[1].offset), "{pid}: warm");
        // Just past the range, in the same file: out.
        assert!(filter.leaves(&me, base + hot + hot_size), "{pid}: past hot");
        // The other process's address of hot, judged by what this process has there: perf
        // keeps a process's maps across an exec (the new image's MMAP2s replace only what they
        // overlap), so the child still names the program at the parent's address; the parent
        // has nothing of the program at the child's.
        let ip = other + hot;
        let leaves = filter.leaves(&me, ip);
        match image.map_for(&me, ip) {
            Some(m) if *m.filename == *program => {
                assert_eq!(leaves, m.file_offset(ip) != hot, "{pid}: {ip:#x}");
            }
            Some(m) => {
                assert!(leaves, "{pid}: {ip:#x} in {}", m.filename);
                foreign += 1;
            }
            None => {
                // perf cannot look it up: not out (it walks on).
                assert!(!leaves, "{pid}: {ip:#x}");
                foreign += 1;
            }
        }
    }
    assert!(
        foreign > 0,
        "one process has not the other's code where it has its own"
    );
}
