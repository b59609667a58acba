//! `ptlens decode --pt TRACE --raw FILE:ADDR`: the instruction flow of a raw trace over raw code
//! images, printed as libipt's `ptxed --no-inst` prints it.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use ptlens::pt::flow::ptxed::{self, PtxedOptions};
use ptlens::pt::flow::{AddrFilter, AddrRange, AddrRangeKind, Errata, RawImage};

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// The raw Intel PT byte stream.
    #[arg(long, value_name = "TRACE")]
    pub pt: PathBuf,

    /// Code to load: FILE[:OFFSET[-SIZE]]:ADDRESS, ADDRESS in hex (0x optional). Later images
    /// override earlier ones where they overlap.
    #[arg(long, value_name = "FILE:ADDR", required = true)]
    pub raw: Vec<String>,

    /// The CPU as FAMILY/MODEL[/STEPPING], decimal: selects the errata workarounds it needs.
    #[arg(long, value_name = "F/M[/S]")]
    pub cpu: Option<String>,

    /// Address range 0's configuration: 0 unused, 1 filter, 2 stop (IA32_RTIT_CTL.ADDR0_CFG).
    #[arg(long = "filter:addr0_cfg", default_value_t = 0)]
    pub addr0_cfg: u8,
    /// Address range 0's first address (hex).
    #[arg(long = "filter:addr0_a", value_parser = parse_hex, default_value = "0")]
    pub addr0_a: u64,
    /// Address range 0's last address (hex).
    #[arg(long = "filter:addr0_b", value_parser = parse_hex, default_value = "0")]
    pub addr0_b: u64,
    #[arg(long = "filter:addr1_cfg", default_value_t = 0, hide = true)]
    pub addr1_cfg: u8,
    #[arg(long = "filter:addr1_a", value_parser = parse_hex, default_value = "0", hide = true)]
    pub addr1_a: u64,
    #[arg(long = "filter:addr1_b", value_parser = parse_hex, default_value = "0", hide = true)]
    pub addr1_b: u64,
    #[arg(long = "filter:addr2_cfg", default_value_t = 0, hide = true)]
    pub addr2_cfg: u8,
    #[arg(long = "filter:addr2_a", value_parser = parse_hex, default_value = "0", hide = true)]
    pub addr2_a: u64,
    #[arg(long = "filter:addr2_b", value_parser = parse_hex, default_value = "0", hide = true)]
    pub addr2_b: u64,
    #[arg(long = "filter:addr3_cfg", default_value_t = 0, hide = true)]
    pub addr3_cfg: u8,
    #[arg(long = "filter:addr3_a", value_parser = parse_hex, default_value = "0", hide = true)]
    pub addr3_a: u64,
    #[arg(long = "filter:addr3_b", value_parser = parse_hex, default_value = "0", hide = true)]
    pub addr3_b: u64,

    /// Print the IPs events bind to.
    #[arg(long = "event:ip")]
    pub event_ip: bool,

    /// Print each event's TSC.
    #[arg(long = "event:time")]
    pub event_time: bool,

    /// Accepted for ptxed compatibility: tick events are not generated.
    #[arg(long = "event:tick")]
    pub event_tick: bool,

    /// Continue after an error where the trace allows, instead of at the next PSB.
    #[arg(long = "resync-on-error")]
    pub resync_on_error: bool,

    /// Accepted for ptxed compatibility (instructions are always checked against the trace).
    #[arg(long)]
    pub check: bool,

    /// Accepted for ptxed compatibility (addresses only are printed).
    #[arg(long = "no-inst")]
    pub no_inst: bool,

    /// Print nothing but errors and statistics.
    #[arg(long)]
    pub quiet: bool,

    /// Print statistics at the end (instructions).
    #[arg(long)]
    pub stat: bool,

    /// Print the number of instructions at the end.
    #[arg(long = "stat:insn")]
    pub stat_insn: bool,

    /// Print the number of blocks at the end.
    #[arg(long = "stat:blocks")]
    pub stat_blocks: bool,

    /// Print a line at the start of each block.
    #[arg(long = "block:show-blocks")]
    pub show_blocks: bool,

    /// End blocks after near calls.
    #[arg(long = "block:end-on-call")]
    pub end_on_call: bool,

    /// End blocks after near jumps.
    #[arg(long = "block:end-on-jump")]
    pub end_on_jump: bool,

    /// MTC frequency (IA32_RTIT_CTL.MTCFreq), for time estimates.
    #[arg(long = "mtc-freq", default_value_t = 0)]
    pub mtc_freq: u8,
}

fn parse_hex(text: &str) -> anyhow::Result<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16).with_context(|| format!("bad hex number {text:?}"))
}

/// Loads `FILE[:OFFSET[-SIZE]]:ADDRESS` into `image`.
fn load_raw(image: &mut RawImage, spec: &str) -> anyhow::Result<()> {
    let Some((file, address)) = spec.rsplit_once(':') else {
        bail!("--raw {spec}: expected FILE:ADDRESS");
    };
    let address = parse_hex(address)?;
    // A range in the file may follow the name: FILE:OFFSET[-SIZE].
    let (path, range) = match file.rsplit_once(':') {
        Some((path, range))
            if !range.is_empty() && parse_hex(range.split('-').next().unwrap_or("")).is_ok() =>
        {
            (path, Some(range))
        }
        _ => (file, None),
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let bytes = match range {
        None => bytes,
        Some(range) => {
            let (offset, size) = match range.split_once('-') {
                Some((offset, size)) => (parse_hex(offset)?, Some(parse_hex(size)?)),
                None => (parse_hex(range)?, None),
            };
            let start = usize::try_from(offset)?.min(bytes.len());
            let end = match size {
                Some(size) => start
                    .saturating_add(usize::try_from(size)?)
                    .min(bytes.len()),
                None => bytes.len(),
            };
            bytes[start..end].to_vec()
        }
    };
    image.add(address, bytes);
    Ok(())
}

/// `--cpu F/M[/S]` to its errata; `Ok(None)` for a CPU the table does not know.
fn cpu_errata(spec: &str) -> anyhow::Result<Option<Errata>> {
    let mut parts = spec.split('/');
    let family: u16 = parts
        .next()
        .unwrap_or("")
        .parse()
        .context("--cpu: bad family")?;
    let model: u8 = parts
        .next()
        .unwrap_or("")
        .parse()
        .context("--cpu: bad model")?;
    Ok(Errata::for_cpu(family, model))
}

impl DecodeArgs {
    /// The `--filter:addrN_*` ranges (ptxed's names; `addrN_cfg` as in IA32_RTIT_CTL).
    fn filter(&self) -> AddrFilter {
        let range = |cfg: u8, start: u64, end: u64| AddrRange {
            kind: match cfg {
                1 => AddrRangeKind::Filter,
                2 => AddrRangeKind::Stop,
                _ => AddrRangeKind::Unused,
            },
            start,
            end,
        };
        AddrFilter {
            ranges: [
                range(self.addr0_cfg, self.addr0_a, self.addr0_b),
                range(self.addr1_cfg, self.addr1_a, self.addr1_b),
                range(self.addr2_cfg, self.addr2_a, self.addr2_b),
                range(self.addr3_cfg, self.addr3_a, self.addr3_b),
            ],
        }
    }

    pub fn run(self) -> anyhow::Result<()> {
        let trace =
            std::fs::read(&self.pt).with_context(|| format!("reading {}", self.pt.display()))?;
        let mut image = RawImage::new();
        for spec in &self.raw {
            load_raw(&mut image, spec)?;
        }
        let mut options = PtxedOptions {
            event_ip: self.event_ip,
            event_time: self.event_time,
            resync_on_error: self.resync_on_error,
            show_blocks: self.show_blocks,
            quiet: self.quiet,
            stat: self.stat,
            stat_insn: self.stat_insn,
            stat_blocks: self.stat_blocks,
            ..PtxedOptions::default()
        };
        options.block.end_on_call = self.end_on_call;
        options.block.end_on_jump = self.end_on_jump;
        options.block.events.mtc_freq = self.mtc_freq;
        options.block.filter = self.filter();
        if let Some(cpu) = &self.cpu {
            match cpu_errata(cpu)? {
                Some(errata) => options.block.errata = errata,
                None => options.unknown_cpu = true,
            }
        }
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        ptxed::print(&mut out, &trace, &image, &options)?;
        out.flush()?;
        Ok(())
    }
}
