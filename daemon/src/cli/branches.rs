//! `ptlens branches FILE`: every branch of a recording, with perf's semantics.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use ptlens::debuginfo::BinaryCache;
use ptlens::decode::{self, BranchEvent, BranchKind, DecodeOptions};
use ptlens::perf::PerfData;
use ptlens::sideband::Model;

/// Print every branch of an Intel PT recording in trace order, as
/// `perf script --itrace=be -F tid,cpu,time,flags,ip,addr` shows them.
///
/// Branches are taken branches (`jcc` only when taken), calls, returns, jumps, trace starts
/// (`tr strt`, from 0) and ends (`tr end`, to 0; `tr end  syscall`, `tr end  async`),
/// interrupts (`hw int`) and decoder errors (`--itrace=e`), in perf's order.
///
/// JSON lines (`--format jsonl`), one object per event, with stable field names:
///   branch: {"type":"branch","time":NS,"cpu":N,"pid":N,"tid":N,"machine_pid":N,"vcpu":N,
///            "from":"0xHEX","to":"0xHEX","flags":"jcc","flag_bits":N}
///   error:  {"type":"error","time":NS,"cpu":N,"pid":N,"tid":N,"machine_pid":N,"vcpu":N,
///            "code":N,"message":"...","ip":"0xHEX","queue":N,"offset":N}
/// `time` is perf time in ns (0 when timeless), `cpu` is -1 for per-thread recordings,
/// `machine_pid` 0 for the host, `vcpu` -1 outside guests; `flags` is perf's name of the
/// flags (`flag_bits` its PERF_IP_FLAG_* bits); `code` and `message` are perf's.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct BranchesArgs {
    /// The perf.data file.
    pub file: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(flatten)]
    pub search: super::search::BinarySearchArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// perf script's layout: `tid [cpu] time: flags from => to`.
    Text,
    /// One JSON object per line.
    Jsonl,
}

impl BranchesArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let data = PerfData::open(&self.file)?;
        let recording = data
            .recording()
            .with_context(|| format!("reading {}", self.file.display()))?;
        let model = Model::build(&recording);
        let binaries = BinaryCache::new(self.search.paths(&self.file));
        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        let mut failed: Option<io::Error> = None;
        let format = self.format;
        let mut sink = |event: &BranchEvent| {
            if failed.is_some() {
                return;
            }
            let result = match format {
                Format::Text => write_text(&mut out, event),
                Format::Jsonl => write_jsonl(&mut out, event),
            };
            if let Err(e) = result {
                failed = Some(e);
            }
        };
        let stats = decode::decode(
            &recording,
            &model,
            &binaries,
            &DecodeOptions::default(),
            &mut sink,
        )
        .with_context(|| format!("decoding {}", self.file.display()))?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        out.flush()?;
        for (name, reads) in &stats.missing_binaries {
            eprintln!("ptlens: binary not found: {name} ({reads} code reads failed)");
        }
        Ok(())
    }
}

fn write_text(out: &mut dyn Write, event: &BranchEvent) -> io::Result<()> {
    let o = &event.origin;
    let time = format!("{}.{:09}", o.time / 1_000_000_000, o.time % 1_000_000_000);
    match &event.kind {
        BranchKind::Branch { from, to, flags } => writeln!(
            out,
            "{:>7} [{:03}] {:>16}: {:<22} {:>16x} => {:>16x}",
            o.tid,
            o.cpu,
            time,
            flags.perf_name(),
            from,
            to
        ),
        BranchKind::Error(e) => writeln!(
            out,
            " instruction trace error type 1 time {} cpu {} pid {} tid {} ip {:#x} code {}: {}",
            time, o.cpu, o.pid, o.tid, e.ip, e.code, e.message
        ),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_jsonl(out: &mut dyn Write, event: &BranchEvent) -> io::Result<()> {
    let o = &event.origin;
    let common = format!(
        "\"time\":{},\"cpu\":{},\"pid\":{},\"tid\":{},\"machine_pid\":{},\"vcpu\":{}",
        o.time, o.cpu, o.pid, o.tid, o.machine_pid, o.vcpu
    );
    match &event.kind {
        BranchKind::Branch { from, to, flags } => writeln!(
            out,
            "{{\"type\":\"branch\",{common},\"from\":\"{from:#x}\",\"to\":\"{to:#x}\",\"flags\":{},\"flag_bits\":{}}}",
            json_string(&flags.perf_name()),
            flags.bits()
        ),
        BranchKind::Error(e) => writeln!(
            out,
            "{{\"type\":\"error\",{common},\"code\":{},\"message\":{},\"ip\":\"{:#x}\",\"queue\":{},\"offset\":{}}}",
            e.code,
            json_string(e.message),
            e.ip,
            e.queue,
            e.offset
        ),
    }
}
