//! `ptlens dump --pt TRACE`: the packets of a raw Intel PT byte stream.

use std::path::Path;

use super::dump::DumpArgs;

pub fn run(trace: &Path, _args: &DumpArgs) -> anyhow::Result<()> {
    anyhow::bail!("{}: raw trace dump not implemented yet", trace.display())
}
