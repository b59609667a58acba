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

    /// ptdump format: leave out each packet's offset.
    #[arg(long, requires = "pt")]
    pub no_offset: bool,

    /// ptdump format: print each packet's bytes.
    #[arg(long, requires = "pt")]
    pub raw: bool,

    /// ptdump format: print the reconstructed last IP on IP packets.
    #[arg(long, requires = "pt")]
    pub lastip: bool,

    /// ptdump format: print the execution mode on MODE.Exec packets.
    #[arg(long, requires = "pt")]
    pub exec_mode: bool,

    /// ptdump format: decode from the first byte instead of the first PSB.
    #[arg(long, requires = "pt")]
    pub no_sync: bool,
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
