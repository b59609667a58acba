//! `ptlens dump FILE`: the records of a perf.data file and the packets of its AUXTRACE buffers.

use std::path::Path;

use super::dump::DumpArgs;

pub fn run(file: &Path, _args: &DumpArgs) -> anyhow::Result<()> {
    anyhow::bail!("{}: perf.data dump not implemented yet", file.display())
}
