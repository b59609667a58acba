//! Helpers shared by the perf.data tests (included with `#[path]`; no tests of its own).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The repository root (test data lives under `tests/data`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn skylake() -> PathBuf {
    repo().join("tests/data/skylake-echo/perf.data")
}

/// Whether `perf` can run here. When it cannot, prints why and returns false, so the caller
/// skips; with `PTLENS_REQUIRE_PERF=1` a missing perf fails the test instead.
pub fn have_perf() -> bool {
    let ok = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PTLENS_REQUIRE_PERF").as_deref() == Ok("1") {
            panic!("perf is not on PATH and PTLENS_REQUIRE_PERF=1");
        }
        eprintln!("skipped: perf is not on PATH (set PTLENS_REQUIRE_PERF=1 to fail instead)");
    }
    ok
}

/// Record counts by perf's name from `perf report -D`'s "Aggregated stats" (TOTAL excluded).
pub fn perf_report_counts(file: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let out = Command::new("perf")
        .args(["report", "-D", "--stdio", "-i"])
        .arg(file)
        .output()
        .expect("run perf report -D");
    let text = String::from_utf8_lossy(&out.stdout);
    let stats = text
        .split("Aggregated stats")
        .nth(1)
        .expect("perf report -D prints aggregated stats");
    let mut counts = std::collections::BTreeMap::new();
    for line in stats.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        // "MMAP events: 56 (21.8%)"; the per-event sections after the first block repeat names.
        match words.as_slice() {
            [name, "events:", n, ..] if *name != "TOTAL" => {
                counts.entry(name.to_string()).or_insert(n.parse().unwrap());
            }
            [_, "stats:"] => break,
            _ => {}
        }
    }
    counts
}

/// Our record counts under perf's names (perf shortens the HEADER_ ones).
pub fn ptlens_counts(file: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let data = ptlens::perf::PerfData::open(file).unwrap();
    let recording = data.recording().unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for record in recording.records() {
        let record = record.unwrap();
        let name = record.type_name().unwrap_or("UNKNOWN");
        let name = match name {
            "HEADER_ATTR" => "ATTR",
            "HEADER_FEATURE" => "FEATURE",
            "HEADER_EVENT_TYPE" => "EVENT_TYPE",
            "HEADER_TRACING_DATA" => "TRACING_DATA",
            "HEADER_BUILD_ID" => "BUILD_ID",
            n => n,
        };
        *counts.entry(name.to_string()).or_insert(0) += 1;
    }
    counts
}

/// The sample folders (`samples/*` holding a `perf.data`), sorted.
pub fn samples() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("samples"))
        .expect("samples directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("perf.data").is_file())
        .collect();
    dirs.sort();
    dirs
}
