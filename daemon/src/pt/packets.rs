//! Intel PT packets over raw bytes: a zero-allocation, panic-free decoder.
//!
//! The encodings follow the Intel SDM, Vol. 3C, chapter "Intel Processor Trace", section
//! "Packet Definitions" (cited below by packet name). Where the SDM leaves a corner open, the
//! decoder accepts what both Linux perf and libipt accept, and is lenient where only one of them
//! is (a packet whose length is still well defined is returned, not rejected); the printers in
//! [`super::dump`] apply each tool's own extra checks.
//!
//! [`decode`] reads one packet at an offset; [`Packets`] iterates a buffer, tracks the BBP…BEP
//! block context (BIP shadows short TNT there) and reconstructs the last IP for compressed IP
//! packets. After an error the caller chooses how to go on: step one byte (perf's dump) or
//! resynchronise at the next PSB ([`next_psb`], [`Packets::resync`]).

use thiserror::Error;

/// Why a packet could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PacketErrorKind {
    /// The first byte (or the extension byte after `02`) names no packet.
    #[error("unknown opcode")]
    UnknownOpcode,
    /// The buffer ends in the middle of the packet.
    #[error("packet truncated by the end of the buffer")]
    Truncated,
    /// A TIP/TIP.PGE/TIP.PGD/FUP with IPBytes 5 or 7.
    #[error("reserved IP compression {0}")]
    ReservedIpCompression(u8),
    /// The opcode is known but a field holds a reserved value (the packet's name is given).
    #[error("malformed {0} packet")]
    Malformed(&'static str),
}

/// A packet that could not be decoded, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("Intel PT packet at offset {offset:#x}: {kind}")]
pub struct PacketError {
    /// Offset of the packet's first byte in the buffer.
    pub offset: usize,
    pub kind: PacketErrorKind,
}

/// The IPBytes field of TIP, TIP.PGE, TIP.PGD and FUP ("IP Compression" in the SDM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpCompression {
    /// 0: no IP; the last IP is left unchanged.
    Suppressed,
    /// 1: 2 bytes replace bits 15:0 of the last IP.
    Update16,
    /// 2: 4 bytes replace bits 31:0 of the last IP.
    Update32,
    /// 3: 6 bytes, sign-extended from bit 47.
    Sext48,
    /// 4: 6 bytes replace bits 47:0 of the last IP.
    Update48,
    /// 6: the full 8-byte IP.
    Full,
}

impl IpCompression {
    /// The IPBytes value as it is encoded (bits 7:5 of the opcode byte).
    pub const fn code(self) -> u8 {
        match self {
            IpCompression::Suppressed => 0,
            IpCompression::Update16 => 1,
            IpCompression::Update32 => 2,
            IpCompression::Sext48 => 3,
            IpCompression::Update48 => 4,
            IpCompression::Full => 6,
        }
    }

    /// Number of payload bytes the packet carries.
    pub const fn payload_len(self) -> usize {
        match self {
            IpCompression::Suppressed => 0,
            IpCompression::Update16 => 2,
            IpCompression::Update32 => 4,
            IpCompression::Sext48 | IpCompression::Update48 => 6,
            IpCompression::Full => 8,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => IpCompression::Suppressed,
            1 => IpCompression::Update16,
            2 => IpCompression::Update32,
            3 => IpCompression::Sext48,
            4 => IpCompression::Update48,
            6 => IpCompression::Full,
            _ => return None,
        })
    }
}

/// The payload of an IP packet as encoded: its compression and the raw (zero-extended) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPayload {
    pub compression: IpCompression,
    /// The payload bytes, little-endian, zero-extended; 0 when suppressed.
    pub raw: u64,
}

impl IpPayload {
    /// The IP this payload gives when the last IP was `last`; `None` when suppressed.
    pub const fn resolve(&self, last: u64) -> Option<u64> {
        Some(match self.compression {
            IpCompression::Suppressed => return None,
            IpCompression::Update16 => (last & !0xffff) | (self.raw & 0xffff),
            IpCompression::Update32 => (last & !0xffff_ffff) | (self.raw & 0xffff_ffff),
            IpCompression::Update48 => (last & !0xffff_ffff_ffff) | (self.raw & 0xffff_ffff_ffff),
            // Shift up then arithmetic-shift down to copy bit 47 into 63:48.
            IpCompression::Sext48 => (((self.raw << 16) as i64) >> 16) as u64,
            IpCompression::Full => self.raw,
        })
    }
}

/// The last-IP register that IP compression is relative to (SDM "IP Compression").
///
/// A PSB resets it; a suppressed IP leaves the value but marks it unavailable until the next IP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastIp {
    ip: u64,
    have_ip: bool,
    suppressed: bool,
}

impl LastIp {
    pub const fn new() -> Self {
        LastIp {
            ip: 0,
            have_ip: false,
            suppressed: false,
        }
    }

    /// Forgets the last IP, as a PSB does.
    pub fn reset(&mut self) {
        *self = LastIp::new();
    }

    /// Applies an IP packet's payload.
    pub fn update(&mut self, payload: &IpPayload) {
        match payload.resolve(self.ip) {
            Some(ip) => {
                self.ip = ip;
                self.have_ip = true;
                self.suppressed = false;
            }
            None => self.suppressed = true,
        }
    }

    /// The current IP: `None` before the first IP packet and after a suppressed one.
    pub const fn get(&self) -> Option<u64> {
        if self.have_ip && !self.suppressed {
            Some(self.ip)
        } else {
            None
        }
    }

    /// True when no IP packet was seen since the last reset.
    pub const fn is_empty(&self) -> bool {
        !self.have_ip
    }

    /// True when the last IP packet was suppressed (IPBytes 0).
    pub const fn is_suppressed(&self) -> bool {
        self.suppressed
    }
}

/// Taken/Not-taken (TNT) packet, short (1 byte) or long (`02 A3` + 6 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tnt {
    /// The outcomes, right-aligned: bit `count - 1` is the oldest, bit 0 the newest; 1 = taken.
    pub bits: u64,
    /// How many outcomes (short: 1–6; long: 0–47, 0 only in a long TNT without outcomes).
    pub count: u8,
    /// Long TNT (`02 A3`).
    pub long: bool,
}

impl Tnt {
    /// The outcomes, oldest first (true = taken).
    pub fn outcomes(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.count).rev().map(|i| self.bits >> i & 1 == 1)
    }
}

/// Paging Information Packet (PIP): CR3 and the non-root (NR) bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pip {
    /// The 48-bit payload as encoded: bit 0 = NR, bits 47:1 = `CR3[51:5]`.
    pub payload: u64,
}

impl Pip {
    /// Non-root: the CR3 write happened in VMX non-root operation (a guest).
    pub const fn nr(&self) -> bool {
        self.payload & 1 == 1
    }

    /// The CR3 value (bits 51:5; the low 5 bits are zero).
    pub const fn cr3(&self) -> u64 {
        (self.payload >> 1) << 5
    }
}

/// MODE.Exec: the execution mode (CS.L, CS.D) and, with event tracing, IF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeExec {
    /// Bits 4:0 of the MODE payload byte.
    pub bits: u8,
}

/// The execution mode a MODE.Exec packet gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecMode {
    Bits16,
    Bits32,
    Bits64,
    /// CS.L and CS.D both set: reserved.
    Invalid,
}

impl ModeExec {
    pub const fn cs_l(&self) -> bool {
        self.bits & 1 != 0
    }
    pub const fn cs_d(&self) -> bool {
        self.bits & 2 != 0
    }
    /// RFLAGS.IF, meaningful with event tracing.
    pub const fn interrupt_flag(&self) -> bool {
        self.bits & 4 != 0
    }
    pub const fn mode(&self) -> ExecMode {
        match (self.cs_l(), self.cs_d()) {
            (false, false) => ExecMode::Bits16,
            (false, true) => ExecMode::Bits32,
            (true, false) => ExecMode::Bits64,
            (true, true) => ExecMode::Invalid,
        }
    }
}

/// MODE.TSX: transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeTsx {
    /// Bits 4:0 of the MODE payload byte.
    pub bits: u8,
}

impl ModeTsx {
    pub const fn in_tx(&self) -> bool {
        self.bits & 1 != 0
    }
    pub const fn tx_abort(&self) -> bool {
        self.bits & 2 != 0
    }
}

/// Mini Time Counter packet's companion: TSC/MTC Alignment (TMA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tma {
    /// `CTC[15:0]` at the time of the preceding TSC.
    pub ctc: u16,
    /// The reserved byte between CTC and FastCounter (zero in a well-formed packet).
    pub reserved: u8,
    /// Bytes 5 and 6 as encoded: `FastCounter[8:0]` in bits 8:0, the rest reserved.
    pub fast_counter_raw: u16,
}

impl Tma {
    pub const fn fast_counter(&self) -> u16 {
        self.fast_counter_raw & 0x1ff
    }
}

/// PTWRITE (PTW) packet: a value written by the PTWRITE instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ptw {
    pub payload: u64,
    /// Payload size in bytes: 4 or 8.
    pub size: u8,
    /// A FUP with the PTWRITE's IP follows.
    pub ip: bool,
}

/// Power Entry (PWRE) packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pwre {
    /// The two payload bytes, little-endian.
    pub payload: u16,
}

impl Pwre {
    /// The C-state request was made by hardware (payload byte 0, bit 7).
    pub const fn hw(&self) -> bool {
        self.payload & 0x80 != 0
    }
    /// Resolved thread C-state (bits 15:12), in MWAIT hint encoding.
    pub const fn state(&self) -> u8 {
        (self.payload >> 12 & 0xf) as u8
    }
    /// Resolved thread sub C-state (bits 11:8).
    pub const fn sub_state(&self) -> u8 {
        (self.payload >> 8 & 0xf) as u8
    }
}

/// Power Exit (PWRX) packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pwrx {
    /// The five payload bytes, little-endian.
    pub payload: u64,
}

impl Pwrx {
    /// Deepest core C-state reached (bits 3:0).
    pub const fn deepest(&self) -> u8 {
        (self.payload & 0xf) as u8
    }
    /// Last core C-state (bits 7:4).
    pub const fn last(&self) -> u8 {
        (self.payload >> 4 & 0xf) as u8
    }
    /// Wake reason (bits 11:8): bit 0 interrupt, bit 2 store to monitored address, bit 3 hardware.
    pub const fn wake_reason(&self) -> u8 {
        (self.payload >> 8 & 0xf) as u8
    }
}

/// Block Begin Packet (BBP): starts a block of BIPs of one type and item size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bbp {
    /// The payload byte: bit 7 = SZ (1: 4-byte items, 0: 8-byte), bits 4:0 = block type.
    pub bits: u8,
}

impl Bbp {
    /// Size in bytes of each BIP's value: 4 or 8.
    pub const fn item_size(&self) -> u8 {
        if self.bits & 0x80 != 0 {
            4
        } else {
            8
        }
    }
    pub const fn block_type(&self) -> u8 {
        self.bits & 0x1f
    }
}

/// Control Flow Event (CFE) packet (event tracing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cfe {
    /// Payload byte 0: bit 7 = IP (a FUP follows), bits 4:0 = type.
    pub bits: u8,
    pub vector: u8,
}

impl Cfe {
    pub const fn ip(&self) -> bool {
        self.bits & 0x80 != 0
    }
    pub const fn event_type(&self) -> u8 {
        self.bits & 0x1f
    }
}

/// Event Data (EVD) packet (event tracing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Evd {
    /// Payload byte 0 as encoded: bits 5:0 type (perf reads 6 bits, libipt 5).
    pub type_byte: u8,
    pub payload: u64,
}

/// Trigger (TRIG) packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Trig {
    /// Payload byte 0: bit 7 IP, bit 6 ICNTV (an instruction count follows), bit 5 MULT.
    pub flags: u8,
    /// Trigger bit vector.
    pub trbv: u8,
    /// Instruction count, when ICNTV is set.
    pub icnt: Option<u16>,
}

impl Trig {
    pub const fn ip(&self) -> bool {
        self.flags & 0x80 != 0
    }
    pub const fn mult(&self) -> bool {
        self.flags & 0x20 != 0
    }
}

/// One Intel PT packet. Every field is decoded from the bytes; nothing is borrowed or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Packet {
    /// PAD: `00`.
    Pad,
    /// Taken/Not-taken (TNT).
    Tnt(Tnt),
    /// Target IP (TIP).
    Tip(IpPayload),
    /// Packet Generation Enable (TIP.PGE).
    TipPge(IpPayload),
    /// Packet Generation Disable (TIP.PGD).
    TipPgd(IpPayload),
    /// Flow Update Packet (FUP).
    Fup(IpPayload),
    /// Paging Information Packet (PIP).
    Pip(Pip),
    /// MODE.Exec.
    ModeExec(ModeExec),
    /// MODE.TSX.
    ModeTsx(ModeTsx),
    /// Time Stamp Counter (TSC): the low 56 bits of the TSC.
    Tsc { tsc: u64 },
    /// Mini Time Counter (MTC): CTC bits selected by MTCFreq.
    Mtc { ctc: u8 },
    /// TSC/MTC Alignment (TMA).
    Tma(Tma),
    /// Cycle Count (CYC); `size` is the encoded length in bytes (1–10).
    Cyc { cycles: u64, size: u8 },
    /// VMCS packet: bits 51:12 of the VMCS pointer as encoded (40 bits).
    Vmcs { payload: u64 },
    /// Overflow (OVF).
    Ovf,
    /// Core:Bus Ratio (CBR): both payload bytes; the ratio is the low byte.
    Cbr { payload: u16 },
    /// Packet Stream Boundary (PSB): `02 82` × 8.
    Psb,
    /// PSBEND.
    PsbEnd,
    /// Maintenance (MNT).
    Mnt { payload: u64 },
    /// PTWRITE (PTW).
    Ptw(Ptw),
    /// Execution Stop (EXSTOP); `ip`: a FUP follows.
    Exstop { ip: bool },
    /// MWAIT.
    Mwait { hints: u32, extensions: u32 },
    /// Power Entry (PWRE).
    Pwre(Pwre),
    /// Power Exit (PWRX).
    Pwrx(Pwrx),
    /// TraceStop.
    Stop,
    /// Block Begin Packet (BBP).
    Bbp(Bbp),
    /// Block Item Packet (BIP): only between BBP and BEP; `size` is the value's size (4 or 8).
    Bip { id: u8, value: u64, size: u8 },
    /// Block End Packet (BEP); `ip`: a FUP follows.
    Bep { ip: bool },
    /// Control Flow Event (CFE).
    Cfe(Cfe),
    /// Event Data (EVD).
    Evd(Evd),
    /// Trigger (TRIG).
    Trig(Trig),
}

impl Packet {
    /// The packet's encoded length in bytes.
    pub const fn size(&self) -> usize {
        match self {
            Packet::Pad => 1,
            Packet::Tnt(tnt) => {
                if tnt.long {
                    8
                } else {
                    1
                }
            }
            Packet::Tip(ip) | Packet::TipPge(ip) | Packet::TipPgd(ip) | Packet::Fup(ip) => {
                1 + ip.compression.payload_len()
            }
            Packet::Pip(_) | Packet::Tsc { .. } => 8,
            Packet::ModeExec(_) | Packet::ModeTsx(_) | Packet::Mtc { .. } => 2,
            Packet::Tma(_) | Packet::Vmcs { .. } | Packet::Pwrx(_) => 7,
            Packet::Cyc { size, .. } => *size as usize,
            Packet::Ovf | Packet::PsbEnd | Packet::Exstop { .. } | Packet::Stop => 2,
            Packet::Bep { .. } => 2,
            Packet::Cbr { .. } | Packet::Pwre(_) | Packet::Cfe(_) => 4,
            Packet::Psb => PSB_LEN,
            Packet::Mnt { .. } | Packet::Evd(_) => 11,
            Packet::Ptw(ptw) => 2 + ptw.size as usize,
            Packet::Mwait { .. } => 10,
            Packet::Bbp(_) => 3,
            Packet::Bip { size, .. } => 1 + *size as usize,
            Packet::Trig(trig) => {
                if trig.icnt.is_some() {
                    5
                } else {
                    3
                }
            }
        }
    }

    /// The IP payload of TIP, TIP.PGE, TIP.PGD and FUP.
    pub const fn ip_payload(&self) -> Option<&IpPayload> {
        match self {
            Packet::Tip(ip) | Packet::TipPge(ip) | Packet::TipPgd(ip) | Packet::Fup(ip) => Some(ip),
            _ => None,
        }
    }
}

/// The PSB packet's bytes.
pub const PSB: [u8; 16] = [
    0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82,
];
const PSB_LEN: usize = PSB.len();

/// Whether BIP packets can appear at this point: only inside a BBP…BEP block, where a byte
/// `xxxxx100` is a BIP (of the item size BBP announced) rather than a short TNT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BlockContext {
    #[default]
    None,
    /// Inside a block of 4-byte items.
    Items4,
    /// Inside a block of 8-byte items.
    Items8,
}

impl BlockContext {
    /// The context after `packet`. Timing, power and FUP packets may sit inside a block and keep
    /// it; every other packet ends it (as perf's decoder does).
    pub fn after(self, packet: &Packet) -> BlockContext {
        match packet {
            Packet::Bbp(bbp) => {
                if bbp.item_size() == 4 {
                    BlockContext::Items4
                } else {
                    BlockContext::Items8
                }
            }
            Packet::Pad
            | Packet::Tsc { .. }
            | Packet::Tma(_)
            | Packet::Mtc { .. }
            | Packet::Fup(_)
            | Packet::Cyc { .. }
            | Packet::Cbr { .. }
            | Packet::Mnt { .. }
            | Packet::Exstop { .. }
            | Packet::Pwre(_)
            | Packet::Pwrx(_)
            | Packet::Bip { .. }
            | Packet::Trig(_) => self,
            _ => BlockContext::None,
        }
    }
}

/// Little-endian value of up to 8 bytes.
fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |value, &byte| value << 8 | u64::from(byte))
}

/// Decodes the packet at `offset`. `block` tells whether a BIP may appear here.
pub fn decode(data: &[u8], offset: usize, block: BlockContext) -> Result<Packet, PacketError> {
    let buf = data.get(offset..).unwrap_or(&[]);
    decode_bytes(buf, block).map_err(|kind| PacketError { offset, kind })
}

/// The first `len` bytes of `buf`, or `Truncated`.
fn take(buf: &[u8], len: usize) -> Result<&[u8], PacketErrorKind> {
    buf.get(..len).ok_or(PacketErrorKind::Truncated)
}

fn decode_bytes(buf: &[u8], block: BlockContext) -> Result<Packet, PacketErrorKind> {
    use PacketErrorKind::*;
    let &byte = buf.first().ok_or(Truncated)?;

    let bip_size = match block {
        BlockContext::None => None,
        BlockContext::Items4 => Some(4u8),
        BlockContext::Items8 => Some(8u8),
    };
    if let Some(size) = bip_size {
        if byte & 7 == 4 {
            let bytes = take(buf, 1 + size as usize)?;
            return Ok(Packet::Bip {
                id: byte >> 3,
                value: le(&bytes[1..]),
                size,
            });
        }
    }

    if byte & 1 == 0 {
        return match byte {
            0x00 => Ok(Packet::Pad),
            0x02 => decode_ext(buf),
            _ => {
                // The highest set bit is the stop bit; the bits between it and bit 0 are outcomes.
                let stop = 7 - byte.leading_zeros() as u8;
                let count = stop - 1;
                Ok(Packet::Tnt(Tnt {
                    bits: u64::from(byte >> 1) & ((1u64 << count) - 1),
                    count,
                    long: false,
                }))
            }
        };
    }

    if byte & 2 != 0 {
        return decode_cyc(buf, byte);
    }

    let ip_packet = |make: fn(IpPayload) -> Packet| -> Result<Packet, PacketErrorKind> {
        let code = byte >> 5;
        let compression = IpCompression::from_code(code).ok_or(ReservedIpCompression(code))?;
        let bytes = take(buf, 1 + compression.payload_len())?;
        Ok(make(IpPayload {
            compression,
            raw: le(&bytes[1..]),
        }))
    };
    match byte & 0x1f {
        0x0d => ip_packet(Packet::Tip),
        0x11 => ip_packet(Packet::TipPge),
        0x01 => ip_packet(Packet::TipPgd),
        0x1d => ip_packet(Packet::Fup),
        _ => match byte {
            0x99 => {
                let mode = take(buf, 2)?[1];
                match mode >> 5 {
                    0 => Ok(Packet::ModeExec(ModeExec { bits: mode & 0x1f })),
                    1 => Ok(Packet::ModeTsx(ModeTsx { bits: mode & 0x1f })),
                    _ => Err(Malformed("MODE")),
                }
            }
            0x19 => Ok(Packet::Tsc {
                tsc: le(&take(buf, 8)?[1..]),
            }),
            0x59 => Ok(Packet::Mtc {
                ctc: take(buf, 2)?[1],
            }),
            0xd9 => {
                let head = take(buf, 3)?;
                let icnt = if head[1] & 0x40 != 0 {
                    Some(le(&take(buf, 5)?[3..]) as u16)
                } else {
                    None
                };
                Ok(Packet::Trig(Trig {
                    flags: head[1],
                    trbv: head[2],
                    icnt,
                }))
            }
            _ => Err(UnknownOpcode),
        },
    }
}

/// Longest CYC packet: the opcode byte and 9 extension bytes (perf's limit; 64 bits of count).
const CYC_MAX_LEN: usize = 10;

fn decode_cyc(buf: &[u8], byte: u8) -> Result<Packet, PacketErrorKind> {
    let mut cycles = u64::from(byte >> 3);
    let mut more = byte & 4 != 0;
    let mut len = 1usize;
    let mut shift = 5u32;
    while more {
        if len >= CYC_MAX_LEN {
            return Err(PacketErrorKind::Malformed("CYC"));
        }
        let &next = buf.get(len).ok_or(PacketErrorKind::Truncated)?;
        // shift stays below 64 (at most 5 + 7 * 8); bits shifted past bit 63 are dropped.
        cycles |= u64::from(next >> 1) << shift;
        shift += 7;
        more = next & 1 != 0;
        len += 1;
    }
    Ok(Packet::Cyc {
        cycles,
        size: len as u8,
    })
}

/// Packets whose first byte is `02`.
fn decode_ext(buf: &[u8]) -> Result<Packet, PacketErrorKind> {
    use PacketErrorKind::*;
    let ext = take(buf, 2)?[1];
    if ext & 0x1f == 0x12 {
        let size = match (ext >> 5) & 3 {
            0 => 4u8,
            1 => 8u8,
            _ => return Err(Malformed("PTW")),
        };
        let bytes = take(buf, 2 + size as usize)?;
        return Ok(Packet::Ptw(Ptw {
            payload: le(&bytes[2..]),
            size,
            ip: ext & 0x80 != 0,
        }));
    }
    // The payload after the two opcode bytes, checked to be `len` bytes long.
    let payload = |len: usize| take(buf, 2 + len).map(|bytes| &bytes[2..]);
    Ok(match ext {
        0xa3 => {
            let bits = le(payload(6)?);
            // The highest set bit of the 48-bit payload is the stop bit.
            let count = 63u32.saturating_sub(bits.leading_zeros()) as u8;
            Packet::Tnt(Tnt {
                bits: bits & ((1u64 << count) - 1),
                count,
                long: true,
            })
        }
        0x43 => Packet::Pip(Pip {
            payload: le(payload(6)?),
        }),
        0x83 => Packet::Stop,
        0x03 => Packet::Cbr {
            payload: le(payload(2)?) as u16,
        },
        0xc8 => Packet::Vmcs {
            payload: le(payload(5)?),
        },
        0xf3 => Packet::Ovf,
        0x82 => {
            if take(buf, PSB_LEN)? != PSB {
                return Err(Malformed("PSB"));
            }
            Packet::Psb
        }
        0x23 => Packet::PsbEnd,
        0x73 => {
            let p = payload(5)?;
            Packet::Tma(Tma {
                ctc: le(&p[..2]) as u16,
                reserved: p[2],
                fast_counter_raw: le(&p[3..]) as u16,
            })
        }
        0xc3 => {
            // A three-byte opcode: only MNT (`02 C3 88`) is defined.
            if take(buf, 3)?[2] != 0x88 {
                return Err(UnknownOpcode);
            }
            Packet::Mnt {
                payload: le(&take(buf, 11)?[3..]),
            }
        }
        0x62 => Packet::Exstop { ip: false },
        0xe2 => Packet::Exstop { ip: true },
        0xc2 => {
            let p = payload(8)?;
            Packet::Mwait {
                hints: le(&p[..4]) as u32,
                extensions: le(&p[4..]) as u32,
            }
        }
        0x22 => Packet::Pwre(Pwre {
            payload: le(payload(2)?) as u16,
        }),
        0xa2 => Packet::Pwrx(Pwrx {
            payload: le(payload(5)?),
        }),
        0x63 => Packet::Bbp(Bbp {
            bits: payload(1)?[0],
        }),
        0x33 => Packet::Bep { ip: false },
        0xb3 => Packet::Bep { ip: true },
        0x13 => {
            let p = payload(2)?;
            Packet::Cfe(Cfe {
                bits: p[0],
                vector: p[1],
            })
        }
        0x53 => {
            let p = payload(9)?;
            Packet::Evd(Evd {
                type_byte: p[0],
                payload: le(&p[1..]),
            })
        }
        _ => return Err(UnknownOpcode),
    })
}

/// Offset of the first PSB that starts at or after `from`.
///
/// A run of `02 82` pairs longer than a PSB is taken to end with the PSB: the earlier pairs are
/// then the payload of a packet before it (libipt resynchronises the same way).
pub fn next_psb(data: &[u8], from: usize) -> Option<usize> {
    let tail = data.get(from..)?;
    let start = from + tail.windows(PSB_LEN).position(|window| window == PSB)?;
    let mut psb = start;
    while data.get(psb + PSB_LEN..psb + PSB_LEN + 2) == Some(&[0x02, 0x82][..]) {
        psb += 2;
    }
    Some(psb)
}

/// What [`Packets`] does after yielding an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Stop: the iterator yields `None` until [`Packets::skip_byte`], [`Packets::resync`] or
    /// [`Packets::seek`] is called.
    #[default]
    Stop,
    /// Go on at the next byte, as `perf script -D` does.
    SkipByte,
    /// Go on at the next PSB, as a flow decoder does.
    NextPsb,
}

/// An iterator over the packets of a buffer, yielding `(offset, packet)` or an error.
///
/// It tracks the BBP…BEP block context and the last IP ([`Packets::last_ip`]); a PSB resets both.
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    data: &'a [u8],
    pos: usize,
    block: BlockContext,
    last_ip: LastIp,
    recovery: Recovery,
    halted: bool,
}

impl<'a> Packets<'a> {
    /// Decodes from offset 0, without looking for a PSB first.
    pub fn new(data: &'a [u8]) -> Self {
        Packets {
            data,
            pos: 0,
            block: BlockContext::None,
            last_ip: LastIp::new(),
            recovery: Recovery::Stop,
            halted: false,
        }
    }

    /// Sets what happens after an error (default: [`Recovery::Stop`]).
    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    /// The offset of the next packet to decode.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// The last IP after the packets so far (IP compression's reference).
    pub fn last_ip(&self) -> &LastIp {
        &self.last_ip
    }

    /// The block context the next packet is decoded in.
    pub fn block_context(&self) -> BlockContext {
        self.block
    }

    /// Continues at `offset` with no block context and no last IP.
    pub fn seek(&mut self, offset: usize) {
        self.pos = offset.min(self.data.len());
        self.block = BlockContext::None;
        self.last_ip.reset();
        self.halted = false;
    }

    /// Steps over one byte (after an error), keeping the block context and last IP, as perf does.
    pub fn skip_byte(&mut self) {
        self.pos = self.pos.saturating_add(1).min(self.data.len());
        self.halted = false;
    }

    /// Moves to the next PSB after the current offset; returns its offset, or `None` (and the
    /// iterator is exhausted) when there is none.
    pub fn resync(&mut self) -> Option<usize> {
        let found = next_psb(self.data, self.pos.saturating_add(1));
        self.seek(found.unwrap_or(self.data.len()));
        found
    }
}

impl Iterator for Packets<'_> {
    type Item = Result<(usize, Packet), PacketError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.halted || self.pos >= self.data.len() {
            return None;
        }
        let offset = self.pos;
        match decode(self.data, offset, self.block) {
            Ok(packet) => {
                self.pos = offset.saturating_add(packet.size());
                self.block = self.block.after(&packet);
                if packet == Packet::Psb {
                    self.last_ip.reset();
                }
                if let Some(ip) = packet.ip_payload() {
                    self.last_ip.update(ip);
                }
                Some(Ok((offset, packet)))
            }
            Err(error) => {
                match self.recovery {
                    Recovery::Stop => self.halted = true,
                    Recovery::SkipByte => self.skip_byte(),
                    Recovery::NextPsb => {
                        self.resync();
                    }
                }
                Some(Err(error))
            }
        }
    }
}
