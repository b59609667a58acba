//! Against the real perf, live: record counts of pipe-mode, injected and zstd files made now, and
//! `ptlens dump` packet lines against `perf script -D` on the Skylake recording and damaged copies.
//! Skips (with a printed reason) when perf is missing, unless PTLENS_REQUIRE_PERF=1.

#[path = "perf_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ptlens-perf-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

#[test]
fn pipe_inject_and_zstd_made_now_match_perf_report() {
    if !support::have_perf() {
        return;
    }
    let (pipe, file, injected, z) = (
        scratch("pipe.data"),
        scratch("file.data"),
        scratch("inject.data"),
        scratch("z.data"),
    );
    let p = |p: &Path| p.display().to_string();
    sh(&format!(
        "perf record -q -e cpu-clock -o - -- true > {} 2>/dev/null",
        p(&pipe)
    ));
    sh(&format!(
        "perf record -q -e cpu-clock -o {} -- true 2>/dev/null",
        p(&file)
    ));
    sh(&format!(
        "perf inject -i {} -o - > {} 2>/dev/null",
        p(&file),
        p(&injected)
    ));
    sh(&format!(
        "perf record -q -z -e cpu-clock -o {} -- ls >/dev/null 2>&1",
        p(&z)
    ));
    for f in [&pipe, &file, &injected, &z] {
        assert_eq!(
            support::ptlens_counts(f),
            support::perf_report_counts(f),
            "{}",
            f.display()
        );
    }
    let stdin = std::fs::File::open(&pipe).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ptlens"))
        .args(["dump", "-"])
        .stdin(stdin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pipe mode"));
}

#[test]
fn directory_form_made_now_matches_perf_report() {
    if !support::have_perf() {
        return;
    }
    // `perf record --threads` writes the directory form: `data` plus one `data.N` per writer thread.
    let dir = scratch("threads.data");
    sh(&format!(
        "perf record -q --threads -e cpu-clock -o {} -- ls >/dev/null 2>&1",
        dir.display()
    ));
    assert!(dir.join("data").is_file() && dir.join("data.0").exists());
    let data = ptlens::perf::PerfData::open(&dir).unwrap();
    assert!(data
        .recording()
        .unwrap()
        .features
        .dir_format()
        .unwrap()
        .is_some());
    assert_eq!(
        support::ptlens_counts(&dir),
        support::perf_report_counts(&dir)
    );
}

struct Dump {
    packets: Vec<String>,
    headers: usize,
    stdout: String,
    stderr: String,
    success: bool,
}

fn run(program: &str, args: &[&str], file: &Path) -> Dump {
    let out = Command::new(program).args(args).arg(file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let is_packet = |l: &&str| {
        let b = l.as_bytes();
        l.starts_with(".  ")
            && b.len() > 14
            && b[3..11]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            && &l[11..14] == ":  "
    };
    Dump {
        packets: stdout
            .lines()
            .filter(is_packet)
            .map(str::to_string)
            .collect(),
        headers: stdout
            .matches(". ... Intel Processor Trace data: size")
            .count(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
        stdout,
    }
}

fn perf_dump(file: &Path) -> Dump {
    run("perf", &["script", "-D", "-i"], file)
}

fn ptlens_dump(file: &Path) -> Dump {
    run(env!("CARGO_BIN_EXE_ptlens"), &["dump"], file)
}

/// Payload ranges (file offsets) of the Skylake file's AUXTRACE buffers.
fn payloads() -> Vec<(usize, usize)> {
    let data = ptlens::perf::PerfData::open(support::skylake()).unwrap();
    let recording = data.recording().unwrap();
    let queues = recording.aux_queues().unwrap();
    let mut ranges: Vec<(usize, usize)> = queues
        .queues
        .iter()
        .flat_map(|q| &q.buffers)
        .map(|b| (b.auxtrace.data_offset as usize, b.auxtrace.data.len()))
        .collect();
    ranges.sort();
    ranges
}

#[test]
fn packet_lines_match_perf_script_on_skylake_and_corrupted_copies() {
    if !support::have_perf() {
        return;
    }
    let original = std::fs::read(support::skylake()).unwrap();
    let mut files = vec![support::skylake()];
    for seed in [1u64, 7, 1234] {
        let mut bytes = original.clone();
        let mut state = seed;
        for &(start, len) in &payloads() {
            for _ in 0..20 {
                // A small LCG: reproducible damage without a dependency.
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes[start + (state >> 33) as usize % len] ^= (state >> 8) as u8 | 1;
            }
        }
        let path = scratch(&format!("corrupt-{seed}.data"));
        std::fs::write(&path, bytes).unwrap();
        files.push(path);
    }
    for file in &files {
        let (perf, ours) = (perf_dump(file), ptlens_dump(file));
        assert!(ours.success, "{}: {}", file.display(), ours.stderr);
        assert_eq!(ours.headers, perf.headers, "{}", file.display());
        assert!(
            !perf.packets.is_empty(),
            "perf printed packets for {}",
            file.display()
        );
        // Fails until pt::dump::write_perf_dump prints packets.
        assert_eq!(ours.packets.len(), perf.packets.len(), "{}", file.display());
        for (i, (a, b)) in ours.packets.iter().zip(&perf.packets).enumerate() {
            assert_eq!(a, b, "{}: packet line {i}", file.display());
        }
    }
}

#[test]
fn truncated_copies_print_what_came_before_then_one_error() {
    if !support::have_perf() {
        return;
    }
    let original = std::fs::read(support::skylake()).unwrap();
    let ranges = payloads();
    let (first, second) = (ranges[0], ranges[1]);
    // Mid-record just after the first payload, and mid-payload in each buffer.
    let cuts = [first.0 + first.1 + 20, first.0 + 1000, second.0 + 34888];
    for cut in cuts {
        let path = scratch(&format!("cut-{cut:#x}.data"));
        std::fs::write(&path, &original[..cut]).unwrap();
        let (perf, ours) = (perf_dump(&path), ptlens_dump(&path));
        assert!(!ours.success, "truncation is an error");
        let errors: Vec<&str> = ours.stderr.lines().collect();
        assert_eq!(errors.len(), 1, "{}", ours.stderr);
        assert!(errors[0].contains(&path.display().to_string()) && errors[0].contains("0x"));
        assert!(!ours.stderr.contains("panicked"));
        // The buffer that the cut runs into: perf (which maps the file and reads zeros up to the
        // page end, then dies of SIGBUS, losing buffered output) and ptlens agree on every packet
        // that lies wholly before the cut.
        let cut_buffer = ranges.iter().find(|(s, l)| *s <= cut && cut < s + l);
        let expect_headers = ranges.iter().filter(|(s, _)| *s <= cut).count();
        assert_eq!(ours.headers, expect_headers, "{}", ours.stdout.len());
        let safe = |line: &String| match cut_buffer {
            Some(&(start, _)) if ours.headers == expect_headers => {
                let off = usize::from_str_radix(&line[3..11], 16).unwrap();
                off + 16 <= cut - start
            }
            _ => true,
        };
        let last_start = ours
            .packets
            .iter()
            .rposition(|l| l.starts_with(".  00000000:"))
            .unwrap_or(0);
        let ours_safe: Vec<&String> = ours
            .packets
            .iter()
            .enumerate()
            .filter(|(i, l)| *i < last_start || safe(l))
            .map(|(_, l)| l)
            .collect();
        let n = ours_safe.len().min(perf.packets.len().saturating_sub(1));
        for (i, (a, b)) in ours_safe.iter().zip(&perf.packets).take(n).enumerate() {
            assert_eq!(*a, b, "cut {cut:#x}: packet line {i}");
        }
    }
}
