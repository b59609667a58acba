//! Subcommands of the `ptlens` binary. Each one is a thin layer over the library.

mod annotate;
mod branches;
mod decode;
mod dump;
mod dump_file;
mod dump_pt;
mod lines;
mod search;

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
