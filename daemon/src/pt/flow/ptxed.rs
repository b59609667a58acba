//! The instruction flow printed as libipt's `ptxed --no-inst` prints it (block decoder): one
//! IP per instruction, events in brackets, errors with trace offset and IP.

use std::io::{self, Write};

use super::block::{Block, BlockConfig, BlockDecoder, Status};
use super::events::{Event, EventKind};
use super::image::Image;
use super::insn::ExecMode;
use super::{error_ip, ErrorKind};

/// ptxed's output options.
#[derive(Debug, Clone, Copy, Default)]
pub struct PtxedOptions {
    pub block: BlockConfig,
    /// `--event:ip`: print the IPs events bind to.
    pub event_ip: bool,
    /// `--event:time`: print the event's TSC first.
    pub event_time: bool,
    /// `--resync-on-error`: continue after an error instead of at the next PSB.
    pub resync_on_error: bool,
    /// `--block:show-blocks`.
    pub show_blocks: bool,
    /// `--quiet`: print nothing but errors and statistics.
    pub quiet: bool,
    /// `--stat`, `--stat:insn`, `--stat:blocks`.
    pub stat: bool,
    pub stat_insn: bool,
    pub stat_blocks: bool,
    /// `--cpu` named a CPU [`super::Errata::for_cpu`] does not know: say so first, as ptxed
    /// does, and decode without workarounds.
    pub unknown_cpu: bool,
}

#[derive(Default)]
struct Stats {
    insn: u64,
    blocks: u64,
}

fn exec_mode_name(mode: ExecMode) -> &'static str {
    match mode {
        ExecMode::Bits16 => "16-bit",
        ExecMode::Bits32 => "32-bit",
        ExecMode::Bits64 => "64-bit",
        ExecMode::Unknown => "unknown",
    }
}

/// Writes one event line.
pub fn write_event(out: &mut dyn Write, event: &Event, options: &PtxedOptions) -> io::Result<()> {
    write!(out, "[")?;
    if options.event_time {
        if let Some(tsc) = event.tsc {
            write!(out, "{tsc:016x}  ")?;
        }
    }
    let ip = |out: &mut dyn Write, label: &str, ip: Option<u64>| -> io::Result<()> {
        match ip {
            Some(ip) if options.event_ip => write!(out, ", {label}: {ip:016x}"),
            _ => Ok(()),
        }
    };
    match event.kind {
        EventKind::Enabled { ip: at, resumed } => {
            write!(out, "{}", if resumed { "resumed" } else { "enabled" })?;
            ip(out, "ip", Some(at.unwrap_or(0)))?;
        }
        EventKind::Disabled { ip: to } => {
            write!(out, "disabled")?;
            ip(out, "ip", to)?;
        }
        EventKind::AsyncDisabled { at, ip: to } => {
            write!(out, "disabled")?;
            ip(out, "at", Some(at))?;
            ip(out, "ip", to)?;
        }
        EventKind::AsyncBranch { from, to } => {
            write!(out, "interrupt")?;
            ip(out, "from", Some(from))?;
            ip(out, "to", to)?;
        }
        EventKind::Paging { cr3, nr } => {
            write!(
                out,
                "paging, cr3: {cr3:016x}{}",
                if nr { ", nr" } else { "" }
            )?;
        }
        EventKind::AsyncPaging { cr3, nr, ip: at } => {
            write!(
                out,
                "paging, cr3: {cr3:016x}{}",
                if nr { ", nr" } else { "" }
            )?;
            ip(out, "ip", Some(at.unwrap_or(0)))?;
        }
        EventKind::Overflow { ip: at } => {
            write!(out, "overflow")?;
            ip(out, "ip", at)?;
        }
        EventKind::ExecMode { mode, ip: at } => {
            write!(out, "exec mode: {}", exec_mode_name(mode))?;
            ip(out, "ip", at)?;
        }
        EventKind::Tsx {
            ip: at,
            speculative,
            aborted,
        } => {
            let what = if aborted {
                "aborted"
            } else if speculative {
                "begin transaction"
            } else {
                "committed"
            };
            write!(out, "{what}")?;
            ip(out, "ip", at)?;
        }
        EventKind::Stop => write!(out, "stopped")?,
        EventKind::Vmcs { base } => write!(out, "vmcs, base: {base:016x}")?,
        EventKind::AsyncVmcs { base, ip: at } => {
            write!(out, "vmcs, base: {base:016x}")?;
            ip(out, "ip", Some(at.unwrap_or(0)))?;
        }
        EventKind::Exstop { ip: at } => {
            write!(out, "exstop")?;
            ip(out, "ip", at)?;
        }
        EventKind::Mwait { ip: at, hints, ext } => {
            write!(out, "mwait {hints:x} {ext:x}")?;
            ip(out, "ip", at)?;
        }
        EventKind::Pwre {
            state,
            sub_state,
            hw,
        } => {
            write!(out, "pwre c{}.{}", (state + 1) & 0xf, (sub_state + 1) & 0xf)?;
            if hw {
                write!(out, " hw")?;
            }
        }
        EventKind::Pwrx {
            last,
            deepest,
            interrupt,
            store,
            autonomous,
        } => {
            write!(out, "pwrx ")?;
            if interrupt {
                write!(out, "int: ")?;
            }
            if store {
                write!(out, "st: ")?;
            }
            if autonomous {
                write!(out, "hw: ")?;
            }
            write!(out, "c{} (c{})", (last + 1) & 0xf, (deepest + 1) & 0xf)?;
        }
        EventKind::Ptwrite {
            ip: at, payload, ..
        } => {
            write!(out, "ptwrite: {payload:x}")?;
            ip(out, "ip", at)?;
        }
        EventKind::Tick { ip: at } => {
            write!(out, "tick")?;
            ip(out, "ip", at)?;
        }
        EventKind::Cbr { ratio } => write!(out, "cbr: {ratio:x}")?,
        EventKind::Mnt { payload } => write!(out, "mnt: {payload:x}")?,
        EventKind::PerfIp { ip } => write!(out, "perf ip: {ip:x}")?,
        EventKind::Tip { ip } => write!(out, "tip: {:x}", ip.unwrap_or(0))?,
        EventKind::Tnt { bits, size } => {
            write!(out, "tnt: ")?;
            for i in (0..size).rev() {
                write!(out, "{}", if bits >> i & 1 == 1 { "!" } else { "." })?;
            }
        }
        EventKind::Ignore => {}
    }
    writeln!(out, "]")
}

fn write_block(
    out: &mut dyn Write,
    decoder: &mut BlockDecoder<'_>,
    block: &Block,
    options: &PtxedOptions,
    stats: &Stats,
) -> io::Result<()> {
    if options.show_blocks {
        writeln!(out, "[block {:x}]", stats.blocks)?;
    }
    let mut ip = block.ip;
    for left in (0..block.ninsn).rev() {
        if block.speculative {
            write!(out, "? ")?;
        }
        write!(out, "{ip:016x}")?;
        let insn = match decoder.block_insn(block, ip) {
            Ok(insn) => insn,
            Err(error) => {
                writeln!(out, " [fetch error: {error}]")?;
                return Ok(());
            }
        };
        writeln!(out)?;
        if left == 0 {
            break;
        }
        ip = insn.target.unwrap_or_else(|| insn.next_ip());
    }
    Ok(())
}

fn diagnose(
    out: &mut dyn Write,
    decoder: &mut BlockDecoder<'_>,
    block: &Block,
    what: &str,
    error: ErrorKind,
) -> io::Result<()> {
    let ip = error_ip(decoder, block, error);
    writeln!(out, "[{:x}, {ip:x}: {what}: {error}]", decoder.offset())
}

/// Drains pending events; returns the status after them.
fn drain_events(
    out: &mut dyn Write,
    decoder: &mut BlockDecoder<'_>,
    mut status: Status,
    options: &PtxedOptions,
) -> io::Result<Result<Status, ErrorKind>> {
    while status.event_pending() {
        match decoder.event() {
            Ok((event, next)) => {
                if !options.quiet && !event.status_update {
                    write_event(out, &event, options)?;
                }
                status = next;
            }
            Err(error) => return Ok(Err(error)),
        }
    }
    Ok(Ok(status))
}

/// Decodes `trace` over `image` and prints the flow as ptxed does.
pub fn print(
    out: &mut dyn Write,
    trace: &[u8],
    image: &dyn Image,
    options: &PtxedOptions,
) -> io::Result<()> {
    if options.unknown_cpu {
        writeln!(out, "[0, 0: config error: unknown cpu]")?;
    }
    let mut decoder = BlockDecoder::new(trace, image, options.block);
    let mut stats = Stats::default();
    let mut sync = 0usize;
    let mut block = Block::default();
    let mut last_error = None;
    'sync: loop {
        block.ip = 0;
        block.ninsn = 0;
        let mut status = match decoder.sync_forward_past_failure() {
            Ok(status) => status,
            Err(ErrorKind::Eos) => break,
            Err(error) => {
                diagnose(out, &mut decoder, &block, "sync error", error)?;
                let now = decoder.offset();
                if now <= sync {
                    break;
                }
                sync = now;
                continue;
            }
        };
        loop {
            let error = loop {
                status = match drain_events(out, &mut decoder, status, options)? {
                    Ok(status) => status,
                    Err(error) => break error,
                };
                if status.eos() {
                    if !status.ip_suppressed() && !options.quiet {
                        writeln!(out, "[end of trace]")?;
                    }
                    break ErrorKind::Eos;
                }
                let result = decoder.next_block(&mut block);
                stats.insn += u64::from(block.ninsn);
                stats.blocks += 1;
                if !options.quiet {
                    write_block(out, &mut decoder, &block, options, &stats)?;
                }
                match result {
                    Ok(next) => status = next,
                    Err(error) => break error,
                }
            };
            if error == ErrorKind::Eos {
                break 'sync;
            }
            diagnose(out, &mut decoder, &block, "error", error)?;
            // A second error at the same packet: resynchronising there made no progress.
            let repeated = last_error == Some(decoder.offset());
            last_error = Some(decoder.offset());
            if !options.resync_on_error || repeated {
                break;
            }
            status = loop {
                match decoder.resync() {
                    Ok(status) => break status,
                    Err(ErrorKind::EventIgnored) => {
                        match drain_events(out, &mut decoder, Status::pending(), options)? {
                            Ok(_) => continue,
                            Err(error) => {
                                diagnose(out, &mut decoder, &block, "resync error", error)?;
                                continue 'sync;
                            }
                        }
                    }
                    Err(error) => {
                        diagnose(out, &mut decoder, &block, "resync error", error)?;
                        continue 'sync;
                    }
                }
            };
            if status.ip_suppressed() && !options.quiet {
                writeln!(out, "[disabled]")?;
            }
        }
    }
    // `--stat` alone counts instructions.
    let (stat_insn, stat_blocks) = match (options.stat_insn, options.stat_blocks) {
        (false, false) => (options.stat, false),
        flags => flags,
    };
    if stat_insn {
        writeln!(out, "insn: {}.", stats.insn)?;
    }
    if stat_blocks {
        writeln!(out, "blocks:\t{}.", stats.blocks)?;
    }
    Ok(())
}
