//! Real perf as the judge: recordings made here must decode, under `perf script`, into exactly the
//! instruction flow ptrace observed, with no decoder errors; and a wrong trace must be caught.
//!
//! Tests that need `perf` (and `gcc`) print why they skip when it is missing, unless
//! `PTLENS_REQUIRE_PERF=1`, which makes the skip a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use ptlens_synth::{check, encode, recording, sample, sched, trace};
use support::{have, scratch, tools_or_skip};

mod support;

fn samples_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn committed_samples_decode_to_their_ground_truth() {
    if !tools_or_skip("committed_samples_decode_to_their_ground_truth", &["perf"]) {
        return;
    }
    let samples = sample::find(&samples_root()).unwrap();
    assert!(!samples.is_empty(), "no committed samples found");
    for dir in samples {
        let verdict = check::check(&dir).unwrap();
        assert!(verdict.is_exact(), "{}: {verdict}", dir.display());
        assert!(verdict.truth > 10_000, "{}: {verdict}", dir.display());
    }
}

#[test]
fn c_program_regenerated_from_scratch_decodes_exactly() {
    if !tools_or_skip(
        "c_program_regenerated_from_scratch_decodes_exactly",
        &["perf", "gcc"],
    ) {
        return;
    }
    let work = scratch("regen-work");
    let out = scratch("regen-out");
    let src = samples_root().join("single-thread");
    // regenerate() itself fails unless perf's flow equals the ground truth with no errors.
    let (rec, verdict) =
        sample::regenerate(&src, &work, &out, &recording::Options::default()).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    let s = rec.stats;
    // The program exercises every packet kind the encoder writes.
    assert!(s.psbs >= 2, "{s:?}");
    assert!(s.tnt_short > 0 && s.tnt_long > 0, "{s:?}");
    assert!(s.tips > 0 && s.compressed_returns > 0, "{s:?}");
    assert!(s.pge > 1 && s.pgd > 1, "{s:?}");
    assert_eq!(s.fups, 1, "one fault caught by a handler: {s:?}");
    // The binary is gone: perf found it in the build-id cache.
    assert!(!work.join("single-thread").exists());
    assert!(rec.binaries.iter().any(|(p, _)| p == "[vdso]"));
    // Its own reference output names the program's functions.
    let be = sample::read_maybe_zst(&out.join(sample::REFERENCE)).unwrap();
    let be = String::from_utf8_lossy(&be);
    for f in ["main", "fib", "cmp", "qsort", "on_segv"] {
        assert!(be.contains(f), "perf --itrace=be output lacks {f}");
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn overflow_sample_regenerated_from_scratch_has_exactly_its_overflow() {
    if !tools_or_skip(
        "overflow_sample_regenerated_from_scratch_has_exactly_its_overflow",
        &["perf", "gcc"],
    ) {
        return;
    }
    let work = scratch("ovf-work");
    let out = scratch("ovf-out");
    let src = samples_root().join("overflow");
    let (rec, verdict) =
        sample::regenerate(&src, &work, &out, &recording::Options::default()).unwrap();
    assert_eq!(rec.stats.overflows, 1);
    assert!(rec.lost.len() >= 20_000, "{}", rec.lost.len());
    // Exactly the one overflow error, and the flow on both sides of it equals the ground truth.
    assert!(verdict.is_exact(), "{verdict}");
    assert_eq!(verdict.expected_errors, 1, "{verdict}");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn corrupted_tnt_makes_the_check_fail() {
    if !tools_or_skip("corrupted_tnt_makes_the_check_fail", &["perf", "gcc"]) {
        return;
    }
    let work = scratch("corrupt");
    let bin = work.join("prog");
    sample::compile(&samples_root().join("single-thread/prog.c"), &bin).unwrap();
    let out = work.join("rec");
    let opts = recording::Options {
        encode: encode::Config {
            flip_tnt: Some(20_000),
            ..encode::Config::default()
        },
        ..recording::Options::default()
    };
    recording::record(bin.to_str().unwrap(), &[], &out, &opts).unwrap();
    let verdict = check::check(&out).unwrap();
    assert!(
        !verdict.is_exact(),
        "a flipped TNT bit went unnoticed: {verdict}"
    );
    assert!(verdict.first_difference.is_some(), "{verdict}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn system_tool_ls_decodes_exactly() {
    if !tools_or_skip("system_tool_ls_decodes_exactly", &["perf", "ls"]) {
        return;
    }
    let work = scratch("ls");
    std::fs::write(work.join("a-file"), "x").unwrap();
    let out = work.join("rec");
    let rec = recording::record(
        "ls",
        &[work.to_str().unwrap().to_string()],
        &out,
        &recording::Options::default(),
    )
    .unwrap();
    assert!(rec.binaries.len() >= 4, "{:?}", rec.binaries);
    let verdict = check::check(&out).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert!(verdict.truth > 100_000, "{verdict}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn timeless_and_no_return_compression_decode_exactly() {
    if !tools_or_skip(
        "timeless_and_no_return_compression_decode_exactly",
        &["perf", "gcc"],
    ) {
        return;
    }
    let work = scratch("timeless");
    let bin = work.join("prog");
    sample::compile(&samples_root().join("single-thread/prog.c"), &bin).unwrap();
    let out = work.join("rec");
    let opts = recording::Options {
        timeless: true,
        encode: encode::Config {
            return_compression: false,
            tnt_capacity: 6,
            psb_period: 1024,
            ..encode::Config::default()
        },
        ..recording::Options::default()
    };
    let rec = recording::record(bin.to_str().unwrap(), &[], &out, &opts).unwrap();
    assert_eq!(rec.stats.compressed_returns, 0);
    assert_eq!(rec.stats.tnt_long, 0);
    let verdict = check::check(&out).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn bad_programs_give_clear_errors() {
    let work = scratch("bad");
    let missing = trace::run("/nonexistent/program", &[], &trace::Options::default()).unwrap_err();
    assert!(
        missing.to_string().contains("program not found"),
        "{missing}"
    );

    let script = work.join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    assert!(chmod.success());
    let not_elf =
        trace::run(script.to_str().unwrap(), &[], &trace::Options::default()).unwrap_err();
    assert!(not_elf.to_string().contains("not an ELF"), "{not_elf}");

    if !have("gcc") {
        eprintln!("bad_programs_give_clear_errors: crash case skipped: gcc not on PATH");
        return;
    }
    let src = work.join("crash.c");
    std::fs::write(
        &src,
        "int main(int c, char **v) { (void)v; return *(volatile int *)(long)(c - 1); }\n",
    )
    .unwrap();
    let bin = work.join("crash");
    sample::compile(&src, &bin).unwrap();
    let crashed = trace::run(bin.to_str().unwrap(), &[], &trace::Options::default()).unwrap_err();
    assert!(
        matches!(crashed, trace::TraceError::Crashed { signal: 11, .. }),
        "{crashed}"
    );
    assert!(
        crashed.to_string().contains("killed by signal 11"),
        "{crashed}"
    );

    // The command line says the same, and fails.
    let cli = Command::new(env!("CARGO_BIN_EXE_ptlens-synth"))
        .args(["record", "--out"])
        .arg(work.join("cli"))
        .arg("--")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains("killed by signal 11"), "{stderr}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn threads_regenerated_per_cpu_decode_thread_by_thread() {
    if !tools_or_skip(
        "threads_regenerated_per_cpu_decode_thread_by_thread",
        &["perf", "gcc"],
    ) {
        return;
    }
    let work = scratch("threads-work");
    let out = scratch("threads-out");
    let src = samples_root().join("threads");
    // regenerate() fails unless every thread's flow equals its ground truth with no decoder errors.
    let (rec, verdict) =
        sample::regenerate(&src, &work, &out, &recording::Options::default()).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert_eq!(rec.cpus, Some(2), "{rec}");
    assert_eq!(rec.tasks, 4, "main and three workers: {rec}");
    assert!(rec.switches >= 8, "{rec}");
    assert!(rec.stats.fups >= 2, "preemptions: {rec}");
    // synth-options splits each CPU's trace into several AUXTRACE buffers.
    assert!(rec.buffers >= 4, "{rec}");
    // perf saw four threads, each on the CPUs the scheduler put it on.
    let tids = check::perf_script(&out, &["--itrace=i1i", "-F", "tid,cpu"]).unwrap();
    let mut seen: Vec<&str> = tids.lines().map(str::trim).collect();
    seen.sort_unstable();
    seen.dedup();
    let threads: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let cpus: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(threads.len(), 4, "{seen:?}");
    assert_eq!(cpus.len(), 2, "{seen:?}");
    // Every switch is in perf's sideband, with the preempted ones flagged.
    let switches = check::perf_script(&out, &["--itrace=e", "--show-switch-events"]).unwrap();
    assert!(switches.contains("OUT preempt"), "{switches}");
    // Timing from TSC, TMA and MTC: no errors (checked above), and on each CPU times never go back
    // and do advance.
    assert!(rec.stats.mtcs > 100, "{rec}");
    let times = check::perf_script(&out, &["--itrace=i1i", "-F", "cpu,time", "--ns"]).unwrap();
    let mut last: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for line in times.lines() {
        let mut f = line.split_whitespace();
        let (Some(cpu), Some(t)) = (f.next(), f.next()) else {
            continue;
        };
        let t: f64 = t.trim_end_matches(':').parse().unwrap();
        let e = last.entry(cpu.to_string()).or_insert((t, 0));
        assert!(t >= e.0, "time goes back on {cpu}: {t} after {}", e.0);
        if t > e.0 {
            e.1 += 1;
        }
        e.0 = t;
    }
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(last.values().all(|&(_, steps)| steps > 50), "{last:?}");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn shell_fork_exec_cat_per_cpu_decodes_exactly_also_with_an_overflow() {
    if !tools_or_skip(
        "shell_fork_exec_cat_per_cpu_decodes_exactly_also_with_an_overflow",
        &["perf", "sh", "cat"],
    ) {
        return;
    }
    let work = scratch("sh-cat");
    let file = work.join("in.txt");
    std::fs::write(&file, "ptlens\n").unwrap();
    let out = work.join("rec");
    let opts = recording::Options {
        per_cpu: Some(2),
        encode: encode::Config {
            aux_split: 4096,
            ..encode::Config::default()
        },
        ..recording::Options::default()
    };
    // dash forks for `cat`, which execs; the shell waits for it, then runs its builtin `echo`.
    let script = format!("cat {}; echo done", file.display());
    let sched_opts = sched::Options {
        cpus: 2,
        ..sched::Options::default()
    };
    let timeline = sched::run("/bin/sh", &["-c".into(), script], &sched_opts).unwrap();
    let rec = recording::write_per_cpu(timeline.clone(), &out, &opts).unwrap();
    assert_eq!(rec.tasks, 2, "the shell and its child: {rec}");
    assert!(rec.buffers >= 8, "AUX buffers of about 4 KiB: {rec}");
    assert!(
        rec.binaries.iter().any(|(p, _)| p.ends_with("/cat")),
        "{:?}",
        rec.binaries
    );
    let verdict = check::check(&out).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    // perf saw the exec: the child's samples are named after cat.
    let comms = check::perf_script(&out, &["--itrace=i1i", "-F", "comm,tid"]).unwrap();
    assert!(
        comms.lines().any(|l| l.trim_start().starts_with("cat ")),
        "no cat samples"
    );
    assert!(
        comms.lines().any(|l| l.trim_start().starts_with("sh ")),
        "no sh samples"
    );

    // The same run with a simulated overflow on CPU 0: exactly one overflow error, and every thread's
    // flow equal to the ground truth less the lost instructions.
    let ovf = work.join("rec-overflow");
    let opts = recording::Options {
        encode: encode::Config {
            overflow: Some(encode::Overflow {
                at: 60_000,
                lost: 5_000,
            }),
            ..opts.encode
        },
        ..opts
    };
    let rec = recording::write_per_cpu(timeline, &ovf, &opts).unwrap();
    assert_eq!(rec.stats.overflows, 1, "{rec}");
    // The loss ends early at a kernel entry, wherever the schedule puts one.
    assert!(!rec.lost.is_empty(), "{rec}");
    let verdict = check::check(&ovf).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert_eq!(verdict.expected_errors, 1, "{verdict}");
    let _ = std::fs::remove_dir_all(&work);
}
