//! `ptlens lines FILE`: per source line counts of a recording.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ptlens::debuginfo::{BinaryCache, SearchPaths};
use ptlens::decode::{is_kernel_map, KERNEL_NAME};
use ptlens::decode::{DecodeOptions, DecodeStats, ParallelOptions};
use ptlens::index::{self, aggregate_with_kernel, BinaryReport, KernelSource, LineReport, Naming};
use ptlens::perf::PerfData;
use ptlens::sideband::Model;
use serde::Serialize;

/// Print per source line counts of an Intel PT recording: executions (times control entered
/// the line), instructions, branches, taken branches (perf's branch samples from the line) and
/// conditional branches not taken.
///
/// `--format json` prints one object with a stable schema, documented in the README
/// ("ptlens lines --format json").
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct LinesArgs {
    /// The perf.data file.
    pub file: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(flatten)]
    pub search: SearchArgs,
}

/// Where binaries are looked for, as perf spells it.
#[derive(clap::Args, Clone)]
pub struct SearchArgs {
    #[command(flatten)]
    pub binaries: super::search::BinarySearchArgs,

    /// How source files are named: `dwarf` as the line table says; `perf` as
    /// `perf script -F srcline` prints them (binutils names code of a DWARF 5 unit's file 1
    /// by the unit's primary file).
    #[arg(long, value_enum, default_value_t = Srcline::Dwarf)]
    pub srcline: Srcline,

    /// Decode on N threads (PSB segments in parallel; the counts are the same for any N).
    /// Default: one per core.
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Srcline {
    Dwarf,
    Perf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table: file:line and the counts.
    Text,
    /// One JSON object (schema version 1).
    Json,
}

/// The schema of `--format json`.
#[derive(Serialize)]
struct JsonReport<'r> {
    schema: u32,
    recording: String,
    decoder_errors: u64,
    #[serde(flatten)]
    report: &'r LineReport,
}

impl SearchArgs {
    pub fn paths(&self, recording: &Path) -> SearchPaths {
        self.binaries.paths(recording)
    }
}

/// Decodes `file` into an index and aggregates it to lines.
pub fn line_report(file: &Path, search: &SearchArgs) -> anyhow::Result<(LineReport, DecodeStats)> {
    let data = PerfData::open(file)?;
    let recording = data
        .recording()
        .with_context(|| format!("reading {}", file.display()))?;
    let model = Model::build(&recording);
    let binaries = BinaryCache::new(search.paths(file));
    let options = DecodeOptions {
        progress: progress::callback(),
    };
    let mut parallel = ParallelOptions::default();
    if let Some(jobs) = search.jobs {
        parallel.jobs = jobs.max(1);
    }
    let (index, stats) = index::build(&recording, &model, &binaries, &options, &parallel)
        .with_context(|| format!("decoding {}", file.display()))?;
    progress::finish();
    let naming = match search.srcline {
        Srcline::Dwarf => Naming::Dwarf,
        Srcline::Perf => Naming::Perf,
    };
    // The kernel's maps say how its run-time addresses relocate into a vmlinux or kallsyms.
    let kernel_maps: Vec<_> = model
        .host()
        .kernel_space()
        .maps()
        .filter(|m| is_kernel_map(m))
        .cloned()
        .collect();
    let mut report = aggregate_with_kernel(&index, &binaries, naming, &kernel_maps);
    // Code in a binary that was never found could not be decoded at all, so the index has
    // no counts naming it: the decoder's list says which.
    for (name, reads) in &stats.missing_binaries {
        if !report.binaries.iter().any(|b| &b.path == name) {
            report.binaries.push(BinaryReport {
                path: name.clone(),
                build_id: None,
                found: false,
                detail: format!("not found; {reads} code reads failed while decoding"),
                kernel_source: (name == KERNEL_NAME).then_some(KernelSource::Missing),
            });
        }
    }
    Ok((report, stats))
}

/// Names what could not be resolved, on stderr.
pub fn warn_unresolved(report: &LineReport) {
    for b in report.binaries.iter().filter(|b| !b.found) {
        eprintln!("ptlens: binary not found: {} ({})", b.path, b.detail);
    }
    // Kernel code named through kallsyms has functions but no lines: say why.
    for b in &report.binaries {
        if b.kernel_source == Some(KernelSource::Kallsyms) {
            eprintln!(
                "ptlens: {}: functions from kallsyms, no lines ({}; --vmlinux gives lines)",
                b.path, b.detail
            );
        }
    }
    if report.binaries.iter().any(|b| !b.found) {
        eprintln!(
            "ptlens: code in binaries not found could not be decoded (see --buildid-dir, --symfs)"
        );
    }
    let u = &report.unresolved;
    for (what, c) in [
        ("in no mapping", &u.no_mapping),
        ("in binaries not found", &u.binary_not_found),
        ("without a line", &u.no_line),
    ] {
        if c.instructions + c.taken > 0 {
            eprintln!(
                "ptlens: {} instructions and {} branch samples {what}",
                c.instructions, c.taken
            );
        }
    }
}

impl LinesArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let (report, stats) = line_report(&self.file, &self.search)?;
        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        match self.format {
            Format::Json => {
                let json = JsonReport {
                    schema: 1,
                    recording: self.file.display().to_string(),
                    decoder_errors: stats.errors,
                    report: &report,
                };
                serde_json::to_writer_pretty(&mut out, &json)?;
                writeln!(out)?;
            }
            Format::Text => {
                writeln!(
                    out,
                    "{:>10} {:>10} {:>8} {:>8} {:>8}  line",
                    "executions", "insns", "branches", "taken", "not-tkn"
                )?;
                for l in &report.lines {
                    writeln!(
                        out,
                        "{:>10} {:>10} {:>8} {:>8} {:>8}  {}:{}",
                        l.executions,
                        l.instructions,
                        l.branches,
                        l.taken,
                        l.not_taken,
                        l.file,
                        l.line
                    )?;
                }
                warn_unresolved(&report);
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// A progress bar for long decodes, on a terminal only (piped output stays quiet).
mod progress {
    use std::io::IsTerminal;
    use std::sync::{Mutex, PoisonError};

    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

    // The decoder takes a plain `fn`, so the bar lives in a static.
    static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

    pub fn callback() -> Option<fn(u64, u64)> {
        std::io::stderr()
            .is_terminal()
            .then_some(update as fn(u64, u64))
    }

    fn update(done: u64, total: u64) {
        let mut bar = BAR.lock().unwrap_or_else(PoisonError::into_inner);
        let bar = bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("decoding {bar:40} {bytes}/{total_bytes} {eta}")
            {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(done);
    }

    pub fn finish() {
        if let Some(bar) = BAR.lock().unwrap_or_else(PoisonError::into_inner).take() {
            bar.finish_and_clear();
        }
    }
}
