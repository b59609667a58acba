//! `ptlens dump`: records of a perf.data file, or packets of a raw trace.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DumpArgs {
    /// The perf.data file (or directory) to dump.
    #[arg(required_unless_present = "pt", conflicts_with = "pt")]
    pub file: Option<PathBuf>,

    /// A raw Intel PT byte stream to dump instead of a perf.data file.
    #[arg(long, value_name = "TRACE")]
    pub pt: Option<PathBuf>,

    /// How to print packets: as `perf script -D` does, or as libipt's ptdump does (with --pt).
    #[arg(long, value_enum, default_value_t = PacketFormat::Perf)]
    pub format: PacketFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PacketFormat {
    Perf,
    Ptdump,
}

impl DumpArgs {
    pub fn run(self) -> anyhow::Result<()> {
        match (&self.pt, &self.file) {
            (Some(trace), _) => super::dump_pt::run(trace, &self),
            (None, Some(file)) => super::dump_file::run(file, &self),
            (None, None) => unreachable!("clap requires FILE or --pt"),
        }
    }
}
