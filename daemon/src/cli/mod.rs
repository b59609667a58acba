//! Subcommands of the `ptlens` binary. Each one is a thin layer over the library.

mod annotate;
mod branches;
mod decode;
mod dump;
mod dump_file;
mod dump_pt;
mod lines;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "ptlens",
    version,
    about = "Intel PT recordings from Linux perf, decoded and indexed"
)]
pub enum Command {
    /// Print a perf.data file's records and its Intel PT packets, as `perf script -D` does;
    /// or, with --pt, the packets of a raw Intel PT byte stream.
    Dump(dump::DumpArgs),
    /// Print the instruction flow of a raw Intel PT trace over raw code images, as libipt's
    /// `ptxed --no-inst` prints it.
    Decode(decode::DecodeArgs),
    /// Print every branch of a recording in trace order, as `perf script --itrace=be` shows them.
    Branches(branches::BranchesArgs),
    /// Print per source line counts (executions, instructions, branches, taken, not taken).
    Lines(lines::LinesArgs),
    /// Print source files with counts in a margin, hottest first, as `perf annotate` does.
    Annotate(annotate::AnnotateArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Dump(args) => args.run(),
            Command::Decode(args) => args.run(),
            Command::Branches(args) => args.run(),
            Command::Lines(args) => args.run(),
            Command::Annotate(args) => args.run(),
        }
    }
}

/// Adds the kernel's sources to `search`: `--vmlinux`, `--kallsyms`, and the recording's own
/// `kcore_dir` when `perf record --kcore` wrote one (FILE is then a directory).
fn kernel_paths(
    mut search: ptlens::debuginfo::SearchPaths,
    file: &std::path::Path,
    vmlinux: &Option<std::path::PathBuf>,
    kallsyms: &Option<std::path::PathBuf>,
) -> ptlens::debuginfo::SearchPaths {
    if let Some(v) = vmlinux {
        search = search.with_vmlinux(v);
    }
    if let Some(k) = kallsyms {
        search = search.with_kallsyms(k);
    }
    let kcore_dir = file.join("kcore_dir");
    if kcore_dir.is_dir() {
        search = search.with_kcore_dir(kcore_dir);
    }
    search
}
