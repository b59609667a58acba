//! `ptlens dump --pt TRACE`: the packets of a raw Intel PT byte stream.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use ptlens::pt::dump::{write_perf_dump, write_ptdump, PtdumpOptions};

use super::dump::{DumpArgs, PacketFormat};

pub fn run(trace: &Path, args: &DumpArgs) -> anyhow::Result<()> {
    let file = File::open(trace).with_context(|| format!("{}: cannot open", trace.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("{}: cannot read metadata", trace.display()))?
        .len();
    // mmap refuses empty files; an empty trace simply has no packets.
    let map = if len == 0 {
        None
    } else {
        // SAFETY: the map is only read, and lives as long as `data` below. If another process
        // truncates the file meanwhile we may get SIGBUS, the usual price of mapping a file;
        // in exchange a multi-gigabyte trace is never copied.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", trace.display()))?;
        Some(map)
    };
    let data: &[u8] = map.as_deref().unwrap_or(&[]);

    let stdout = io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    match args.format {
        PacketFormat::Perf => write_perf_dump(&mut out, data)?,
        PacketFormat::Ptdump => {
            let options = PtdumpOptions {
                show_offset: !args.no_offset,
                raw: args.raw,
                last_ip: args.lastip,
                exec_mode: args.exec_mode,
                no_sync: args.no_sync,
                ..PtdumpOptions::default()
            };
            write_ptdump(&mut out, data, &options)?;
        }
    }
    out.flush()?;
    Ok(())
}
