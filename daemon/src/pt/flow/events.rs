//! Packets to events: the layer between `pt::packets` and the block decoder (libipt's event
//! decoder model).
//!
//! Packets that belong together are bound here: a FUP followed by a TIP is an asynchronous
//! branch, FUP + TIP.PGD an asynchronous disable, MODE.TSX or PTW + FUP an event at the FUP's
//! IP, OVF + FUP the overflow's resume IP, PSB+ packets status updates at PSBEND. TNT and TIP
//! become events too, so the block decoder consumes one ordered stream.

use crate::pt::packets::{self, BlockContext, IpPayload, LastIp, Packet, PacketErrorKind, PSB};

use super::errata::Errata;
use super::insn::ExecMode;
use super::time::{PacketContext, PerfTiming, Time};
use super::ErrorKind;

/// What happened, in the trace's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Tracing enabled (TIP.PGE, or PSB+ with a FUP); `resumed` when at the IP where it had been
    /// disabled.
    Enabled {
        ip: Option<u64>,
        resumed: bool,
    },
    /// Tracing disabled synchronously (TIP.PGD) at a branch; `ip` is the target, if given.
    Disabled {
        ip: Option<u64>,
    },
    /// Tracing disabled asynchronously (FUP + TIP.PGD) at `at`.
    AsyncDisabled {
        at: u64,
        ip: Option<u64>,
    },
    /// An interrupt, exception or other asynchronous transfer (FUP + TIP).
    AsyncBranch {
        from: u64,
        to: Option<u64>,
    },
    /// A CR3 write bound to the next instruction that binds to PIP.
    Paging {
        cr3: u64,
        nr: bool,
    },
    /// A CR3 change at `ip` (PIP between FUP and TIP, or in PSB+).
    AsyncPaging {
        cr3: u64,
        nr: bool,
        ip: Option<u64>,
    },
    /// Trace lost; decoding resumes at `ip` (None: tracing was disabled when it resolved).
    Overflow {
        ip: Option<u64>,
    },
    /// MODE.Exec change at `ip`.
    ExecMode {
        mode: ExecMode,
        ip: Option<u64>,
    },
    /// MODE.TSX: transaction begin/commit/abort at `ip`.
    Tsx {
        ip: Option<u64>,
        speculative: bool,
        aborted: bool,
    },
    /// TraceStop.
    Stop,
    /// VMCS base bound to the next instruction that binds to VMCS.
    Vmcs {
        base: u64,
    },
    /// VMCS base at `ip`.
    AsyncVmcs {
        base: u64,
        ip: Option<u64>,
    },
    Exstop {
        ip: Option<u64>,
    },
    Mwait {
        ip: Option<u64>,
        hints: u32,
        ext: u32,
    },
    Pwre {
        state: u8,
        sub_state: u8,
        hw: bool,
    },
    Pwrx {
        last: u8,
        deepest: u8,
        interrupt: bool,
        store: bool,
        autonomous: bool,
    },
    Ptwrite {
        ip: Option<u64>,
        size: u8,
        payload: u64,
    },
    /// A timing update near `ip`.
    Tick {
        ip: Option<u64>,
    },
    Cbr {
        ratio: u8,
    },
    Mnt {
        payload: u64,
    },
    /// perf mode only: a FUP while tracing is disabled, which perf 6.1 takes as the IP to walk
    /// the next trace from (`intel_pt_walk_trace`).
    PerfIp {
        ip: u64,
    },
    /// An indirect branch target (consumed by the block decoder).
    Tip {
        ip: Option<u64>,
    },
    /// Conditional branch outcomes, `size` of them in `bits`, oldest highest (consumed by the
    /// block decoder).
    Tnt {
        bits: u64,
        size: u8,
    },
    /// Internal: a MODE.Exec that changed nothing still binds to its TIP/FUP.
    Ignore,
}

/// An event with its status-update flag and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// From PSB+: the state at that point, not a change.
    pub status_update: bool,
    /// The estimated TSC at the event, when timing packets gave one.
    pub tsc: Option<u64>,
}

impl Event {
    fn new(kind: EventKind) -> Self {
        Event {
            kind,
            status_update: false,
            tsc: None,
        }
    }

    /// The IP the event binds to is not known.
    pub fn ip_suppressed(&self) -> bool {
        let mut event = *self;
        event.ip_field().is_some_and(|ip| ip.is_none())
    }

    /// The field holding the IP the event binds to, for kinds that have one.
    fn ip_field(&mut self) -> Option<&mut Option<u64>> {
        match &mut self.kind {
            EventKind::Enabled { ip, .. }
            | EventKind::Disabled { ip }
            | EventKind::AsyncDisabled { ip, .. }
            | EventKind::AsyncPaging { ip, .. }
            | EventKind::Overflow { ip }
            | EventKind::ExecMode { ip, .. }
            | EventKind::Tsx { ip, .. }
            | EventKind::AsyncVmcs { ip, .. }
            | EventKind::Exstop { ip }
            | EventKind::Mwait { ip, .. }
            | EventKind::Ptwrite { ip, .. }
            | EventKind::Tick { ip }
            | EventKind::Tip { ip } => Some(ip),
            EventKind::AsyncBranch { to, .. } => Some(to),
            _ => None,
        }
    }

    /// Fills the event's IP field from the last IP.
    fn set_ip(&mut self, last: &LastIp) {
        if let Some(ip) = self.ip_field() {
            *ip = last.get();
        }
    }

    fn suppress_ip(&mut self) {
        self.set_ip(&LastIp::new());
    }
}

/// What an event waits for (libipt's `evb_*`).
mod bind {
    pub const PSBEND: u8 = 1 << 0;
    pub const TIP: u8 = 1 << 1;
    pub const FUP: u8 = 1 << 2;
    pub const FUP_BOUND: u8 = 1 << 3;
    pub const EXSTOP: u8 = 1 << 4;
    pub const PWRX: u8 = 1 << 5;
    pub const ALL: u8 = 0xff;
}

const QUEUE_LEN: usize = 15;

/// Events waiting for the packet they bind to, in order; fixed size, no allocation.
#[derive(Debug, Clone, Copy)]
struct Queue {
    items: [(u8, Event); QUEUE_LEN],
    len: usize,
}

impl Queue {
    fn new() -> Self {
        Queue {
            items: [(0, Event::new(EventKind::Ignore)); QUEUE_LEN],
            len: 0,
        }
    }

    fn push(&mut self, binding: u8, event: Event) -> Result<(), ErrorKind> {
        // libipt's queue holds 14; more pending events than that is a broken trace.
        if self.len + 1 >= QUEUE_LEN {
            return Err(ErrorKind::Nomem);
        }
        self.items[self.len] = (binding, event);
        self.len += 1;
        Ok(())
    }

    fn position(&self, binding: u8) -> Option<usize> {
        self.items[..self.len]
            .iter()
            .position(|(b, _)| b & binding != 0)
    }

    fn pending(&self, binding: u8) -> bool {
        self.position(binding).is_some()
    }

    fn remove(&mut self, index: usize) -> Event {
        let event = self.items[index].1;
        self.items.copy_within(index + 1..self.len, index);
        self.len -= 1;
        event
    }

    fn pop(&mut self, binding: u8) -> Option<Event> {
        let index = self.position(binding)?;
        Some(self.remove(index))
    }

    fn find(&self, binding: u8, pred: impl Fn(&EventKind) -> bool) -> Option<usize> {
        self.items[..self.len]
            .iter()
            .position(|(b, e)| b & binding != 0 && pred(&e.kind))
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

/// The lookahead packet: decoded, or the error that stopped decoding there.
#[derive(Debug, Clone, Copy)]
enum Lookahead {
    Packet(Packet),
    Error(ErrorKind),
}

/// Whether a packet handler produced an event or wants the next packet.
enum Step {
    Event,
    Next,
}

/// How an overflow resolves.
enum OvfEnd {
    /// Tracing is enabled at the IP of the packet at this offset (a FUP, or a TIP for SKD010).
    Fup(usize),
    /// Tracing was disabled; the packet at the offset (if any) belongs to no event and is
    /// dropped (errata).
    Disabled(Option<usize>),
}

/// Reads packets ahead of the decoder without changing it.
#[derive(Clone)]
struct Ahead<'a> {
    data: &'a [u8],
    pos: usize,
    block: BlockContext,
}

impl<'a> Ahead<'a> {
    fn new(data: &'a [u8], pos: usize, block: BlockContext) -> Self {
        Ahead { data, pos, block }
    }

    /// The next packet and its offset.
    fn next(&mut self) -> Result<(usize, Packet), ErrorKind> {
        if self.pos >= self.data.len() {
            return Err(ErrorKind::Eos);
        }
        let at = self.pos;
        let packet =
            packets::decode(self.data, at, self.block).map_err(|error| packet_error(error.kind))?;
        self.pos += packet.size();
        self.block = self.block.after(&packet);
        Ok((at, packet))
    }

    /// Whether tracing gets enabled next: a TIP.PGE after status packets, or a PSB+ without a
    /// FUP (tracing disabled) followed by one.
    fn enables_next(&mut self) -> Result<bool, ErrorKind> {
        let mut in_psb = false;
        loop {
            match self.next()?.1 {
                Packet::TipPge(_) => return Ok(true),
                Packet::Psb => in_psb = true,
                Packet::PsbEnd => in_psb = false,
                Packet::Fup(_) if in_psb => return Ok(false),
                Packet::Pad
                | Packet::Vmcs { .. }
                | Packet::Pip(_)
                | Packet::ModeExec(_)
                | Packet::ModeTsx(_)
                | Packet::Mnt { .. }
                | Packet::Cbr { .. }
                | Packet::Tsc { .. }
                | Packet::Tma(_)
                | Packet::Mtc { .. }
                | Packet::Cyc { .. } => {}
                _ => return Ok(false),
            }
        }
    }
}

/// PSB segments a decoder starting in mid-trace replays for perf's clock: one usually
/// suffices (its first MTC after a CYC resets the CYC reference); two leave less to chance.
const WARM_SEGMENTS: usize = 2;

/// perf 6.1's scan for a place to resume after a decoding error (`intel_pt_walk_to_ip`,
/// entered from `intel_pt_sync_ip`): where it is and what it knows.
#[derive(Debug, Clone, Copy)]
pub struct PerfWalk {
    /// The next packet to read.
    pub pos: usize,
    /// perf's `decoder->ip`: the IP it resumes at when an IP packet gives none (a stale IP
    /// after a mismatch, 0 after a missing instruction).
    pub ip: u64,
    /// perf's `last_ip` for IP decompression.
    pub last_ip: LastIp,
    /// perf's `have_last_ip`: without it only full IPs count.
    pub have_last_ip: bool,
    block: BlockContext,
}

impl PerfWalk {
    /// A scan from `pos`. `ip: None` is perf's `INTEL_PT_STATE_NO_IP` (after "Failed to get
    /// instruction"): the IP and last IP are forgotten. `Some(ip)` is
    /// `INTEL_PT_STATE_ERR_RESYNC`: both are kept.
    pub fn new(pos: usize, ip: Option<u64>, last_ip: LastIp) -> Self {
        PerfWalk {
            pos,
            ip: ip.unwrap_or(0),
            last_ip: if ip.is_some() { last_ip } else { LastIp::new() },
            have_last_ip: ip.is_some() && !last_ip.is_empty(),
            block: BlockContext::None,
        }
    }
}

/// Which IP packet a [`PerfWalk`] stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncIp {
    Tip,
    Fup,
    /// TIP.PGE: tracing (re)starts.
    Enable,
    /// TIP.PGD: tracing stops.
    Disable,
}

/// One step of a [`PerfWalk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkStep {
    /// A packet perf cannot decode at this offset: perf reports "Bad packet" and scans on
    /// from the next byte.
    Bad(usize),
    /// An IP packet with an IP to resume at; decoding goes on after it (`walk.pos`).
    Ip(ResyncIp),
    /// A PSB at this offset: decoding synchronises there.
    Psb(usize),
    /// An OVF at this offset: decoding goes on with it.
    Ovf(usize),
    /// The trace ended.
    End,
}

/// Options of the event layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventConfig {
    /// MTC frequency (IA32_RTIT_CTL.MTCFreq), for time estimates.
    pub mtc_freq: u8,
    /// TSC:CTC ratio numerator and denominator (CPUID 0x15 EBX/EAX).
    pub ctc_ratio: Option<(u32, u32)>,
    /// Time as perf 6.1 computes it instead of libipt (the perf pipeline's choice).
    pub perf: Option<PerfTiming>,
}

/// Packets in, events out.
#[derive(Clone)]
pub struct EventDecoder<'a> {
    data: &'a [u8],
    /// Where the buffers joined in `data` end (ascending; empty: one buffer).
    buffer_ends: &'a [usize],
    /// Offset after the lookahead packet.
    pos: usize,
    /// Offset of the lookahead packet.
    packet_offset: usize,
    packet: Lookahead,
    /// The packet before the lookahead one (PADs aside) was a CYC: perf's clock needs it.
    after_cyc: bool,
    block: BlockContext,
    /// Offset of the PSB the decoder last synchronised at.
    sync: Option<usize>,
    /// Offset of the PSB the last explicit synchronisation went to.
    synced_at: Option<usize>,
    event: Option<Event>,
    /// Offset of the packet the last event returned by [`Self::next_event`] started at.
    event_offset: usize,
    enabled: bool,
    bound: bool,
    mode_exec_valid: bool,
    mode: ExecMode,
    ip: LastIp,
    queue: Queue,
    pub(super) time: Time,
    config: EventConfig,
    errata: Errata,
    /// The packet whose IP resolves a pending overflow (a FUP, or a TIP for SKD010).
    ovf_ip_at: Option<usize>,
    /// A packet an erratum workaround drops.
    skip_at: Option<usize>,
    /// perf 6.1's reading of damaged trace ([`Self::with_perf_mode`]).
    perf_mode: bool,
    /// Reading a PSB+ failed before its end.
    in_psb: bool,
}

fn packet_error(kind: PacketErrorKind) -> ErrorKind {
    match kind {
        PacketErrorKind::UnknownOpcode => ErrorKind::BadOpc,
        PacketErrorKind::Truncated => ErrorKind::Eos,
        PacketErrorKind::ReservedIpCompression(_) | PacketErrorKind::Malformed(_) => {
            ErrorKind::BadPacket
        }
    }
}

fn exec_mode(mode: packets::ModeExec) -> ExecMode {
    match mode.mode() {
        packets::ExecMode::Bits16 => ExecMode::Bits16,
        packets::ExecMode::Bits32 => ExecMode::Bits32,
        packets::ExecMode::Bits64 => ExecMode::Bits64,
        packets::ExecMode::Invalid => ExecMode::Unknown,
    }
}

impl<'a> EventDecoder<'a> {
    pub fn new(data: &'a [u8], config: EventConfig) -> Self {
        EventDecoder {
            data,
            buffer_ends: &[],
            pos: 0,
            packet_offset: 0,
            packet: Lookahead::Error(ErrorKind::Nosync),
            after_cyc: false,
            block: BlockContext::None,
            sync: None,
            synced_at: None,
            event: None,
            event_offset: 0,
            enabled: false,
            bound: false,
            mode_exec_valid: false,
            mode: ExecMode::Unknown,
            ip: LastIp::new(),
            queue: Queue::new(),
            time: Time::new(config),
            config,
            errata: Errata::default(),
            ovf_ip_at: None,
            skip_at: None,
            perf_mode: false,
            in_psb: false,
        }
    }

    /// The trace is buffers joined, each ending at one of `ends` (ascending offsets).
    pub fn set_buffer_ends(&mut self, ends: &'a [usize]) {
        self.buffer_ends = ends;
    }

    /// The bytes after `pos` up to the end of the buffer holding the packet at `at`: all
    /// perf's look-ahead reads.
    fn rest_of_buffer(&self, at: usize, pos: usize) -> &'a [u8] {
        let i = self.buffer_ends.partition_point(|&end| end <= at);
        let end = self.buffer_ends.get(i).copied().unwrap_or(self.data.len());
        self.data.get(pos..end.min(self.data.len())).unwrap_or(&[])
    }

    /// Reads damaged trace as perf 6.1 does: a TNT or TIP while tracing is disabled is taken
    /// as trace (perf's `intel_pt_walk_trace` walks it from the IP it has) rather than
    /// refused. (A packet cut short by the trace's end is perf's bad packet with perf's
    /// clock, [`EventConfig::perf`].)
    pub fn with_perf_mode(mut self) -> Self {
        self.perf_mode = true;
        self
    }

    /// Applies the workarounds for `errata`.
    pub fn with_errata(mut self, errata: Errata) -> Self {
        self.errata = errata;
        self
    }

    /// Offset of the next packet to process (libipt's `pt_evt_get_offset`).
    pub fn offset(&self) -> usize {
        self.packet_offset
    }

    /// Offset of the last PSB synchronised at.
    pub fn sync_offset(&self) -> Option<usize> {
        self.sync
    }

    /// Offset of the packet the last event returned by [`Self::next_event`] came from (for a
    /// PSB+ status update, the PSB).
    pub fn event_offset(&self) -> usize {
        self.event_offset
    }

    /// Offset of the PSB the last explicit synchronisation went to.
    pub fn synced_at(&self) -> Option<usize> {
        self.synced_at
    }

    /// Where the packet iterator is: a proxy for progress.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Feeds the lookahead timing packet to the clock, with where it sits in the trace.
    fn update_time(&mut self, packet: &Packet) {
        let ctx = PacketContext {
            after_cyc: self.after_cyc,
            rest: self.rest_of_buffer(self.packet_offset, self.pos),
            block: self.block,
        };
        self.time.update_in(packet, &ctx);
    }

    fn reset(&mut self) {
        self.packet = Lookahead::Error(ErrorKind::Nosync);
        self.event = None;
        self.enabled = false;
        self.bound = false;
        self.mode_exec_valid = false;
        self.ip.reset();
        self.queue.clear();
        self.ovf_ip_at = None;
        self.skip_at = None;
        self.in_psb = false;
    }

    /// Reads the next non-PAD packet into the lookahead.
    fn fetch_packet(&mut self) {
        self.after_cyc = matches!(self.packet, Lookahead::Packet(Packet::Cyc { .. }));
        loop {
            self.packet_offset = self.pos;
            if self.pos >= self.data.len() {
                self.packet = Lookahead::Error(ErrorKind::Eos);
                return;
            }
            match packets::decode(self.data, self.pos, self.block) {
                Ok(mut packet) => {
                    let mut size = packet.size();
                    // SKD007: an OVF overwrote the second byte of a CYC (`xx 02 F3`).
                    if self.errata.skd007
                        && matches!(packet, Packet::Cyc { size: 2, .. })
                        && self.data.get(self.pos + 1..self.pos + 3) == Some(&[0x02, 0xf3][..])
                    {
                        packet = Packet::Ovf;
                        size = 3;
                    }
                    self.pos += size;
                    self.block = self.block.after(&packet);
                    if packet == Packet::Pad {
                        continue;
                    }
                    if self.skip_at == Some(self.packet_offset) {
                        self.skip_at = None;
                        continue;
                    }
                    // Every PSB is a synchronisation point (resync goes back to the last).
                    if packet == Packet::Psb {
                        self.sync = Some(self.packet_offset);
                    }
                    self.packet = Lookahead::Packet(packet);
                }
                Err(error) => {
                    // A packet cut by the end of the trace: libipt's end of stream, perf's
                    // "Bad packet" (it does not join a packet split across buffers either).
                    let kind = match error.kind {
                        PacketErrorKind::Truncated if self.config.perf.is_some() => {
                            ErrorKind::BadPacket
                        }
                        kind => packet_error(kind),
                    };
                    self.packet = Lookahead::Error(kind);
                }
            }
            return;
        }
    }

    /// The trace.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The offset of the packet perf could not decode, when that is what stopped the decoder.
    pub fn bad_packet_at(&self) -> Option<usize> {
        match self.packet {
            Lookahead::Error(ErrorKind::BadOpc | ErrorKind::BadPacket) => Some(self.packet_offset),
            _ => None,
        }
    }

    /// perf's answer to a bad packet (`intel_pt_bad_packet`): step one byte and read on, the
    /// decoder's state otherwise as it was.
    pub fn skip_bad_packet(&mut self) {
        self.in_psb = false;
        self.pos = self.packet_offset + 1;
        self.fetch_packet();
    }

    /// With [`Self::bad_packet_at`]: whether the bad packet is inside a PSB+, and the IP of
    /// that PSB+'s FUP if one came before it.
    pub fn bad_packet_in_psb(&self) -> Option<Option<u64>> {
        self.bad_packet_at()?;
        self.in_psb.then(|| self.ip.get())
    }

    /// The last IP as the packets read so far left it.
    pub fn last_ip(&self) -> LastIp {
        self.ip
    }

    /// Reads the next packet of a [`PerfWalk`]: skips what perf's `intel_pt_walk_to_ip` skips
    /// (timing packets still set the clock) and stops where it stops.
    pub fn perf_walk(&mut self, walk: &mut PerfWalk) -> WalkStep {
        loop {
            let at = walk.pos;
            if at >= self.data.len() {
                return WalkStep::End;
            }
            let packet = match packets::decode(self.data, at, walk.block) {
                Ok(packet) => packet,
                // A packet cut short by the end of the trace included.
                Err(_) => {
                    walk.pos = at + 1;
                    return WalkStep::Bad(at);
                }
            };
            walk.pos = at + packet.size();
            walk.block = walk.block.after(&packet);
            let (payload, kind) = match packet {
                Packet::Tip(ip) => (ip, ResyncIp::Tip),
                Packet::Fup(ip) => (ip, ResyncIp::Fup),
                Packet::TipPge(ip) => (ip, ResyncIp::Enable),
                Packet::TipPgd(ip) => (ip, ResyncIp::Disable),
                Packet::Psb => return WalkStep::Psb(at),
                Packet::Ovf => return WalkStep::Ovf(at),
                Packet::Tsc { .. }
                | Packet::Mtc { .. }
                | Packet::Tma(_)
                | Packet::Cyc { .. }
                | Packet::Cbr { .. } => {
                    self.time.update(&packet);
                    continue;
                }
                _ => continue,
            };
            // perf's `intel_pt_have_ip`: an IP is usable if not suppressed and either a last
            // IP is known or the packet carries all of it.
            let full = matches!(
                payload.compression,
                packets::IpCompression::Sext48 | packets::IpCompression::Full
            );
            if payload.compression != packets::IpCompression::Suppressed
                && (walk.have_last_ip || full)
            {
                walk.last_ip.update(&payload);
                walk.have_last_ip = true;
                if let Some(ip) = walk.last_ip.get() {
                    walk.ip = ip;
                }
            }
            // A stale IP is as good as a new one to perf; only none at all is not.
            if walk.ip != 0 {
                return WalkStep::Ip(kind);
            }
        }
    }

    /// Goes on decoding at `pos` after a [`PerfWalk`]: the packets before it are dropped with
    /// whatever they had bound, the clock is kept.
    /// `enabled: None` keeps the enable state (perf's `pge`) as it was.
    pub fn resume_at(&mut self, walk: &PerfWalk, pos: usize, enabled: Option<bool>) {
        let was = self.enabled;
        self.reset();
        self.ip = walk.last_ip;
        self.enabled = enabled.unwrap_or(was);
        self.pos = pos.min(self.data.len());
        self.block = walk.block;
        self.fetch_packet();
    }

    /// Synchronises at the next PSB at or after the current position and reads its PSB+.
    pub fn sync_forward(&mut self) -> Result<(), ErrorKind> {
        // Search from the lookahead packet: it may be the next PSB already.
        let mut from = self.packet_offset.min(self.pos);
        if Some(from) == self.synced_at {
            from += PSB.len();
        }
        self.sync_from(from)
    }

    /// Synchronises at the first PSB at or after `from` and reads its PSB+.
    pub fn sync_from(&mut self, from: usize) -> Result<(), ErrorKind> {
        self.reset();
        // Each PSB segment decodes on its own: timing starts afresh too.
        self.time.restart(self.config);
        let Some(psb) = packets::next_psb(self.data, from.min(self.data.len())) else {
            self.pos = self.data.len();
            self.packet_offset = self.pos;
            self.packet = Lookahead::Error(ErrorKind::Eos);
            return Err(ErrorKind::Eos);
        };
        self.sync_at(psb)
    }

    /// Synchronises at the PSB at `offset`.
    pub fn sync_set(&mut self, offset: usize) -> Result<(), ErrorKind> {
        let cold = self.sync.is_none();
        self.reset();
        self.time.restart(self.config);
        if self.data.get(offset..offset + PSB.len()) != Some(&PSB[..]) {
            return Err(ErrorKind::Nosync);
        }
        if cold && self.config.perf.is_some() {
            self.warm_clock(offset);
        }
        self.sync_at(offset)
    }

    /// perf's clock carries state across a PSB that its PSB+ does not restore: the CYC
    /// reference time, the cycles since and the calibrated rate. A decoder starting at a
    /// PSB in mid-trace replays the timing packets of the segments before it
    /// ([`WARM_SEGMENTS`]) to rebuild them. Exact when those segments hold an MTC that
    /// follows a CYC whose time the earlier history did not decide; an approximation
    /// otherwise.
    fn warm_clock(&mut self, offset: usize) {
        let mut from = offset;
        for _ in 0..WARM_SEGMENTS {
            match self
                .data
                .get(..from)
                .and_then(|d| d.windows(PSB.len()).rposition(|w| w == PSB))
            {
                Some(psb) => from = psb,
                None => break,
            }
        }
        let (mut pos, mut block, mut after_cyc) = (from, BlockContext::None, false);
        while pos < offset {
            let Ok(packet) = packets::decode(self.data, pos, block) else {
                break;
            };
            let at = pos;
            pos += packet.size();
            block = block.after(&packet);
            match packet {
                Packet::Pad => continue,
                Packet::Tsc { .. }
                | Packet::Tma(_)
                | Packet::Mtc { .. }
                | Packet::Cyc { .. }
                | Packet::Cbr { .. } => {
                    let ctx = PacketContext {
                        after_cyc,
                        rest: self.rest_of_buffer(at, pos),
                        block,
                    };
                    self.time.update_in(&packet, &ctx);
                }
                _ => {}
            }
            after_cyc = matches!(packet, Packet::Cyc { .. });
        }
    }

    fn sync_at(&mut self, psb: usize) -> Result<(), ErrorKind> {
        self.sync = Some(psb);
        self.synced_at = Some(psb);
        self.pos = psb;
        self.block = BlockContext::None;
        self.fetch_packet();
        match self.packet {
            Lookahead::Packet(Packet::Psb) => self.decode_psb(),
            Lookahead::Error(error) => Err(error),
            Lookahead::Packet(_) => Err(ErrorKind::Nosync),
        }
    }

    /// The next event.
    pub fn next_event(&mut self) -> Result<Event, ErrorKind> {
        loop {
            let at = self.packet_offset;
            match self.decode_packet()? {
                Step::Event => {
                    self.event_offset = at;
                    break;
                }
                Step::Next => {
                    // The packet is done without an event; the next one is not bound yet.
                    self.bound = false;
                    self.fetch_packet();
                }
            }
        }
        self.event.take().ok_or(ErrorKind::Internal)
    }

    fn publish(&mut self, mut event: Event, fetch: bool) -> Result<Step, ErrorKind> {
        event.tsc = self.time.tsc();
        self.event = Some(event);
        if fetch {
            self.fetch_packet();
        }
        Ok(Step::Event)
    }

    fn decode_packet(&mut self) -> Result<Step, ErrorKind> {
        let packet = match self.packet {
            Lookahead::Packet(packet) => packet,
            Lookahead::Error(error) => return Err(error),
        };
        match packet {
            Packet::Tnt(tnt) => {
                if !self.enabled && !self.perf_mode {
                    return Err(ErrorKind::BadContext);
                }
                self.publish(
                    Event::new(EventKind::Tnt {
                        bits: tnt.bits,
                        size: tnt.count,
                    }),
                    true,
                )
            }
            Packet::Pad => Ok(Step::Next),
            Packet::Fup(ip) => self.decode_fup(&ip),
            Packet::Tip(ip) => self.decode_tip(&ip),
            Packet::TipPge(ip) => self.decode_tip_pge(&ip),
            Packet::TipPgd(ip) => self.decode_tip_pgd(&ip),
            Packet::Tsc { .. } | Packet::Mtc { .. } | Packet::Tma(_) | Packet::Cyc { .. } => {
                self.update_time(&packet);
                Ok(Step::Next)
            }
            Packet::Cbr { payload } => {
                self.update_time(&packet);
                self.publish(
                    Event::new(EventKind::Cbr {
                        ratio: payload as u8,
                    }),
                    true,
                )
            }
            Packet::ModeExec(mode) => {
                let mode = exec_mode(mode);
                let kind = if !self.mode_exec_valid || self.mode != mode {
                    self.mode = mode;
                    EventKind::ExecMode { mode, ip: None }
                } else {
                    EventKind::Ignore
                };
                self.queue
                    .push(bind::TIP | bind::FUP_BOUND, Event::new(kind))?;
                self.mode_exec_valid = true;
                Ok(Step::Next)
            }
            Packet::ModeTsx(tsx) => {
                let kind = EventKind::Tsx {
                    ip: None,
                    speculative: tsx.in_tx(),
                    aborted: tsx.tx_abort(),
                };
                if self.enabled {
                    let binding = if tsx.tx_abort() {
                        bind::FUP
                    } else {
                        bind::FUP_BOUND
                    };
                    self.queue.push(binding, Event::new(kind))?;
                    return Ok(Step::Next);
                }
                self.publish(Event::new(kind), true)
            }
            Packet::Pip(pip) => {
                let (cr3, nr) = (pip.cr3(), pip.nr());
                // With a FUP waiting for its TIP, the PIP is part of that asynchronous branch.
                if self
                    .queue
                    .find(bind::TIP, |k| matches!(k, EventKind::AsyncBranch { .. }))
                    .is_some()
                {
                    self.queue.push(
                        bind::TIP,
                        Event::new(EventKind::AsyncPaging { cr3, nr, ip: None }),
                    )?;
                    return Ok(Step::Next);
                }
                self.publish(Event::new(EventKind::Paging { cr3, nr }), true)
            }
            Packet::Vmcs { payload } => {
                let base = payload << 12;
                // VMCS goes before a PIP of the same asynchronous branch.
                if let Some(index) = self
                    .queue
                    .find(bind::TIP, |k| matches!(k, EventKind::AsyncPaging { .. }))
                {
                    let paging = self.queue.items[index].1;
                    self.queue.push(bind::TIP, paging)?;
                    self.queue.items[index].1 = Event::new(EventKind::AsyncVmcs { base, ip: None });
                    return Ok(Step::Next);
                }
                if self
                    .queue
                    .find(bind::TIP, |k| matches!(k, EventKind::AsyncBranch { .. }))
                    .is_some()
                {
                    self.queue.push(
                        bind::TIP,
                        Event::new(EventKind::AsyncVmcs { base, ip: None }),
                    )?;
                    return Ok(Step::Next);
                }
                self.publish(Event::new(EventKind::Vmcs { base }), true)
            }
            Packet::Ovf => self.decode_ovf(),
            Packet::Psb => {
                self.decode_psb()?;
                // The lookahead is now the PSBEND (or OVF) that publishes the status events.
                self.decode_packet()
            }
            Packet::PsbEnd => self.decode_psbend(),
            Packet::Stop => self.publish(Event::new(EventKind::Stop), true),
            Packet::Mnt { payload } => self.publish(Event::new(EventKind::Mnt { payload }), true),
            Packet::Exstop { ip } => self.decode_exstop(ip),
            Packet::Mwait { hints, extensions } => {
                self.queue.push(
                    bind::EXSTOP,
                    Event::new(EventKind::Mwait {
                        ip: None,
                        hints,
                        ext: extensions,
                    }),
                )?;
                Ok(Step::Next)
            }
            Packet::Pwre(pwre) => {
                let mut event = Event::new(EventKind::Pwre {
                    state: pwre.state(),
                    sub_state: pwre.sub_state(),
                    hw: pwre.hw(),
                });
                event.tsc = self.time.tsc();
                self.queue.push(bind::PWRX, event)?;
                Ok(Step::Next)
            }
            Packet::Pwrx(pwrx) => {
                if let Some(event) = self.queue.pop(bind::PWRX) {
                    // The PWRE is published now, with its own time; the PWRX comes next.
                    self.event = Some(event);
                    return Ok(Step::Event);
                }
                let reason = pwrx.wake_reason();
                self.publish(
                    Event::new(EventKind::Pwrx {
                        last: pwrx.last(),
                        deepest: pwrx.deepest(),
                        interrupt: reason & 1 != 0,
                        store: reason & 4 != 0,
                        autonomous: reason & 8 != 0,
                    }),
                    true,
                )
            }
            Packet::Ptw(ptw) => {
                let kind = EventKind::Ptwrite {
                    ip: None,
                    size: ptw.size,
                    payload: ptw.payload,
                };
                if ptw.ip {
                    self.queue.push(bind::FUP_BOUND, Event::new(kind))?;
                    return Ok(Step::Next);
                }
                self.publish(Event::new(kind), true)
            }
            // Block, event-trace and trigger packets carry nothing the flow needs.
            Packet::Bbp(_)
            | Packet::Bip { .. }
            | Packet::Bep { .. }
            | Packet::Cfe(_)
            | Packet::Evd(_)
            | Packet::Trig(_) => Ok(Step::Next),
        }
    }

    fn update_ip(&mut self, payload: &IpPayload) {
        self.ip.update(payload);
    }

    fn decode_fup(&mut self, payload: &IpPayload) -> Result<Step, ErrorKind> {
        self.update_ip(payload);
        if self.perf_mode && !self.enabled {
            // perf binds nothing to a FUP while tracing is disabled: what waited for one
            // applies now, without an IP; then the FUP's IP is where the next trace is walked
            // from. One without an IP perf skips ("Skipping zero FUP").
            while let Some(mut event) = self.queue.pop(bind::FUP | bind::FUP_BOUND) {
                if event.kind != EventKind::Ignore {
                    event.suppress_ip();
                    return self.publish(event, false);
                }
            }
            return match self.ip.get() {
                Some(ip) => self.publish(Event::new(EventKind::PerfIp { ip }), true),
                None => Ok(Step::Next),
            };
        }
        if self.queue.pending(bind::FUP_BOUND) {
            self.bound = true;
        }
        loop {
            let Some(mut event) = self.queue.pop(bind::FUP | bind::FUP_BOUND) else {
                if self.bound {
                    return Ok(Step::Next);
                }

                // A FUP on its own starts an asynchronous branch; its TIP completes it.
                let from = self.ip.get().ok_or(if self.ip.is_empty() {
                    ErrorKind::Noip
                } else {
                    ErrorKind::IpSuppressed
                })?;
                self.queue.push(
                    bind::TIP,
                    Event::new(EventKind::AsyncBranch { from, to: None }),
                )?;
                return Ok(Step::Next);
            };
            match event.kind {
                EventKind::Ignore => continue,
                EventKind::Overflow { .. } => {
                    event.set_ip(&self.ip);
                    self.enabled = true;
                    // The overflow keeps the time it was seen at.
                    self.event = Some(event);
                    return Ok(Step::Event);
                }
                EventKind::Tsx { .. }
                | EventKind::Exstop { .. }
                | EventKind::Mwait { .. }
                | EventKind::Ptwrite { .. }
                | EventKind::ExecMode { .. } => {
                    event.set_ip(&self.ip);
                    return self.publish(event, false);
                }
                _ => return Err(ErrorKind::BadContext),
            }
        }
    }

    fn decode_tip(&mut self, payload: &IpPayload) -> Result<Step, ErrorKind> {
        // SKD010: this TIP gives the IP the overflow resumes at, in place of the FUP.
        if self.ovf_ip_at == Some(self.packet_offset) {
            self.ovf_ip_at = None;
            self.update_ip(payload);
            if let Some(mut event) = self.queue.pop(bind::FUP_BOUND) {
                event.set_ip(&self.ip);
                self.event = Some(event);
                self.fetch_packet();
                return Ok(Step::Event);
            }
        }
        if !self.enabled && !self.perf_mode {
            return Err(ErrorKind::BadContext);
        }
        self.update_ip(payload);
        if !self.bound {
            self.bound = true;
            // The branch goes first: the events bound to this TIP apply at its target.
            if let Some(async_index) = self
                .queue
                .find(bind::TIP, |k| matches!(k, EventKind::AsyncBranch { .. }))
            {
                let first = self.queue.position(bind::TIP).ok_or(ErrorKind::Internal)?;
                self.queue.items.swap(first, async_index);
                let mut event = self.queue.remove(first);
                event.set_ip(&self.ip);
                return self.publish(event, false);
            }
            let mut event = Event::new(EventKind::Tip { ip: None });
            event.set_ip(&self.ip);
            return self.publish(event, false);
        }
        loop {
            let Some(mut event) = self.queue.pop(bind::TIP) else {
                return Ok(Step::Next);
            };
            match event.kind {
                EventKind::Ignore => continue,
                EventKind::ExecMode { .. }
                | EventKind::AsyncPaging { .. }
                | EventKind::AsyncVmcs { .. } => {
                    event.set_ip(&self.ip);
                    return self.publish(event, false);
                }
                _ => return Err(ErrorKind::BadContext),
            }
        }
    }

    fn decode_tip_pge(&mut self, payload: &IpPayload) -> Result<Step, ErrorKind> {
        self.update_ip(payload);
        if !self.bound {
            let mut event = Event::new(EventKind::Enabled {
                ip: None,
                resumed: false,
            });
            event.set_ip(&self.ip);
            self.enabled = true;
            self.bound = true;
            return self.publish(event, false);
        }
        loop {
            let Some(mut event) = self.queue.pop(bind::TIP) else {
                return Ok(Step::Next);
            };
            match event.kind {
                EventKind::Ignore => continue,
                EventKind::ExecMode { .. } => {
                    event.set_ip(&self.ip);
                    return self.publish(event, false);
                }
                _ => return Err(ErrorKind::BadContext),
            }
        }
    }

    fn decode_tip_pgd(&mut self, payload: &IpPayload) -> Result<Step, ErrorKind> {
        self.update_ip(payload);
        let Some(mut event) = self.queue.pop(bind::TIP) else {
            if self.bound {
                return Ok(Step::Next);
            }
            let mut event = Event::new(EventKind::Disabled { ip: None });
            event.set_ip(&self.ip);
            self.enabled = false;
            return self.publish(event, true);
        };
        match event.kind {
            EventKind::AsyncBranch { from, .. } => {
                event.kind = EventKind::AsyncDisabled { at: from, ip: None };
                event.set_ip(&self.ip);
                self.enabled = false;
                self.bound = true;
            }
            EventKind::AsyncPaging { .. } | EventKind::AsyncVmcs { .. } if !self.bound => {
                return Err(ErrorKind::Internal)
            }
            // Tracing is off when these apply: their IP is not reached.
            EventKind::AsyncPaging { .. }
            | EventKind::AsyncVmcs { .. }
            | EventKind::ExecMode { .. } => event.suppress_ip(),
            EventKind::Ignore => return self.decode_tip_pgd(payload),
            _ => return Err(ErrorKind::BadContext),
        }
        self.publish(event, false)
    }

    fn decode_exstop(&mut self, ip: bool) -> Result<Step, ErrorKind> {
        if let Some(mut event) = self.queue.pop(bind::EXSTOP) {
            if !matches!(event.kind, EventKind::Mwait { .. }) {
                return Err(ErrorKind::Internal);
            }
            if ip {
                // MWAIT and EXSTOP both bind to the coming FUP.
                self.queue.push(bind::FUP_BOUND, event)?;
            } else {
                event.suppress_ip();
                return self.publish(event, false);
            }
        }
        if ip {
            self.queue
                .push(bind::FUP_BOUND, Event::new(EventKind::Exstop { ip: None }))?;
            return Ok(Step::Next);
        }
        self.publish(Event::new(EventKind::Exstop { ip: None }), true)
    }

    /// Reads a PSB+ header up to (not including) its PSBEND or OVF, queueing status events.
    fn decode_psb(&mut self) -> Result<(), ErrorKind> {
        self.in_psb = true;
        let result = self.read_psb();
        if result.is_ok() {
            self.in_psb = false;
        }
        result
    }

    /// Reads PSB+ up to its PSBEND (or OVF) into status events.
    fn read_psb(&mut self) -> Result<(), ErrorKind> {
        // Partial events must not cross a PSB.
        if self.queue.pending(bind::ALL) {
            return Err(ErrorKind::BadContext);
        }
        self.ip.reset();
        self.enabled = false;
        let mut status = Event::new(EventKind::Disabled { ip: None });
        status.status_update = true;
        self.queue.push(bind::PSBEND, status)?;
        loop {
            self.fetch_packet();
            let packet = match self.packet {
                Lookahead::Packet(packet) => packet,
                Lookahead::Error(error) => return Err(error),
            };
            let push_status = |queue: &mut Queue, kind| {
                let mut event = Event::new(kind);
                event.status_update = true;
                queue.push(bind::PSBEND, event)
            };
            match packet {
                Packet::Fup(ip) => {
                    self.enabled = ip.compression != packets::IpCompression::Suppressed;
                    if self.enabled {
                        self.update_ip(&ip);
                    }
                }
                Packet::ModeExec(bits) => {
                    let mode = exec_mode(bits);
                    if self.mode_exec_valid {
                        if self.mode != mode {
                            return Err(ErrorKind::BadStatusUpdate);
                        }
                    } else {
                        self.mode_exec_valid = true;
                        self.mode = mode;
                    }
                    push_status(&mut self.queue, EventKind::ExecMode { mode, ip: None })?;
                }
                Packet::ModeTsx(tsx) => push_status(
                    &mut self.queue,
                    EventKind::Tsx {
                        ip: None,
                        speculative: tsx.in_tx(),
                        aborted: tsx.tx_abort(),
                    },
                )?,
                Packet::Pip(pip) => push_status(
                    &mut self.queue,
                    EventKind::AsyncPaging {
                        cr3: pip.cr3(),
                        nr: pip.nr(),
                        ip: None,
                    },
                )?,
                Packet::Vmcs { payload } => push_status(
                    &mut self.queue,
                    EventKind::AsyncVmcs {
                        base: payload << 12,
                        ip: None,
                    },
                )?,
                Packet::Mnt { payload } => self
                    .queue
                    .push(bind::PSBEND, Event::new(EventKind::Mnt { payload }))?,
                Packet::Tsc { .. } | Packet::Tma(_) | Packet::Mtc { .. } | Packet::Cyc { .. } => {
                    self.update_time(&packet)
                }
                Packet::Cbr { payload } => {
                    self.update_time(&packet);
                    push_status(
                        &mut self.queue,
                        EventKind::Cbr {
                            ratio: payload as u8,
                        },
                    )?;
                }
                Packet::PsbEnd | Packet::Ovf => {
                    // BDM70: a FUP in PSB+ while tracing is disabled; a TIP.PGE follows.
                    if self.enabled
                        && self.errata.bdm70
                        && packet == Packet::PsbEnd
                        && Ahead::new(self.data, self.pos, self.block)
                            .enables_next()
                            .unwrap_or(false)
                    {
                        self.enabled = false;
                    }
                    let enabled = self.enabled;
                    let first = self
                        .queue
                        .position(bind::PSBEND)
                        .ok_or(ErrorKind::Internal)?;
                    if enabled {
                        self.queue.items[first].1.kind = EventKind::Enabled {
                            ip: None,
                            resumed: false,
                        };
                    } else if packet == Packet::Ovf {
                        // Without tracing enabled the OVF stands for itself.
                        self.queue.remove(first);
                    }
                    return Ok(());
                }
                Packet::Pad => {}
                _ => return Err(ErrorKind::BadContext),
            }
        }
    }

    fn decode_psbend(&mut self) -> Result<Step, ErrorKind> {
        let Some(mut event) = self.queue.pop(bind::PSBEND) else {
            return Ok(Step::Next);
        };
        match event.kind {
            EventKind::Enabled { .. }
            | EventKind::ExecMode { .. }
            | EventKind::Tsx { .. }
            | EventKind::AsyncPaging { .. }
            | EventKind::AsyncVmcs { .. } => {
                // With tracing disabled the PSB+ state is at no IP.
                if self.enabled {
                    event.set_ip(&self.ip)
                } else {
                    event.suppress_ip()
                }
            }
            EventKind::Disabled { .. } | EventKind::Cbr { .. } | EventKind::Mnt { .. } => {}
            _ => return Err(ErrorKind::BadContext),
        }
        self.publish(event, false)
    }

    fn decode_ovf(&mut self) -> Result<Step, ErrorKind> {
        // An OVF ends PSB+ like PSBEND does: its events go first.
        if let Step::Event = self.decode_psbend()? {
            return Ok(Step::Event);
        }
        // With tracing disabled, pending events are published without an IP; with tracing
        // enabled they cannot be placed and are dropped.
        while !self.enabled {
            let Some(mut event) = self
                .queue
                .pop(bind::FUP_BOUND | bind::FUP | bind::TIP | bind::EXSTOP | bind::PWRX)
            else {
                break;
            };
            match event.kind {
                EventKind::Exstop { .. }
                | EventKind::Mwait { .. }
                | EventKind::Ptwrite { .. }
                | EventKind::Tsx { .. }
                | EventKind::ExecMode { .. } => {
                    event.suppress_ip();
                    self.event = Some(event);
                    return Ok(Step::Event);
                }
                EventKind::Pwre { .. } => {
                    self.event = Some(event);
                    return Ok(Step::Event);
                }
                _ => continue,
            }
        }
        let time = self.time;
        let (pos, block, packet, packet_offset, sync) = (
            self.pos,
            self.block,
            self.packet,
            self.packet_offset,
            self.sync,
        );
        self.reset();
        (
            self.pos,
            self.block,
            self.packet,
            self.packet_offset,
            self.sync,
        ) = (pos, block, packet, packet_offset, sync);
        self.time = time;
        // The overflow resolves with tracing enabled when a FUP follows (only timing packets
        // may come between); otherwise tracing was disabled and the OVF stands alone.
        let mut event = Event::new(EventKind::Overflow { ip: None });
        event.tsc = self.time.tsc();
        match self.resolve_ovf() {
            Ok(OvfEnd::Fup(at)) => {
                // Packets up to the FUP (MODE.TSX under SKD010) bind after the overflow.
                self.enabled = true;
                self.ovf_ip_at = Some(at);
                self.queue.push(bind::FUP_BOUND, event)?;
                Ok(Step::Next)
            }
            Ok(OvfEnd::Disabled(skip)) => {
                self.skip_at = skip;
                self.publish(event, true)
            }
            Err(ErrorKind::Eos) => self.publish(event, true),
            Err(error) => Err(error),
        }
    }

    /// How the overflow at the lookahead resolves, reading ahead without consuming.
    fn resolve_ovf(&self) -> Result<OvfEnd, ErrorKind> {
        let errata = self.errata;
        let mut ahead = Ahead::new(self.data, self.pos, self.block);
        loop {
            let (at, packet) = ahead.next()?;
            match packet {
                Packet::Fup(_) => {
                    // APL12: a FUP followed by tracing being enabled belongs to no branch.
                    if errata.apl12 && ahead.clone().enables_next()? {
                        return Ok(OvfEnd::Disabled(Some(at)));
                    }
                    return Ok(OvfEnd::Fup(at));
                }
                // SKD010: the FUP may be missing; a TIP gives the IP instead.
                Packet::Tip(_) if errata.skd010 => return Ok(OvfEnd::Fup(at)),
                Packet::ModeTsx(_) if errata.skd010 => {}
                // SKD010/APL11: a TIP.PGD after the OVF: tracing was disabled.
                Packet::TipPgd(_) if errata.skd010 || errata.apl11 => {
                    return Ok(OvfEnd::Disabled(Some(at)))
                }
                Packet::Pad
                | Packet::Mnt { .. }
                | Packet::Cbr { .. }
                | Packet::Tsc { .. }
                | Packet::Tma(_)
                | Packet::Mtc { .. }
                | Packet::Cyc { .. }
                | Packet::Bbp(_)
                | Packet::Bip { .. }
                | Packet::Bep { .. } => {}
                Packet::PsbEnd | Packet::Tip(_) | Packet::TipPgd(_) | Packet::Tnt(_) => {
                    return Err(ErrorKind::BadContext)
                }
                _ => return Ok(OvfEnd::Disabled(None)),
            }
        }
    }
}
