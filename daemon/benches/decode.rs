//! Decode throughput and memory on a large synthesised trace, side by side with perf:
//! `cargo bench -p ptlens --bench decode`.
//!
//! The recording is a seeded walk over a big binary's control-flow graph (`ptlens-synth bulk`),
//! made once and kept (`PTLENS_BENCH_DIR`, default `$TMPDIR/ptlens-bench-SIZE`). Settings:
//! `PTLENS_BENCH_SIZE` (trace bytes, default 64M), `PTLENS_BENCH_BINARY` (default
//! /usr/bin/perf). Before timing anything, the index `ptlens lines` builds is checked against the
//! walk's own counts (instructions, and executions and taken per branch site): a fast wrong
//! answer is not a result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ptlens::debuginfo::{BinaryCache, SearchPaths};
use ptlens::decode::{DecodeOptions, ParallelOptions};
use ptlens::perf::PerfData;
use ptlens::sideband::Model;
use ptlens_synth::bulk;

/// One measured run: wall seconds and peak RSS in KB (when /usr/bin/time is there).
struct Figures {
    wall: f64,
    rss_kb: Option<u64>,
}

/// Runs `program args…` with stdout discarded, under /usr/bin/time when it exists.
fn measure(program: &str, args: &[&str]) -> Option<Figures> {
    let time = Path::new("/usr/bin/time");
    let mut command = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-f", "PTLENS_BENCH_RSS %M", program]);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let output = command.output().ok()?;
    let wall = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("bench: {program} {args:?} failed: {stderr}");
        return None;
    }
    let rss_kb = stderr
        .lines()
        .find_map(|l| l.strip_prefix("PTLENS_BENCH_RSS "))
        .and_then(|v| v.trim().parse().ok());
    Some(Figures { wall, rss_kb })
}

/// Checks the parallel index of the recording in `dir` against the walk's expected counts.
fn check_counts(dir: &Path, expected: &bulk::Counts, jobs: usize) -> Result<(), String> {
    let data = PerfData::open(dir.join("perf.data")).map_err(|e| e.to_string())?;
    let recording = data.recording().map_err(|e| e.to_string())?;
    let model = Model::build(&recording);
    let binaries = BinaryCache::new(SearchPaths::new().with_buildid_dir(dir));
    let parallel = ParallelOptions {
        jobs,
        chunk_bytes: None,
    };
    let (index, stats) = ptlens::index::build(
        &recording,
        &model,
        &binaries,
        &DecodeOptions::default(),
        &parallel,
    )
    .map_err(|e| e.to_string())?;
    if stats.errors != 0 {
        return Err(format!("{} decoder errors", stats.errors));
    }
    let total = index.totals();
    if total.instructions != expected.instructions {
        return Err(format!(
            "instructions: ptlens {} walk {}",
            total.instructions, expected.instructions
        ));
    }
    // Per branch site: executions, by run-time address (one mapping per binary).
    let map = model
        .host()
        .processes()
        .iter()
        .flat_map(|p| p.address_space().maps())
        .find(|m| m.build_id.is_some())
        .ok_or("no mapping with a build-id")?;
    let by_offset: std::collections::HashMap<u64, u64> = index
        .counts
        .iter()
        .filter(|(a, _)| {
            index
                .paths
                .get(&a.binary)
                .is_some_and(|p| *p == map.filename)
        })
        .map(|(a, c)| (a.offset, c.branches))
        .collect();
    let mut wrong = 0;
    for &(address, executed, _) in &expected.sites {
        let got = by_offset.get(&map.file_offset(address)).copied();
        if got != Some(executed) {
            wrong += 1;
            if wrong <= 5 {
                eprintln!("bench: site {address:#x}: ptlens {got:?} executions, walk {executed}");
            }
        }
    }
    if wrong > 0 {
        return Err(format!(
            "{wrong} of {} branch sites differ",
            expected.sites.len()
        ));
    }
    Ok(())
}

fn main() {
    let size_text = std::env::var("PTLENS_BENCH_SIZE").unwrap_or_else(|_| "64M".to_owned());
    let Some(size) = bulk::parse_size(&size_text) else {
        eprintln!("bench: PTLENS_BENCH_SIZE={size_text}: not a size");
        std::process::exit(2);
    };
    let binary = std::env::var("PTLENS_BENCH_BINARY").unwrap_or_else(|_| "/usr/bin/perf".into());
    if !Path::new(&binary).is_file() {
        eprintln!("bench: skipped: {binary} not found (set PTLENS_BENCH_BINARY)");
        return;
    }
    let dir = std::env::var_os("PTLENS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ptlens-bench-{size_text}")));
    if !dir.join("perf.data").is_file() {
        eprintln!(
            "bench: writing a {size_text} recording into {}",
            dir.display()
        );
        if let Err(e) = bulk::generate(&dir, &bulk::Options::new(&binary, size)) {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
    let expected = match bulk::Counts::read(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Err(e) = check_counts(&dir, &expected, cores) {
        eprintln!("bench: ptlens's counts are wrong: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "bench: counts checked: {} instructions, {} branch sites",
        expected.instructions,
        expected.sites.len()
    );

    let perf_data = dir.join("perf.data");
    let trace_bytes: u64 = std::fs::metadata(&perf_data).map_or(0, |m| m.len());
    let (file, buildid) = (
        perf_data.to_string_lossy().into_owned(),
        dir.to_string_lossy().into_owned(),
    );
    let ptlens = env!("CARGO_BIN_EXE_ptlens");
    let jobs = cores.to_string();
    let mut runs: Vec<(String, &str, Vec<&str>)> = vec![
        (
            "ptlens branches".into(),
            ptlens,
            vec!["branches", "--buildid-dir", &buildid, &file],
        ),
        (
            "ptlens lines -j1".into(),
            ptlens,
            vec!["lines", "-j", "1", "--buildid-dir", &buildid, &file],
        ),
        (
            format!("ptlens lines -j{cores}"),
            ptlens,
            vec!["lines", "-j", &jobs, "--buildid-dir", &buildid, &file],
        ),
    ];
    let perf_available = Command::new("perf")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if perf_available {
        runs.push((
            "perf script --itrace=b".into(),
            "perf",
            vec![
                "--buildid-dir",
                &buildid,
                "script",
                "-i",
                &file,
                "--itrace=b",
                "-F",
                "ip,addr,flags,tid,cpu,time",
            ],
        ));
    } else {
        eprintln!("bench: perf not found: no perf column");
    }

    println!(
        "{} bytes of trace over {binary}, {} instructions, {} cores",
        trace_bytes, expected.instructions, cores
    );
    println!(
        "{:<26} {:>9} {:>9} {:>12} {:>10}",
        "", "wall s", "MB/s", "M insn/s", "RSS MB"
    );
    for (name, program, args) in &runs {
        let Some(f) = measure(program, args) else {
            continue;
        };
        println!(
            "{:<26} {:>9.2} {:>9.2} {:>12.2} {:>10}",
            name,
            f.wall,
            trace_bytes as f64 / f.wall / 1e6,
            expected.instructions as f64 / f.wall / 1e6,
            f.rss_kb
                .map_or("-".to_owned(), |kb| (kb / 1024).to_string())
        );
    }
}
