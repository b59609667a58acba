//! Address filters (`record --filter 'filter 0xOFFSET/0xSIZE@BINARY,…'`): perf must decode a filtered
//! recording into exactly the instructions inside the regions, with no errors, and only because it
//! knows the filter: without the filter string in AUXTRACE_INFO it follows the direct calls out of the
//! regions and reports errors. Per-thread with one range, and per-CPU with two ranges and two
//! processes that map the program at different addresses.
//!
//! Needs `perf`, `gcc`, `nm` and `readelf`; prints why it skips when one is missing, unless
//! `PTLENS_REQUIRE_PERF=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ptlens_synth::{check, recording, sample};
use support::{scratch, tools_or_skip};

mod support;

/// The committed filter sample's program: `hot` is called from a loop in `main` and calls `helper`,
/// outside the region, from a loop of its own; `helper` loops too (conditional branches a decoder
/// ignoring the filter trips over).
fn program() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("filter/prog.c")
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn filtered_recording_decodes_to_the_region_only_and_needs_the_filter() {
    if !tools_or_skip(
        "filtered_recording_decodes_to_the_region_only_and_needs_the_filter",
        &["perf", "gcc", "nm", "readelf"],
    ) {
        return;
    }
    let work = scratch("filter-work");
    let src = program();
    let bin = work.join("prog");
    output(
        Command::new("gcc")
            .args(["-g", "-O1", "-o"])
            .arg(&bin)
            .arg(&src),
    );
    let (offset, size) = sample::function_offset(&bin, "hot").unwrap();
    let filter =
        recording::AddrFilter::parse(&format!("filter {offset:#x}/{size:#x} @ {}", bin.display()))
            .unwrap();
    let text = filter.perf_string();
    assert!(
        text.starts_with(&format!("filter {offset:#x}/{size:#x}@/")),
        "{text}"
    );

    let dir = work.join("rec");
    let opts = recording::Options {
        filter: Some(filter),
        ..recording::Options::default()
    };
    let rec = recording::record(bin.to_str().unwrap(), &[], &dir, &opts).unwrap();
    assert_eq!(rec.exit_code, 0);
    // Every call in and every return out; each call of helper leaves and comes back.
    let s = rec.stats;
    assert!(s.pge >= 12 && s.pge == s.pgd, "{s:?}");

    // The ground truth holds the region's instructions only, far fewer than the program ran.
    let truth = recording::read_ground_truth(&dir.join(recording::GROUND_TRUTH)).unwrap();
    assert!(truth.len() > 100, "{}", truth.len());
    assert!((truth.len() as u64) < rec.instructions / 10);
    let (lo, hi) = truth
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &(_, ip)| (lo.min(ip), hi.max(ip)));
    assert!(hi - lo < size, "{lo:#x}..={hi:#x} is wider than the region");

    // perf read the filter string as written and decodes exactly the ground truth, no errors.
    let dump = output(
        Command::new("perf")
            .arg("--buildid-dir")
            .arg(&dir)
            .args(["script", "-D", "-i"])
            .arg(dir.join(recording::PERF_DATA)),
    );
    let shown = dump
        .lines()
        .filter(|l| !l.contains("Filter string len"))
        .find_map(|l| l.trim().strip_prefix("Filter string").map(str::trim))
        .unwrap_or_else(|| panic!("perf -D shows no filter string"));
    assert_eq!(shown, text);
    let verdict = check::check(&dir).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert_eq!(verdict.decoded, truth.len(), "{verdict}");

    // The same recording with the filter string blanked (same sizes): perf follows the calls to
    // helper out of the region and fails.
    let verdict = check_without_filter(&dir, &text);
    assert!(
        !verdict.errors.is_empty(),
        "no errors without the filter: {verdict}"
    );
    assert!(
        verdict
            .errors
            .iter()
            .any(|e| e.contains("Trace doesn't match")),
        "{verdict}"
    );

    let _ = std::fs::remove_dir_all(&work);
}

/// The same recording with the filter string `text` blanked (same sizes) in a copy, checked by perf.
fn check_without_filter(dir: &Path, text: &str) -> check::Verdict {
    let blank = dir.with_extension("nofilter");
    let _ = std::fs::remove_dir_all(&blank);
    output(Command::new("cp").arg("-r").arg(dir).arg(&blank));
    let data = blank.join(recording::PERF_DATA);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes
        .windows(text.len())
        .position(|w| w == text.as_bytes())
        .expect("the filter string is in perf.data");
    bytes[at..at + text.len()].fill(0);
    std::fs::write(&data, bytes).unwrap();
    check::check(&blank).unwrap()
}

/// The committed per-CPU filter sample's program: `main` forks a child that runs the program again
/// through ld.so (so it is mapped at another address), then a plain fork (mapped where the parent has
/// it); all three call `hot` (range 1), which calls `warm` (range 2: a direct call between ranges
/// stays traced) and `helper` (outside), at once on two CPUs.
fn per_cpu_program() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("filter-cpu/prog.c")
}

#[test]
fn per_cpu_recording_of_three_processes_and_two_ranges_decodes_to_the_ranges_only() {
    if !tools_or_skip(
        "per_cpu_recording_of_three_processes_and_two_ranges_decodes_to_the_ranges_only",
        &["perf", "gcc", "nm", "readelf"],
    ) {
        return;
    }
    let work = scratch("filter-cpu-work");
    let bin = work.join("prog");
    output(
        Command::new("gcc")
            .args(["-g", "-O1", "-o"])
            .arg(&bin)
            .arg(per_cpu_program()),
    );
    let (hot, hot_size) = sample::function_offset(&bin, "hot").unwrap();
    let (warm, warm_size) = sample::function_offset(&bin, "warm").unwrap();
    let filter = recording::AddrFilter::parse(&format!(
        "filter {hot:#x}/{hot_size:#x}@{0}, filter {warm:#x}/{warm_size:#x} @ {0}",
        bin.display()
    ))
    .unwrap();
    assert_eq!(filter.ranges.len(), 2);
    let text = filter.perf_string();
    // As perf record writes it: entries joined by a comma, no spaces.
    let path = std::fs::canonicalize(&bin).unwrap();
    assert_eq!(
        text,
        format!(
            "filter {hot:#x}/{hot_size:#x}@{0},filter {warm:#x}/{warm_size:#x}@{0}",
            path.display()
        )
    );

    let dir = work.join("rec");
    let opts = recording::Options {
        filter: Some(filter),
        per_cpu: Some(2),
        quantum: 5_000,
        ..recording::Options::default()
    };
    let rec = recording::record(bin.to_str().unwrap(), &[], &dir, &opts).unwrap();
    assert_eq!(rec.exit_code, 0);
    assert_eq!(rec.tasks, 3);
    let s = rec.stats;
    assert!(s.pge >= 50 && s.pge == s.pgd, "{s:?}");

    // Every process ran both ranges, at its own address: the program is mapped at two different
    // places, and the ground truth is the ranges' instructions only.
    let truth = recording::read_ground_truth(&dir.join(recording::GROUND_TRUTH)).unwrap();
    assert!((truth.len() as u64) < rec.instructions / 10);
    let mut tids: Vec<u32> = truth.iter().map(|&(t, _)| t).collect();
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids.len(), 3, "{tids:?}");
    let bases: Vec<u64> = tids
        .iter()
        .map(|&t| {
            let ips: Vec<u64> = truth.iter().filter(|e| e.0 == t).map(|e| e.1).collect();
            // The lower function's entry is the lowest IP run: where the program is mapped.
            let base = ips.iter().min().unwrap() - hot.min(warm);
            let inside = |ip: u64, at: u64, size: u64| (base + at..base + at + size).contains(&ip);
            let in_hot = ips.iter().filter(|&&ip| inside(ip, hot, hot_size)).count();
            let in_warm = ips
                .iter()
                .filter(|&&ip| inside(ip, warm, warm_size))
                .count();
            assert!(in_hot > 0 && in_warm > 0, "{t}: both ranges");
            assert_eq!(in_hot + in_warm, ips.len(), "{t}: the ranges only");
            base
        })
        .collect();
    let mut distinct = bases.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "the program's addresses: {bases:x?}");

    let verdict = check::check(&dir).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert_eq!(verdict.decoded, truth.len(), "{verdict}");
    let verdict = check_without_filter(&dir, &text);
    assert!(
        verdict
            .errors
            .iter()
            .any(|e| e.contains("Trace doesn't match")),
        "no errors without the filter: {verdict}"
    );

    let _ = std::fs::remove_dir_all(&work);
}
