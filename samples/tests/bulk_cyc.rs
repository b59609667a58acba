//! Bulk benchmark recordings and cycle-accurate (CYC) recordings, judged by real perf: the bulk trace
//! must decode to exactly its expected counts (instructions, and every branch site's executions and
//! taken count), a CYC trace to exactly its ground truth with times that never go back.
//!
//! Without `perf` these tests print why they skip, unless `PTLENS_REQUIRE_PERF=1`, which makes the
//! skip a failure.

use std::path::{Path, PathBuf};

use ptlens_synth::{bulk, check, elf, encode, recording, sample};
use support::{scratch, tools_or_skip};

mod support;

/// The binary the bulk tests walk: perf's own (a 9 MB ELF on every machine that runs these tests,
/// since `.ci/run` installs linux-perf), else the C library.
fn big_binary() -> PathBuf {
    let candidates = [
        "/usr/bin/perf",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            std::fs::read(p)
                .ok()
                .is_some_and(|b| elf::parse(&b, "candidate").is_ok())
        })
        .expect("neither /usr/bin/perf nor libc.so.6 is an x86-64 ELF file here")
}

/// perf's instruction times (`--itrace=i1i -F time --ns`), in order.
fn instruction_times(dir: &Path) -> Vec<f64> {
    check::perf_script(dir, &["--itrace=i1i", "-F", "time", "--ns"])
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(':').parse().ok())
        .collect()
}

fn assert_monotonic_and_fine(times: &[f64], at_least_distinct: usize) {
    assert!(!times.is_empty());
    for w in times.windows(2) {
        assert!(w[1] >= w[0], "time goes back: {} after {}", w[1], w[0]);
    }
    let distinct = times.windows(2).filter(|w| w[1] > w[0]).count() + 1;
    assert!(
        distinct >= at_least_distinct,
        "{distinct} distinct times, expected at least {at_least_distinct}"
    );
}

#[test]
fn bulk_walk_decodes_to_its_expected_counts() {
    if !tools_or_skip("bulk_walk_decodes_to_its_expected_counts", &["perf"]) {
        return;
    }
    let dir = scratch("bulk");
    let mut opts = bulk::Options::new(big_binary(), 256 << 10);
    opts.aux_buffer = 64 << 10;
    opts.seed = 3;
    let summary = bulk::generate(&dir, &opts).unwrap();
    let s = summary.stats;
    // Varied, real-looking flow: many distinct blocks, every kind of packet the walk produces.
    assert!(summary.blocks > 10_000, "{summary}");
    assert!(summary.buffers >= 4, "{summary}");
    assert!(s.tnt_long > 0 && s.tnt_short > 0, "{summary}");
    assert!(s.tips > 1000 && s.compressed_returns > 1000, "{summary}");
    assert!(s.pge > 10 && s.pgd > 10 && s.fups > 0, "{summary}");
    assert!(s.psbs > 50 && s.mtcs > 0, "{summary}");
    let c = &summary.counts;
    assert!(c.instructions > 1_000_000, "{summary}");
    assert!(c.conditional_taken > 0 && c.conditional_taken < c.conditional);
    assert_eq!(c.sites.iter().map(|s| s.1).sum::<u64>(), c.branches);

    // perf agrees: no decoder errors, the same instruction count, and at every branch site the same
    // executions and taken branches.
    let verdict = bulk::check(&dir).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert!(verdict.sites > 10_000, "{verdict}");

    // The same seed writes the same trace; another seed another one.
    let again = scratch("bulk-again");
    opts.size = 32 << 10;
    bulk::generate(&dir, &opts).unwrap();
    bulk::generate(&again, &opts).unwrap();
    let trace = |d: &Path| std::fs::read(d.join(recording::PERF_DATA)).unwrap();
    assert!(trace(&dir) == trace(&again), "same seed, different trace");
    opts.seed = 4;
    bulk::generate(&again, &opts).unwrap();
    assert!(trace(&dir) != trace(&again), "another seed, same trace");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&again);
}

#[test]
fn bulk_walk_over_the_dynamic_loader_decodes_to_its_expected_counts() {
    if !tools_or_skip(
        "bulk_walk_over_the_dynamic_loader_decodes_to_its_expected_counts",
        &["perf"],
    ) {
        return;
    }
    let ld_so = Path::new("/lib64/ld-linux-x86-64.so.2");
    if !ld_so.exists() {
        eprintln!(
            "bulk_walk_over_the_dynamic_loader_decodes_to_its_expected_counts: skipped: no {}",
            ld_so.display()
        );
        return;
    }
    // This seed ends the trace after direct jumps and calls but no packet since: the final FUP must
    // tell a decoder about them.
    let dir = scratch("bulk-ld");
    let mut opts = bulk::Options::new(ld_so, 128 << 10);
    opts.seed = 9;
    bulk::generate(&dir, &opts).unwrap();
    let verdict = bulk::check(&dir).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bulk_walk_with_a_wrong_count_is_caught() {
    if !tools_or_skip("bulk_walk_with_a_wrong_count_is_caught", &["perf"]) {
        return;
    }
    let dir = scratch("bulk-wrong");
    let mut opts = bulk::Options::new(big_binary(), 64 << 10);
    opts.seed = 5;
    bulk::generate(&dir, &opts).unwrap();
    // One conditional branch said to be taken once more than it was.
    let mut counts = bulk::Counts::read(&dir).unwrap();
    let site = counts.sites.iter_mut().find(|s| s.2 < s.1).unwrap();
    site.2 += 1;
    std::fs::write(dir.join(bulk::COUNTS), counts.to_bytes()).unwrap();
    let verdict = bulk::check(&dir).unwrap();
    assert!(!verdict.is_exact(), "{verdict}");
    assert_eq!(verdict.mismatches.len(), 1, "{verdict}");
    assert_eq!(verdict.expected_instructions, verdict.decoded_instructions);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bulk_walk_in_cycle_accurate_mode_decodes_with_fine_monotonic_times() {
    if !tools_or_skip(
        "bulk_walk_in_cycle_accurate_mode_decodes_with_fine_monotonic_times",
        &["perf"],
    ) {
        return;
    }
    let dir = scratch("bulk-cyc");
    let mut opts = bulk::Options::new(big_binary(), 128 << 10);
    opts.encode.cyc = true;
    let summary = bulk::generate(&dir, &opts).unwrap();
    assert!(summary.stats.cycs > 10_000, "{summary}");
    let verdict = bulk::check(&dir).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    // CYC times far more instructions than MTC and TSC alone could.
    let times = instruction_times(&dir);
    let coarse = (summary.stats.mtcs + summary.stats.pge) as usize;
    assert_monotonic_and_fine(&times, 4 * coarse);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cycle_accurate_recording_decodes_exactly_with_fine_monotonic_times() {
    if !tools_or_skip(
        "cycle_accurate_recording_decodes_exactly_with_fine_monotonic_times",
        &["perf"],
    ) {
        return;
    }
    let dir = scratch("cyc");
    let opts = recording::Options {
        encode: encode::Config {
            cyc: true,
            ..encode::Config::default()
        },
        ..recording::Options::default()
    };
    let rec = recording::record("true", &[], &dir, &opts).unwrap();
    assert!(rec.stats.cycs > 500, "{rec}");
    // perf took the configuration: the CYC bit in the attr and in AUXTRACE_INFO.
    let dump = check::perf_script(&dir, &["-D"]).unwrap();
    assert!(
        dump.contains("CYC bit             0x2"),
        "no CYC bit in AUXTRACE_INFO"
    );
    assert!(dump.contains(" CYC 0x"), "no CYC packets in perf's dump");
    assert!(!dump.contains("Bad packet"));
    let verdict = check::check(&dir).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    let times = instruction_times(&dir);
    let coarse = (rec.stats.mtcs + rec.stats.pge + rec.stats.psbs) as usize;
    assert_monotonic_and_fine(&times, 4 * coarse);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cyc_threads_sample_regenerated_per_cpu_decodes_exactly_with_fine_times() {
    if !tools_or_skip(
        "cyc_threads_sample_regenerated_per_cpu_decodes_exactly_with_fine_times",
        &["perf", "gcc"],
    ) {
        return;
    }
    let work = scratch("cyc-threads-work");
    let out = scratch("cyc-threads-out");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("cyc-threads");
    // synth-options turns cycle-accurate mode on for a per-CPU recording; regenerate() fails
    // unless every thread's flow equals its ground truth with no decoder errors.
    let (rec, verdict) =
        sample::regenerate(&src, &work, &out, &recording::Options::default()).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert_eq!(rec.cpus, Some(2), "{rec}");
    assert_eq!(rec.tasks, 4, "{rec}");
    assert!(rec.stats.cycs > 5_000 && rec.stats.mtcs > 100, "{rec}");
    // Each CPU's times never go back and are far finer than MTC alone.
    let times = check::perf_script(&out, &["--itrace=i1i", "-F", "cpu,time", "--ns"]).unwrap();
    let mut per_cpu: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in times.lines() {
        let mut f = line.split_whitespace();
        if let (Some(cpu), Some(t)) = (f.next(), f.next()) {
            let t: f64 = t.trim_end_matches(':').parse().unwrap();
            per_cpu.entry(cpu.to_string()).or_default().push(t);
        }
    }
    assert_eq!(per_cpu.len(), 2, "{:?}", per_cpu.keys());
    for times in per_cpu.values() {
        assert_monotonic_and_fine(times, 2 * rec.stats.mtcs as usize);
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&out);
}
