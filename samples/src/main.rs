//! `ptlens-synth`: turns real executions into Intel PT perf.data recordings.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ptlens_synth::{bulk, check, encode, recording, sample, trace};

/// Runs a program under ptrace and writes the Intel PT recording (perf.data and a build-id cache) that
/// `perf record -e intel_pt//u` on Intel PT hardware would have made of it.
///
/// Decode the result with: perf --buildid-dir DIR script -i DIR/perf.data --itrace=i1i
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record PROGRAM ARGS... into DIR (perf.data, .build-id/, ground-truth.txt).
    Record {
        /// Output directory.
        #[arg(long, default_value = "ptlens-synth.out")]
        out: PathBuf,
        /// Record per-CPU (as `perf record -a`): follow every thread and child process, scheduled on N
        /// virtual CPUs.
        #[arg(long, value_name = "N")]
        per_cpu: Option<u32>,
        /// Per-CPU: instructions a task runs before it is preempted for a waiting one.
        #[arg(long, default_value_t = 20_000)]
        quantum: u64,
        /// Turn return compression off (perf's `noretcomp`).
        #[arg(long)]
        no_retcomp: bool,
        /// Bytes of trace between PSB packets.
        #[arg(long, default_value_t = 4096)]
        psb_period: usize,
        /// Most TNT outcomes per packet (6: short TNTs only; up to 47).
        #[arg(long, default_value_t = 47)]
        tnt_capacity: u8,
        /// Split each CPU's trace into AUXTRACE buffers of this many bytes (perf's AUX-area reads);
        /// 0: one buffer.
        #[arg(long, value_name = "BYTES", default_value_t = 0)]
        aux_split: usize,
        /// No MTC (and TMA) timing packets: TSC only.
        #[arg(long)]
        no_mtc: bool,
        /// Cycle-accurate mode: CYC packets (perf's `cyc`).
        #[arg(long)]
        cyc: bool,
        /// Make perf decode without timestamps (cap_user_time_zero 0).
        #[arg(long)]
        timeless: bool,
        /// Keep address-space randomisation (off by default, for reproducible recordings).
        #[arg(long)]
        aslr: bool,
        /// Give up after this many instructions.
        #[arg(long, default_value_t = 20_000_000)]
        max_insns: u64,
        /// Simulate a buffer overflow at instruction N (OVF and a FUP resync follow the lost packets);
        /// with --per-cpu, on CPU 0 at its Nth instruction.
        #[arg(long, value_name = "N")]
        overflow_at: Option<u64>,
        /// Instructions whose packets the simulated overflow loses.
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        overflow_lost: u64,
        /// Testing aid: invert the Nth TNT outcome so the trace no longer matches the program.
        #[arg(long, hide = true)]
        corrupt_tnt: Option<u64>,
        /// Trace only address ranges, as perf's `--filter`: 'filter 0xOFFSET/0xSIZE@BINARY' (a file
        /// offset and size within BINARY), up to 4 separated by commas. With --per-cpu, resolved in
        /// each process's own mappings.
        #[arg(long, value_name = "FILTER", value_parser = parse_filter)]
        filter: Option<recording::AddrFilter>,
        /// Check the recording with perf afterwards.
        #[arg(long)]
        check: bool,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        program: Vec<String>,
    },
    /// Rebuild, re-record and re-check samples: each DIR is a sample (holding prog.c) or a directory of
    /// samples.
    Regenerate {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Write a benchmark recording of any size into DIR: a seeded walk over BINARY's control-flow graph
    /// (perf.data, .build-id/, expected-counts.bin with the instruction and per-branch counts).
    Bulk {
        /// A large x86-64 ELF binary to walk, e.g. /usr/bin/perf.
        #[arg(long)]
        binary: PathBuf,
        /// Bytes of trace: a number, or with K, M or G (e.g. 1G).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// PRNG seed: the same seed and binary give the same recording.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Bytes per AUXTRACE buffer (K, M, G allowed).
        #[arg(long, value_parser = parse_size, default_value = "4M")]
        aux_buffer: u64,
        /// Cycle-accurate mode: CYC packets.
        #[arg(long)]
        cyc: bool,
        /// Check the result with perf afterwards (for small sizes: perf prints every instruction).
        #[arg(long)]
        check: bool,
    },
    /// Decode DIR with perf and compare with its ground truth.
    Check {
        /// A directory written by `record`.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Record {
            out,
            per_cpu,
            quantum,
            no_retcomp,
            psb_period,
            tnt_capacity,
            aux_split,
            no_mtc,
            cyc,
            timeless,
            aslr,
            max_insns,
            corrupt_tnt,
            overflow_at,
            overflow_lost,
            filter,
            check,
            program,
        } => {
            if per_cpu.is_some() {
                anyhow::ensure!(
                    !timeless,
                    "--timeless cannot go with --per-cpu: perf needs timestamps to follow the context switches"
                );
            }
            let opts = recording::Options {
                trace: trace::Options { aslr, max_insns },
                encode: encode::Config {
                    psb_period,
                    return_compression: !no_retcomp,
                    tnt_capacity,
                    mtc_freq: if no_mtc { None } else { Some(3) },
                    aux_split,
                    cyc,
                    flip_tnt: corrupt_tnt,
                    overflow: overflow_at.map(|at| encode::Overflow {
                        at,
                        lost: overflow_lost,
                    }),
                    ..encode::Config::default()
                },
                timeless,
                per_cpu,
                quantum,
                filter,
            };
            let (prog, args) = program.split_first().context("no program given")?;
            let rec = recording::record(prog, args, &out, &opts)
                .with_context(|| format!("recording {prog}"))?;
            eprintln!("{rec}");
            if check {
                run_check(&out)?;
            }
        }
        Command::Bulk {
            binary,
            size,
            out,
            seed,
            aux_buffer,
            cyc,
            check,
        } => {
            let mut opts = bulk::Options::new(&binary, size);
            opts.seed = seed;
            opts.aux_buffer = usize::try_from(aux_buffer).context("--aux-buffer too large")?;
            opts.encode.cyc = cyc;
            let started = std::time::Instant::now();
            let summary = bulk::generate(&out, &opts).with_context(|| {
                format!("generating a bulk recording over {}", binary.display())
            })?;
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{summary}\n{:.1} s, {:.1} MB/s of trace",
                secs,
                summary.trace_bytes as f64 / 1e6 / secs
            );
            if check {
                let verdict = bulk::check(&out).context("checking with perf")?;
                anyhow::ensure!(verdict.is_exact(), "perf disagrees: {verdict}");
                eprintln!("perf agrees: {verdict}");
            }
        }
        Command::Check { dir } => run_check(&dir)?,
        Command::Regenerate { dirs } => {
            let mut samples = Vec::new();
            for d in dirs {
                if d.join(sample::SOURCE).is_file() {
                    samples.push(d);
                } else {
                    samples.extend(sample::find(&d)?);
                }
            }
            anyhow::ensure!(
                !samples.is_empty(),
                "no samples (directories holding {}) found",
                sample::SOURCE
            );
            let work = std::env::temp_dir().join("ptlens-samples");
            for s in samples {
                let (rec, verdict) =
                    sample::regenerate(&s, &work, &s, &recording::Options::default())
                        .with_context(|| format!("regenerating {}", s.display()))?;
                eprintln!("{rec}\nperf agrees: {verdict}");
            }
        }
    }
    Ok(())
}

fn run_check(dir: &std::path::Path) -> anyhow::Result<()> {
    let verdict = check::check(dir).context("checking with perf")?;
    if !verdict.is_exact() {
        anyhow::bail!("perf disagrees: {verdict}");
    }
    eprintln!("perf agrees: {verdict}");
    Ok(())
}

fn parse_filter(text: &str) -> Result<recording::AddrFilter, String> {
    recording::AddrFilter::parse(text)
}

fn parse_size(text: &str) -> Result<u64, String> {
    bulk::parse_size(text)
        .ok_or_else(|| format!("not a size: {text} (bytes, or e.g. 512K, 4M, 1G)"))
}
