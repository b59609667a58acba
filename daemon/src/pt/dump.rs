//! Packet listings in the text formats users already know: `perf script -D` and libipt's ptdump.
//!
//! Each printer reproduces its tool, quirks included, so that listings can be diffed against the
//! tool's own output: where perf 6.1 or libipt rejects a packet that [`super::packets`] accepts,
//! the printer rejects it too (see `perf_knows` and `libipt_rejects`).

use std::fmt::{self, Write as _};
use std::io::{self, Write};

use super::packets::{
    decode, next_psb, BlockContext, ExecMode, IpCompression, IpPayload, LastIp, Packet,
    PacketErrorKind, Packets, Tma,
};

/// `perf script -D` takes the zero bytes after a packet into its line while the line is shorter
/// than this.
const PERF_PAD_FOLD_LIMIT: usize = 8;

/// perf pads the byte column to this many bytes.
const PERF_BYTE_COLUMNS: usize = 16;

/// Writes the packets of one Intel PT buffer (an AUXTRACE payload) exactly as `perf script -D`
/// prints them after its "Intel Processor Trace data" line: one line per packet, PAD folding and
/// `Bad packet!` lines included.
///
/// Like perf, an undecodable byte (including the first byte of a packet cut off by the end of
/// the buffer) gets a `Bad packet!` line of its own and decoding goes on at the next byte.
pub fn write_perf_dump(out: &mut dyn Write, data: &[u8]) -> io::Result<()> {
    let mut pos = 0usize;
    let mut block = BlockContext::None;
    while let Some(rest) = data.get(pos..).filter(|rest| !rest.is_empty()) {
        let packet = decode(data, pos, block).ok().filter(perf_knows);
        let len = match &packet {
            Some(packet) => {
                block = block.after(packet);
                // The decoder succeeded, so the packet fits in `rest`.
                let mut len = packet.size().min(rest.len());
                while len < PERF_PAD_FOLD_LIMIT && rest.get(len) == Some(&0) {
                    len += 1;
                }
                len
            }
            None => 1,
        };
        // perf prints the offset with %08x from a size_t: only the low 32 bits show.
        write!(out, ".  {:08x}: ", pos as u32)?;
        for byte in &rest[..len] {
            write!(out, " {byte:02x}")?;
        }
        for _ in len..PERF_BYTE_COLUMNS {
            out.write_all(b"   ")?;
        }
        match &packet {
            Some(packet) => writeln!(out, " {}", PerfDescription(packet))?,
            None => out.write_all(b" Bad packet!\n")?,
        }
        pos += len;
    }
    Ok(())
}

/// Packets perf 6.1's decoder rejects although the SDM or libipt define them.
fn perf_knows(packet: &Packet) -> bool {
    match packet {
        // perf 6.1 predates TRIG.
        Packet::Trig(_) => false,
        Packet::ModeExec(mode) => mode.mode() != ExecMode::Invalid,
        Packet::ModeTsx(mode) => mode.bits & 3 != 3,
        _ => true,
    }
}

/// A packet described as perf's `intel_pt_pkt_desc()` does.
struct PerfDescription<'a>(&'a Packet);

impl fmt::Display for PerfDescription<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = |f: &mut fmt::Formatter<'_>, name: &str, ip: &IpPayload| {
            if ip.compression == IpCompression::Suppressed {
                write!(f, "{name} no ip")
            } else {
                write!(f, "{name} {:#x}", ip.raw)
            }
        };
        match self.0 {
            Packet::Pad => f.write_str("PAD"),
            Packet::Psb => f.write_str("PSB"),
            Packet::PsbEnd => f.write_str("PSBEND"),
            Packet::Stop => f.write_str("TraceSTOP"),
            Packet::Ovf => f.write_str("OVF"),
            Packet::Tnt(tnt) => {
                f.write_str("TNT ")?;
                for taken in tnt.outcomes() {
                    f.write_char(if taken { 'T' } else { 'N' })?;
                }
                write!(f, " ({})", tnt.count)
            }
            Packet::Tip(p) => ip(f, "TIP", p),
            Packet::TipPge(p) => ip(f, "TIP.PGE", p),
            Packet::TipPgd(p) => ip(f, "TIP.PGD", p),
            Packet::Fup(p) => ip(f, "FUP", p),
            Packet::Cyc { cycles, .. } => write!(f, "CYC {cycles:#x}"),
            Packet::Vmcs { payload } => write!(f, "VMCS {payload:#x}"),
            Packet::Mtc { ctc } => write!(f, "MTC {ctc:#x}"),
            Packet::Mnt { payload } => write!(f, "MNT {payload:#x}"),
            Packet::Cbr { payload } => write!(f, "CBR {payload:#x}"),
            Packet::Tsc { tsc } => write!(f, "TSC {tsc:#x}"),
            Packet::Tma(tma) => write!(f, "TMA CTC {:#x} FC {:#x}", tma.ctc, tma.fast_counter()),
            Packet::ModeExec(mode) => {
                let bits = match mode.mode() {
                    ExecMode::Bits16 => 16,
                    ExecMode::Bits32 => 32,
                    ExecMode::Bits64 | ExecMode::Invalid => 64,
                };
                write!(f, "MODE.Exec IF:{} {bits}", u8::from(mode.interrupt_flag()))
            }
            Packet::ModeTsx(mode) => write!(
                f,
                "MODE.TSX TXAbort:{} InTX:{}",
                u8::from(mode.tx_abort()),
                u8::from(mode.in_tx())
            ),
            Packet::Pip(pip) => {
                write!(f, "PIP {:#x} (NR={})", pip.payload >> 1, u8::from(pip.nr()))
            }
            Packet::Ptw(ptw) => write!(f, "PTWRITE {:#x} IP:{}", ptw.payload, u8::from(ptw.ip)),
            Packet::Bep { ip } => write!(f, "BEP IP:{}", u8::from(*ip)),
            Packet::Exstop { ip } => write!(f, "EXSTOP IP:{}", u8::from(*ip)),
            Packet::Mwait { hints, extensions } => {
                let payload = u64::from(*extensions) << 32 | u64::from(*hints);
                write!(
                    f,
                    "MWAIT {payload:#x} Hints {:#x} Extensions {:#x}",
                    hints & 0xff,
                    extensions & 3
                )
            }
            Packet::Pwre(pwre) => write!(
                f,
                "PWRE {:#x} HW:{} CState:{} Sub-CState:{}",
                pwre.payload,
                u8::from(pwre.hw()),
                pwre.state(),
                pwre.sub_state()
            ),
            Packet::Pwrx(pwrx) => write!(
                f,
                "PWRX {:#x} Last CState:{} Deepest CState:{} Wake Reason {:#x}",
                pwrx.payload,
                pwrx.last(),
                pwrx.deepest(),
                pwrx.wake_reason()
            ),
            Packet::Bbp(bbp) => write!(
                f,
                "BBP SZ {}-byte Type {:#x}",
                bbp.item_size(),
                bbp.block_type()
            ),
            Packet::Bip { id, value, .. } => write!(f, "BIP ID 0x{id:02x} Value {value:#x}"),
            Packet::Cfe(cfe) => write!(
                f,
                "CFE IP:{} Type 0x{:02x} Vector {:#x}",
                u8::from(cfe.ip()),
                cfe.event_type(),
                cfe.vector
            ),
            Packet::Evd(evd) => write!(
                f,
                "EVD Type 0x{:02x} Payload {:#x}",
                evd.type_byte & 0x3f,
                evd.payload
            ),
            // Filtered out by `perf_knows`; described in perf's fallback style all the same.
            Packet::Trig(trig) => write!(f, "TRIG {:#x} (0)", trig.trbv),
        }
    }
}

/// Options of libipt's ptdump that change its packet listing (timing options are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtdumpOptions {
    /// Print each packet's offset (ptdump's default; `--no-offset` turns it off).
    pub show_offset: bool,
    /// `--raw`: print each packet's bytes.
    pub raw: bool,
    /// `--lastip`: print the reconstructed last IP on IP packets.
    pub last_ip: bool,
    /// `--exec-mode`: print the execution mode on MODE.Exec.
    pub exec_mode: bool,
    /// `--no-sync`: decode from offset 0 instead of the first PSB.
    pub no_sync: bool,
    /// libipt's workaround for erratum SKD007 (a 2-byte CYC followed by `F3` is a garbled OVF),
    /// which ptdump enables for the CPUs that have it.
    pub skd007: bool,
    /// libipt's workaround for erratum SKZ84 (a TMA with reserved bits set is shown as an
    /// `<invalid>` 8-byte packet instead of stopping the decode).
    pub skz84: bool,
}

impl Default for PtdumpOptions {
    fn default() -> Self {
        PtdumpOptions {
            show_offset: true,
            raw: false,
            last_ip: false,
            exec_mode: false,
            no_sync: false,
            skd007: false,
            skz84: false,
        }
    }
}

/// Writes the packets of an Intel PT byte stream as libipt's `ptdump` does.
///
/// Like ptdump, it starts at the first PSB (unless `no_sync`), reports an undecodable packet as
/// `[<offset>: error decoding packet: <reason>]` and resynchronises at the next PSB, and stops
/// silently at a packet cut off by the end of the buffer.
pub fn write_ptdump(out: &mut dyn Write, data: &[u8], options: &PtdumpOptions) -> io::Result<()> {
    let start = if options.no_sync {
        0
    } else {
        match next_psb(data, 0) {
            Some(psb) => psb,
            None => return Ok(()),
        }
    };
    let mut packets = Packets::new(data);
    packets.seek(start);
    // The last PSB decoded or synchronised to: resynchronising from it must look past it.
    let mut sync = start;
    // ptdump tracks the last IP itself and resets it only when it resynchronises, not at PSB.
    let mut last_ip = LastIp::new();
    let mut line = PtdumpLine::default();
    while let Some(decoded) = packets.next() {
        let error = match decoded {
            Ok((offset, packet)) if options.skd007 && is_skd007_ovf(data, offset, &packet) => {
                // The CYC's offset, its bytes, and an OVF: what libipt reports.
                line.describe(out, offset, &Packet::Ovf, &mut last_ip, options)?;
                line.write(
                    out,
                    offset,
                    data.get(offset..offset + 2).unwrap_or(&[]),
                    options,
                )?;
                packets.seek(offset + 3);
                continue;
            }
            Ok((offset, Packet::Tma(tma))) if options.skz84 && tma_has_reserved_bits(&tma) => {
                line.set_invalid();
                line.write(
                    out,
                    offset,
                    data.get(offset..offset + 8).unwrap_or(&[]),
                    options,
                )?;
                packets.seek(offset + 8);
                continue;
            }
            Ok((offset, packet)) => match libipt_rejects(&packet) {
                None => {
                    if packet == Packet::Psb {
                        sync = offset;
                    }
                    let bytes = data.get(offset..offset + packet.size()).unwrap_or(&[]);
                    line.describe(out, offset, &packet, &mut last_ip, options)?;
                    line.write(out, offset, bytes, options)?;
                    continue;
                }
                Some(kind) => (offset, kind),
            },
            Err(error) => (error.offset, error.kind),
        };
        let (offset, kind) = error;
        let reason = match kind {
            // libipt reports a packet cut off by the end of the trace as the end of the trace.
            PacketErrorKind::Truncated => break,
            PacketErrorKind::UnknownOpcode => "unknown opcode",
            PacketErrorKind::ReservedIpCompression(_) | PacketErrorKind::Malformed(_) => {
                "unknown packet"
            }
        };
        writeln!(out, "[{offset:x}: error decoding packet: {reason}]")?;
        // libipt searches from up to 15 bytes before the bad packet, so that a PSB the previous
        // packet wrongly swallowed part of is found; past the PSB it synchronised to last.
        let from = if offset == sync {
            offset.saturating_add(16)
        } else {
            offset
        };
        match next_psb(data, from.saturating_sub(15)) {
            Some(psb) => {
                packets.seek(psb);
                sync = psb;
                last_ip.reset();
            }
            None => break,
        }
    }
    Ok(())
}

/// Packets libipt's packet decoder rejects although perf or the SDM define them, and why.
fn libipt_rejects(packet: &Packet) -> Option<PacketErrorKind> {
    match packet {
        // libipt has no block (BBP/BIP/BEP) packets.
        Packet::Bbp(_) | Packet::Bip { .. } | Packet::Bep { .. } => {
            Some(PacketErrorKind::UnknownOpcode)
        }
        Packet::Tnt(tnt) if tnt.count == 0 => Some(PacketErrorKind::Malformed("TNT")),
        Packet::Tma(tma) if tma_has_reserved_bits(tma) => Some(PacketErrorKind::Malformed("TMA")),
        // libipt stops at 8 extension bytes (64 bits of count).
        Packet::Cyc { size, .. } if *size > 9 => Some(PacketErrorKind::Malformed("CYC")),
        _ => None,
    }
}

fn tma_has_reserved_bits(tma: &Tma) -> bool {
    tma.reserved != 0 || tma.fast_counter_raw > 0x1ff
}

/// SKD007: an OVF whose `02` was taken as the second byte of a 2-byte CYC (`xx 02 F3`).
fn is_skd007_ovf(data: &[u8], offset: usize, packet: &Packet) -> bool {
    matches!(packet, Packet::Cyc { size: 2, .. })
        && data.get(offset + 1) == Some(&0x02)
        && data.get(offset + 2) == Some(&0xf3)
}

/// ptdump's column widths (the sizes of its fields, NUL included) and field limits.
const PTDUMP_OFFSET_WIDTH: usize = 17;
const PTDUMP_RAW_WIDTH: usize = 33;
const PTDUMP_OPCODE_WIDTH: usize = 10;
const PTDUMP_PAYLOAD_WIDTH: usize = 25;
const PTDUMP_TRACKING_ID_WIDTH: usize = 5;
const PTDUMP_PAYLOAD_MAX: usize = 24;
const PTDUMP_EXTENDED_PAYLOAD_MAX: usize = 47;
const PTDUMP_RAW_MAX_BYTES: usize = 16;

/// One ptdump line being built; the strings are reused from line to line.
#[derive(Default)]
struct PtdumpLine {
    opcode: &'static str,
    payload: String,
    tracking_id: &'static str,
    tracking: String,
}

impl PtdumpLine {
    /// Fills the line for `packet`; diagnostics ptdump prints while doing so go to `out` first.
    fn describe(
        &mut self,
        out: &mut dyn Write,
        offset: usize,
        packet: &Packet,
        last_ip: &mut LastIp,
        options: &PtdumpOptions,
    ) -> io::Result<()> {
        self.payload.clear();
        self.tracking.clear();
        self.tracking_id = "";
        // Writing into a String cannot fail.
        let p = &mut self.payload;
        let mut payload_max = PTDUMP_PAYLOAD_MAX;
        self.opcode = match packet {
            Packet::Pad => "pad",
            Packet::Psb => "psb",
            Packet::PsbEnd => "psbend",
            Packet::Ovf => "ovf",
            Packet::Stop => "stop",
            Packet::Tip(ip) | Packet::TipPge(ip) | Packet::TipPgd(ip) | Packet::Fup(ip) => {
                write_ptdump_ip(p, ip);
                if options.last_ip {
                    last_ip.update(ip);
                    self.tracking_id = "ip";
                    match last_ip.get() {
                        Some(value) => {
                            let _ = write!(self.tracking, "{value:016x}");
                        }
                        None if last_ip.is_empty() => {
                            self.tracking.push_str("<unavailable>");
                            writeln!(out, "[{offset:x}: error tracking last-ip: no ip]")?;
                        }
                        None => self.tracking.push_str("<suppressed>"),
                    }
                }
                match packet {
                    Packet::Tip(_) => "tip",
                    Packet::TipPge(_) => "tip.pge",
                    Packet::TipPgd(_) => "tip.pgd",
                    _ => "fup",
                }
            }
            Packet::Pip(pip) => {
                let _ = write!(p, "{:x}{}", pip.cr3(), if pip.nr() { ", nr" } else { "" });
                self.tracking_id = "cr3";
                let _ = write!(self.tracking, "{:016x}", pip.cr3());
                "pip"
            }
            Packet::Vmcs { payload } => {
                let base = payload << 12;
                let _ = write!(p, "{base:x}");
                self.tracking_id = "vmcs";
                let _ = write!(self.tracking, "{base:016x}");
                "vmcs"
            }
            Packet::Tnt(tnt) => {
                payload_max = PTDUMP_EXTENDED_PAYLOAD_MAX;
                p.extend(tnt.outcomes().map(|taken| if taken { '!' } else { '.' }));
                if tnt.long {
                    "tnt.64"
                } else {
                    "tnt.8"
                }
            }
            Packet::ModeExec(mode) => {
                let (csd, csl) = (mode.cs_d(), mode.cs_l());
                let parts = [(csd, "cs.d"), (csl, "cs.l"), (mode.interrupt_flag(), "if")];
                write_flag_list(p, &parts);
                if options.exec_mode {
                    self.tracking_id = "em";
                    self.tracking.push_str(match mode.mode() {
                        ExecMode::Bits64 => "64-bit",
                        ExecMode::Bits32 => "32-bit",
                        ExecMode::Bits16 => "16-bit",
                        ExecMode::Invalid => "unknown",
                    });
                }
                "mode.exec"
            }
            Packet::ModeTsx(mode) => {
                write_flag_list(p, &[(mode.in_tx(), "intx"), (mode.tx_abort(), "abrt")]);
                "mode.tsx"
            }
            Packet::Tsc { tsc } => {
                let _ = write!(p, "{tsc:x}");
                "tsc"
            }
            Packet::Cbr { payload } => {
                let _ = write!(p, "{:x}", payload & 0xff);
                "cbr"
            }
            Packet::Tma(tma) => {
                let _ = write!(p, "{:x}, {:x}", tma.ctc, tma.fast_counter());
                "tma"
            }
            Packet::Mtc { ctc } => {
                let _ = write!(p, "{ctc:x}");
                "mtc"
            }
            Packet::Cyc { cycles, .. } => {
                let _ = write!(p, "{cycles:x}");
                "cyc"
            }
            Packet::Mnt { payload } => {
                let _ = write!(p, "{payload:x}");
                "mnt"
            }
            Packet::Exstop { ip } => {
                if *ip {
                    p.push_str("ip");
                }
                "exstop"
            }
            Packet::Mwait { hints, extensions } => {
                let _ = write!(p, "{hints:08x}, {extensions:08x}");
                "mwait"
            }
            Packet::Pwre(pwre) => {
                // libipt reads the hardware flag from payload bit 3 (the SDM and perf: bit 7).
                let hw = pwre.payload & 0x8 != 0;
                let _ = write!(
                    p,
                    "c{}.{}{}",
                    (pwre.state() + 1) & 0xf,
                    (pwre.sub_state() + 1) & 0xf,
                    if hw { ", hw" } else { "" }
                );
                "pwre"
            }
            Packet::Pwrx(pwrx) => {
                let reason = match pwrx.wake_reason() & 0xd {
                    0x1 => "int",
                    0x4 => " st",
                    0x8 => " hw",
                    _ => "bad",
                };
                let _ = write!(
                    p,
                    "{reason}: c{}, c{}",
                    (pwrx.last() + 1) & 0xf,
                    (pwrx.deepest() + 1) & 0xf
                );
                "pwrx"
            }
            Packet::Ptw(ptw) => {
                let size_code = if ptw.size == 8 { 1 } else { 0 };
                let ip = if ptw.ip { ", ip" } else { "" };
                let _ = write!(p, "{size_code:x}: {:x}{ip}", ptw.payload);
                "ptw"
            }
            Packet::Cfe(cfe) => {
                let kind = cfe.event_type();
                let ip = if cfe.ip() { ", ip" } else { "" };
                let _ = match kind {
                    // Interrupt-like events carry a vector, printed in decimal.
                    0x01 | 0x09 | 0x0c | 0x0e => write!(p, "{kind}: {}{ip}", cfe.vector),
                    // SIPI carries a start page, in hex.
                    0x05 => write!(p, "{kind}: {:x}{ip}", cfe.vector),
                    _ => write!(p, "{kind}{ip}"),
                };
                self.tracking_id = "type";
                self.tracking.push_str(cfe_type_name(kind));
                "cfe"
            }
            Packet::Evd(evd) => {
                let kind = evd.type_byte & 0x1f;
                let _ = write!(p, "{kind}: {:x}", evd.payload);
                self.tracking_id = "type";
                self.tracking.push_str(match kind {
                    0 => "cr2",
                    1 => "vmxq",
                    2 => "vmxr",
                    _ => "unknown",
                });
                "evd"
            }
            Packet::Trig(trig) => {
                payload_max = PTDUMP_EXTENDED_PAYLOAD_MAX;
                let _ = write!(
                    p,
                    "{:02x}{}{}",
                    trig.trbv,
                    if trig.ip() { ", ip" } else { "" },
                    if trig.mult() { ", mult" } else { "" }
                );
                if let Some(icnt) = trig.icnt {
                    let _ = write!(p, ", icnt: {icnt}");
                }
                "trig"
            }
            // Rejected by `libipt_rejects` before they get here.
            Packet::Bbp(_) => "bbp",
            Packet::Bip { .. } => "bip",
            Packet::Bep { .. } => "bep",
        };
        // ptdump's fields are fixed-size C strings; all text here is ASCII.
        self.payload.truncate(payload_max);
        Ok(())
    }

    /// A packet libipt decoded as `ppt_invalid`.
    fn set_invalid(&mut self) {
        self.opcode = "<invalid>";
        self.payload.clear();
        self.tracking_id = "";
        self.tracking.clear();
    }

    /// Writes the line as ptdump's `print_buffer()` lays it out.
    fn write(
        &self,
        out: &mut dyn Write,
        offset: usize,
        bytes: &[u8],
        options: &PtdumpOptions,
    ) -> io::Result<()> {
        let mut sep = "";
        if options.show_offset {
            write!(out, "{offset:016x}{:1$}", "", PTDUMP_OFFSET_WIDTH - 16)?;
            sep = " ";
        }
        if options.raw && !bytes.is_empty() {
            out.write_all(sep.as_bytes())?;
            let shown = &bytes[..bytes.len().min(PTDUMP_RAW_MAX_BYTES)];
            for byte in shown {
                write!(out, "{byte:02x}")?;
            }
            write!(out, "{:1$}", "", PTDUMP_RAW_WIDTH - 2 * shown.len())?;
            sep = " ";
        }
        if self.payload.is_empty() {
            write!(out, "{sep}{}", self.opcode)?;
        } else {
            write!(out, "{sep}{:<1$}", self.opcode, PTDUMP_OPCODE_WIDTH)?;
        }
        if !self.tracking_id.is_empty() {
            write!(
                out,
                " {:<pw$} {:<iw$}{}",
                self.payload,
                self.tracking_id,
                self.tracking,
                pw = PTDUMP_PAYLOAD_WIDTH,
                iw = PTDUMP_TRACKING_ID_WIDTH
            )?;
        } else if !self.payload.is_empty() {
            write!(out, " {}", self.payload)?;
        }
        out.write_all(b"\n")
    }
}

/// ptdump's IP payload: the compression, then the bytes the packet carries (`?` for the rest).
fn write_ptdump_ip(p: &mut String, ip: &IpPayload) {
    let code = ip.compression.code();
    let _ = match ip.compression {
        IpCompression::Suppressed => write!(p, "{code}: ????????????????"),
        IpCompression::Update16 => write!(p, "{code}: ????????????{:04x}", ip.raw),
        IpCompression::Update32 => write!(p, "{code}: ????????{:08x}", ip.raw),
        IpCompression::Update48 => write!(p, "{code}: ????{:012x}", ip.raw),
        IpCompression::Sext48 | IpCompression::Full => {
            write!(p, "{code}: {:016x}", ip.resolve(0).unwrap_or(0))
        }
    };
}

/// Writes the names whose flag is set, separated by ", ".
fn write_flag_list(p: &mut String, parts: &[(bool, &str)]) {
    for (_, name) in parts.iter().filter(|(set, _)| *set) {
        if !p.is_empty() {
            p.push_str(", ");
        }
        p.push_str(name);
    }
}

/// libipt's names of CFE event types.
fn cfe_type_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "intr",
        0x02 => "iret",
        0x03 => "smi",
        0x04 => "rsm",
        0x05 => "sipi",
        0x06 => "init",
        0x07 => "vmentry",
        0x08 => "vmexit",
        0x09 => "vmexit_intr",
        0x0a => "shutdown",
        0x0c => "uintr",
        0x0d => "uiret",
        0x0e => "swintr",
        0x0f => "syscall",
        _ => "unknown",
    }
}
