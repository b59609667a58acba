//! Intel PT packets for an observed execution, written as the hardware would write them for
//! `perf record -e intel_pt//u` (Intel SDM Vol. 3, "Intel Processor Trace": packet formats, IP
//! compression, return compression, PSB+).
//!
//! A model clock gives time: each instruction takes one core cycle, a trip through the kernel (syscall or
//! signal) a fixed number more. The core runs at `cbr` × 100 MHz, the TSC at `max_nonturbo_ratio` ×
//! 100 MHz, the crystal clock (CTC, the ART) at 1/`tsc_per_ctc` of the TSC. TSC packets (each followed by
//! a TMA when MTC is on) carry the clock in every PSB+ and whenever tracing resumes; MTC packets mark
//! every 2^`mtc_freq` CTC ticks while tracing is on.

use std::collections::{HashMap, VecDeque};

use crate::insn::Kind;
use crate::sched::{Timeline, What};
use crate::trace::{Event, Mapping};

/// How the trace is written.
#[derive(Clone, Debug)]
pub struct Config {
    /// A PSB+ goes out at the first packet boundary at least this many bytes after the previous PSB.
    pub psb_period: usize,
    /// Return compression (perf's default; `noretcomp` turns it off).
    pub return_compression: bool,
    /// The TSC at the first packet.
    pub tsc_start: u64,
    /// Core cycles a syscall or signal spends in the kernel.
    pub kernel_ticks: u64,
    /// Core-to-bus ratio reported in CBR packets: the core clock is `cbr` × 100 MHz.
    pub cbr: u8,
    /// The TSC runs at `max_nonturbo_ratio` × 100 MHz (AUXTRACE_INFO's max_nonturbo_ratio).
    pub max_nonturbo_ratio: u8,
    /// MTC packets every 2^N crystal-clock ticks, and TMA after every TSC (perf's `mtc_period`); `None`:
    /// no MTC.
    pub mtc_freq: Option<u8>,
    /// TSC ticks per crystal-clock (CTC) tick: CPUID 0x15's ratio, written as tsc_ctc_ratio_n / d with
    /// d = 2.
    pub tsc_per_ctc: u64,
    /// Most outcomes held before a TNT packet is written (6 gives short TNTs only; at most 47).
    pub tnt_capacity: u8,
    /// For tests: invert this TNT outcome (counted from 0), so the trace no longer matches the program.
    pub flip_tnt: Option<u64>,
    /// Simulate a buffer overflow: packets are lost, then OVF and a FUP resume the trace.
    pub overflow: Option<Overflow>,
    /// perf reads the AUX area each time about this many bytes have been written (0: once, at the end):
    /// the encoder ends a buffer at the first packet boundary past that, noting the TSC
    /// ([`Encoded::splits`]).
    pub aux_split: usize,
    /// Cycle-accurate mode (perf's `cyc`, CycThresh 0): a CYC packet with the core cycles since the
    /// previous one precedes the CYC-eligible packets of each cycle (TNT — at its first branch —, TIP,
    /// TIP.PGE, TIP.PGD, MODE.Exec, MTC, TSC, OVF).
    pub cyc: bool,
    /// An address filter (perf's `--filter 'filter …'`): the run-time IP ranges traced (in the one
    /// process of [`encode`]; [`encode_timeline_filtered`] resolves them per process). Tracing is on
    /// only inside: a branch out writes TIP.PGD with its target, the first instruction back TIP.PGE.
    pub filter: Option<Vec<std::ops::Range<u64>>>,
}

/// A simulated internal buffer overflow: the packets of `lost` instructions from instruction number
/// `at` (counted from 0) never reach memory; the hardware then writes OVF and a FUP with the IP where
/// tracing resumes, after clearing its IP-compression and return-compression state. The loss ends early at
/// a kernel entry (syscall or signal), and starts later if tracing is off at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    pub at: u64,
    pub lost: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            psb_period: 4096,
            return_compression: true,
            tsc_start: 0x1_0000_0000,
            kernel_ticks: 500,
            cbr: 0x20,
            max_nonturbo_ratio: 24,
            mtc_freq: Some(3),
            tsc_per_ctc: 100,
            tnt_capacity: 47,
            flip_tnt: None,
            overflow: None,
            aux_split: 0,
            cyc: false,
            filter: None,
        }
    }
}

impl Config {
    /// The TSC after `cycles` core cycles.
    pub fn tsc_at(&self, cycles: u64) -> u64 {
        self.tsc_start + cycles * u64::from(self.max_nonturbo_ratio) / u64::from(self.cbr.max(1))
    }
}

/// The trace and the times the sideband needs.
#[derive(Debug, Default)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// For each event index that is an [`Event::Map`], the clock there: at or before the TSC packet that
    /// precedes any instruction run in that mapping.
    pub map_times: Vec<(usize, u64)>,
    /// The clock at the first packet and at the end.
    pub start_tsc: u64,
    pub end_tsc: u64,
    /// Indices of the events whose instructions were lost to a simulated overflow: perf cannot show them.
    pub lost: Vec<usize>,
    /// Indices of the instruction events outside the address filter, ascending: not traced.
    pub untraced: Vec<usize>,
    /// Packet counts, for reports and tests.
    pub stats: Stats,
    /// (byte offset, TSC): where each AUX buffer but the last ends (a packet boundary), and when.
    pub splits: Vec<(usize, u64)>,
}

impl Encoded {
    /// The AUX buffers perf would have read: (start, end, TSC when read), covering the whole trace.
    pub fn buffers(&self) -> Vec<(usize, usize, u64)> {
        let mut out = Vec::new();
        let mut start = 0;
        for &(at, tsc) in &self.splits {
            if at > start && at < self.bytes.len() {
                out.push((start, at, tsc));
                start = at;
            }
        }
        out.push((start, self.bytes.len(), self.end_tsc));
        out
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub psbs: u64,
    pub tnt_short: u64,
    pub tnt_long: u64,
    pub tips: u64,
    pub compressed_returns: u64,
    pub pge: u64,
    pub pgd: u64,
    pub fups: u64,
    pub overflows: u64,
    pub mtcs: u64,
    pub cycs: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.psbs += o.psbs;
        self.tnt_short += o.tnt_short;
        self.tnt_long += o.tnt_long;
        self.tips += o.tips;
        self.compressed_returns += o.compressed_returns;
        self.pge += o.pge;
        self.pgd += o.pgd;
        self.fups += o.fups;
        self.overflows += o.overflows;
        self.mtcs += o.mtcs;
        self.cycs += o.cycs;
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} PSB, {} short + {} long TNT, {} TIP, {} compressed returns, {} TIP.PGE, {} TIP.PGD, {} FUP, {} OVF, {} MTC, {} CYC",
            self.psbs,
            self.tnt_short,
            self.tnt_long,
            self.tips,
            self.compressed_returns,
            self.pge,
            self.pgd,
            self.fups,
            self.overflows,
            self.mtcs,
            self.cycs
        )
    }
}

const RETURN_STACK_DEPTH: usize = 64;

/// Writes the packets for `events` (one thread's whole execution).
pub fn encode(events: &[Event], cfg: &Config) -> Encoded {
    let mut enc = Encoder::new(cfg);
    let mut map_times = Vec::new();
    let mut lost = Vec::new();
    // Instructions since the last one that produced a packet.
    let mut unresolved = Vec::new();
    let mut untraced = Vec::new();
    enc.psb_plus(None);
    for (i, event) in events.iter().enumerate() {
        enc.mark_split();
        match event {
            Event::Map(_) => map_times.push((i, cfg.tsc_at(enc.clock))),
            Event::Interrupt { at } => enc.interrupt(*at),
            Event::Insn { ip, insn } => {
                if !enc.traced(*ip) {
                    untraced.push(i);
                }
                let next = events[i + 1..].iter().find_map(|e| match e {
                    Event::Insn { ip, .. } => Some(*ip),
                    Event::Interrupt { at } => Some(*at),
                    Event::Map(_) => None,
                });
                if enc.instruction(*ip, insn.len, insn.kind, next) {
                    if enc.produced_packet {
                        unresolved.clear();
                    } else {
                        unresolved.push(i);
                    }
                } else {
                    // A decoder only walks past the last packet-producing branch when a packet says
                    // where to; the instructions since then are lost along with the overflow.
                    lost.append(&mut unresolved);
                    lost.push(i);
                }
            }
        }
    }
    enc.flush_tnt();
    Encoded {
        start_tsc: cfg.tsc_start,
        end_tsc: cfg.tsc_at(enc.clock),
        bytes: enc.out,
        map_times,
        lost,
        untraced,
        stats: enc.stats,
        splits: enc.splits,
    }
}

struct Encoder<'a> {
    cfg: &'a Config,
    out: Vec<u8>,
    /// The IP-compression reference: the last IP sent in a TIP/FUP-family packet; 0 after a PSB.
    last_ip: u64,
    /// Pending TNT outcomes, oldest in the highest of the low `tnt_count` bits.
    tnt_bits: u64,
    tnt_count: u8,
    tnt_seen: u64,
    /// Return addresses of the calls since the last PSB, at most 64 (the oldest is dropped).
    returns: VecDeque<u64>,
    /// PacketEn: user code is running and being traced.
    enabled: bool,
    /// Core cycles since the start.
    clock: u64,
    /// The CTC period (CTC >> mtc_freq) of the last MTC or TMA.
    mtc_period: u64,
    /// The clock at the last CYC packet (or the start).
    cyc_clock: u64,
    /// The clock before which the MTC period cannot change (so `mtc` need not compute it).
    mtc_quiet_until: u64,
    /// Where the last PSB starts, counted from the start of the stream (drained bytes included).
    last_psb: usize,
    /// Bytes already handed out of `out` by [`Stream::take`].
    drained: usize,
    stats: Stats,
    /// Instructions seen so far.
    executed: u64,
    /// Inside a simulated overflow: packets are being lost.
    overflowing: bool,
    overflowed: bool,
    /// The last instruction wrote a TNT bit, TIP or TIP.PGD.
    produced_packet: bool,
    /// The caller sets the clock before each instruction (per-CPU streams of a timeline).
    external_clock: bool,
    /// See [`Encoded::splits`].
    splits: Vec<(usize, u64)>,
    /// The address filter of the process running now (see [`Config::filter`]).
    filter: Option<Vec<std::ops::Range<u64>>>,
}

impl<'a> Encoder<'a> {
    fn new(cfg: &'a Config) -> Self {
        Encoder {
            cfg,
            out: Vec::new(),
            last_ip: 0,
            tnt_bits: 0,
            tnt_count: 0,
            tnt_seen: 0,
            returns: VecDeque::new(),
            enabled: false,
            clock: 0,
            mtc_period: 0,
            cyc_clock: 0,
            mtc_quiet_until: 0,
            last_psb: 0,
            drained: 0,
            stats: Stats::default(),
            executed: 0,
            overflowing: false,
            overflowed: false,
            produced_packet: false,
            external_clock: false,
            splits: Vec::new(),
            filter: cfg.filter.clone(),
        }
    }

    /// Whether `ip` is inside the address filter (everything is, without one).
    fn traced(&self, ip: u64) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|r| r.contains(&ip)))
    }

    /// Ends an AUX buffer here, between packets, if the current one holds `aux_split` bytes or more.
    /// (perf 6.1 on 64-bit does not join a packet split across two AUXTRACE buffers: it reports "Bad
    /// packet". The hardware never splits one either: the driver stops tracing before it publishes the
    /// AUX head.)
    fn mark_split(&mut self) {
        let step = self.cfg.aux_split;
        if step == 0 {
            return;
        }
        let last = self.splits.last().map_or(0, |s| s.0);
        if self.out.len() >= last + step {
            let tsc = self.cfg.tsc_at(self.clock);
            self.splits.push((self.out.len(), tsc));
        }
    }

    /// Advances the model clock by `ticks`, unless the caller drives it.
    fn advance(&mut self, ticks: u64) {
        if !self.external_clock {
            self.clock += ticks;
        }
    }

    /// Writes the packets for one instruction; false if they were lost to a simulated overflow.
    fn instruction(&mut self, ip: u64, len: u8, kind: Kind, next: Option<u64>) -> bool {
        let n = self.executed;
        self.executed += 1;
        self.produced_packet = false;
        if !self.traced(ip) {
            // Outside the filter region: no packets.
            self.advance(1);
            return true;
        }
        if self.lose(n, ip, kind) {
            self.advance(1);
            return false;
        }
        if !self.enabled {
            self.enable(ip);
        } else {
            self.mtc();
        }
        self.advance(1);
        let fallthrough = ip + u64::from(len);
        if kind.pushes_return() {
            if self.returns.len() == RETURN_STACK_DEPTH {
                self.returns.pop_front();
            }
            self.returns.push_back(fallthrough);
        }
        let Some(next) = next else {
            // The last instruction of the run: only the exit syscall can end a process.
            if matches!(kind, Kind::Syscall | Kind::Far) {
                self.leave();
            }
            return true;
        };
        let leaves_filter = !self.traced(next);
        if leaves_filter && !matches!(kind, Kind::Syscall | Kind::Far) {
            if kind == Kind::Return {
                // perf's decoder pops for every return it walks, this one included.
                self.returns.pop_back();
            }
            self.leave_filter(next);
            return true;
        }
        match kind {
            Kind::Other | Kind::DirectJump | Kind::DirectCall { .. } => {}
            Kind::Conditional => self.tnt(next != fallthrough),
            Kind::IndirectJump | Kind::IndirectCall => self.tip(next),
            Kind::Return => {
                // perf's decoder pops on every return, compressed or not; so does this stack.
                let expected = self.returns.pop_back();
                if self.cfg.return_compression && expected == Some(next) {
                    self.stats.compressed_returns += 1;
                    self.tnt(true);
                } else {
                    self.tip(next);
                }
            }
            Kind::Syscall | Kind::Far => {
                self.leave();
                return true;
            }
        }
        if self.drained + self.out.len() - self.last_psb >= self.cfg.psb_period {
            self.psb_plus(Some(next));
        }
        true
    }

    /// A CYC packet with the cycles since the previous one, if cycle-accurate mode is on and the clock
    /// moved since (one CYC per cycle precedes the CYC-eligible packets of that cycle).
    fn cyc(&mut self) {
        if !self.cfg.cyc || self.clock <= self.cyc_clock {
            return;
        }
        let mut count = self.clock - self.cyc_clock;
        self.cyc_clock = self.clock;
        // First byte: bits 7:3 hold count 4:0, bit 2 says more bytes follow, bits 1:0 are 11. Each
        // further byte: bits 7:1 hold the next 7 bits, bit 0 says more follow.
        let more = count >> 5 != 0;
        self.out
            .push(((count & 0x1f) as u8) << 3 | u8::from(more) << 2 | 0b11);
        count >>= 5;
        while count != 0 {
            let more = count >> 7 != 0;
            self.out.push(((count & 0x7f) as u8) << 1 | u8::from(more));
            count >>= 7;
        }
        self.stats.cycs += 1;
    }

    /// Tracing (re)starts at `ip`: MODE.Exec, TSC (+ TMA), TIP.PGE.
    fn enable(&mut self, ip: u64) {
        self.mode_exec();
        self.tsc();
        self.ip_packet(TIP_PGE, ip);
        self.stats.pge += 1;
        self.enabled = true;
    }

    /// Whether instruction number `n` (at `ip`) falls in the simulated overflow; writes OVF and FUP when
    /// the overflow ends before it.
    fn lose(&mut self, n: u64, ip: u64, kind: Kind) -> bool {
        let Some(o) = self.cfg.overflow else {
            return false;
        };
        let kernel_entry = matches!(kind, Kind::Syscall | Kind::Far);
        if !self.overflowing && !self.overflowed && n >= o.at && self.enabled && !kernel_entry {
            // What was buffered before the overflow reaches memory.
            self.flush_tnt();
            self.overflowing = true;
            self.overflowed = true;
        }
        if self.overflowing && (n >= o.at + o.lost || kernel_entry) {
            self.end_overflow(ip);
        }
        self.overflowing
    }

    /// OVF, then a FUP with the IP where tracing resumes. The hardware has cleared its compression state;
    /// the FUP carries the full IP, since a decoder may still hold an old last IP.
    fn end_overflow(&mut self, ip: u64) {
        self.overflowing = false;
        self.cyc();
        self.out.extend_from_slice(&[0x02, 0xf3]);
        self.returns.clear();
        // A last IP sharing no upper bits with `ip` makes ip_packet choose the full width.
        self.last_ip = !ip;
        self.ip_packet(FUP, ip);
        self.stats.overflows += 1;
    }

    /// An asynchronous event (signal delivery) before the instruction at `at`.
    fn interrupt(&mut self, at: u64) {
        if self.overflowing {
            self.end_overflow(at);
        }
        if !self.enabled {
            // Already in the kernel (a signal delivered on the way out of a syscall).
            return;
        }
        self.flush_tnt();
        self.ip_packet(FUP, at);
        self.stats.fups += 1;
        self.leave();
    }

    /// Tracing stops as the CPU enters the kernel: TIP.PGD without an IP.
    fn leave(&mut self) {
        self.produced_packet = true;
        self.flush_tnt();
        self.cyc();
        self.out.push(TIP_PGD);
        self.stats.pgd += 1;
        self.enabled = false;
        self.advance(self.cfg.kernel_ticks);
    }

    /// A branch leaves the filter region: TIP.PGD with its target, no TNT bit for a conditional one
    /// (perf recognises a direct or conditional exit by checking the target against the filter).
    fn leave_filter(&mut self, target: u64) {
        self.produced_packet = true;
        self.flush_tnt();
        self.ip_packet(TIP_PGD, target);
        self.stats.pgd += 1;
        self.enabled = false;
    }

    /// The CPU switches to another task. Tracing is already off (the outgoing task entered the kernel);
    /// the return stack holds the outgoing task's calls, which the incoming task must not return
    /// through: its returns get TIPs until it makes calls of its own.
    fn switch_task(&mut self) {
        if self.enabled {
            self.leave();
        }
        self.returns.clear();
    }

    fn tnt(&mut self, taken: bool) {
        self.produced_packet = true;
        if self.tnt_count == 0 {
            // The CYC of a TNT packet times its first branch, and goes out with that branch.
            self.cyc();
        }
        let flip = self.cfg.flip_tnt == Some(self.tnt_seen);
        self.tnt_seen += 1;
        self.tnt_bits = (self.tnt_bits << 1) | u64::from(taken != flip);
        self.tnt_count += 1;
        if self.tnt_count >= self.cfg.tnt_capacity.clamp(1, 47) {
            self.flush_tnt();
        }
    }

    fn flush_tnt(&mut self) {
        let n = self.tnt_count;
        if n == 0 {
            return;
        }
        let payload = (1u64 << n) | self.tnt_bits;
        if n <= 6 {
            self.out.push((payload << 1) as u8);
            self.stats.tnt_short += 1;
        } else {
            self.out.extend_from_slice(&[0x02, 0xa3]);
            self.out.extend_from_slice(&payload.to_le_bytes()[..6]);
            self.stats.tnt_long += 1;
        }
        self.tnt_bits = 0;
        self.tnt_count = 0;
    }

    fn tip(&mut self, ip: u64) {
        self.produced_packet = true;
        self.flush_tnt();
        self.ip_packet(TIP, ip);
        self.stats.tips += 1;
    }

    /// A TIP-family packet with the IP compressed against the last IP, the shortest way.
    fn ip_packet(&mut self, opcode: u8, ip: u64) {
        if opcode != FUP {
            self.cyc();
        }
        let last = self.last_ip;
        let sign_extended_48 = ((ip << 16) as i64 >> 16) as u64 == ip;
        let (ip_bytes, len) = if ip >> 16 == last >> 16 {
            (1, 2)
        } else if ip >> 32 == last >> 32 {
            (2, 4)
        } else if sign_extended_48 {
            (3, 6)
        } else if ip >> 48 == last >> 48 {
            (4, 6)
        } else {
            (6, 8)
        };
        self.out.push((ip_bytes << 5) | opcode);
        self.out.extend_from_slice(&ip.to_le_bytes()[..len]);
        self.last_ip = ip;
    }

    fn mode_exec(&mut self) {
        self.cyc();
        // Leaf 0 (Exec), CS.L = 1: 64-bit code.
        self.out.extend_from_slice(&[0x99, 0x01]);
    }

    /// TSC, and TMA when MTC is on (perf forgets its CTC reference at every TSC).
    fn tsc(&mut self) {
        let tsc = self.cfg.tsc_at(self.clock);
        self.cyc();
        self.out.push(0x19);
        self.out.extend_from_slice(&tsc.to_le_bytes()[..7]);
        if let Some(freq) = self.cfg.mtc_freq {
            let ctc = tsc / self.cfg.tsc_per_ctc;
            // The fast counter: TSC ticks since the CTC tick (perf subtracts it from the TSC).
            let fc = (tsc % self.cfg.tsc_per_ctc) as u16;
            self.out.extend_from_slice(&[0x02, 0x73]);
            self.out.extend_from_slice(&(ctc as u16).to_le_bytes());
            self.out
                .extend_from_slice(&[0, fc as u8, (fc >> 8) as u8 & 1]);
            self.mtc_period = ctc >> freq;
        }
    }

    /// An MTC if the crystal clock crossed a 2^mtc_freq boundary since the last MTC or TMA.
    fn mtc(&mut self) {
        let Some(freq) = self.cfg.mtc_freq else {
            return;
        };
        if self.clock < self.mtc_quiet_until {
            return;
        }
        let period = (self.cfg.tsc_at(self.clock) / self.cfg.tsc_per_ctc) >> freq;
        // The first clock at which the next period starts: tsc_at(c) >= its first TSC.
        let next_tsc = ((period + 1) << freq) * self.cfg.tsc_per_ctc;
        let ratio = u64::from(self.cfg.max_nonturbo_ratio).max(1);
        let cbr = u64::from(self.cfg.cbr.max(1));
        self.mtc_quiet_until = next_tsc
            .saturating_sub(self.cfg.tsc_start)
            .saturating_mul(cbr)
            .div_ceil(ratio);
        if period > self.mtc_period {
            self.cyc();
            self.out.extend_from_slice(&[0x59, period as u8]);
            self.mtc_period = period;
            self.stats.mtcs += 1;
        }
    }

    /// PSB+: the full state a decoder needs to start here. `at` is the next instruction when tracing is
    /// on (MODE.Exec and FUP are only sent then).
    fn psb_plus(&mut self, at: Option<u64>) {
        self.flush_tnt();
        self.last_psb = self.drained + self.out.len();
        for _ in 0..8 {
            self.out.extend_from_slice(&[0x02, 0x82]);
        }
        self.last_ip = 0;
        self.returns.clear();
        if let Some(ip) = at.filter(|_| self.enabled) {
            self.mode_exec();
            self.ip_packet(FUP, ip);
        }
        self.tsc();
        self.out
            .extend_from_slice(&[0x02, 0x03, self.cfg.cbr, 0x00]);
        self.out.extend_from_slice(&[0x02, 0x23]);
        self.stats.psbs += 1;
    }
}

/// Writes one Intel PT stream per CPU for a timeline of several tasks (see [`crate::sched`]): each
/// CPU's stream has the packets of the instructions its tasks ran there, timed by the timeline's ticks
/// (a tick is a core cycle: see [`Config::tsc_at`]). A simulated overflow (`cfg.overflow`) happens on
/// CPU 0 only, `at` counting the instructions run there; its [`Encoded::lost`] holds timeline event
/// indices.
pub fn encode_timeline(timeline: &Timeline, cfg: &Config) -> Vec<Encoded> {
    encode_timeline_filtered(timeline, cfg, None)
}

/// The run-time ranges an address filter traces in a process with these executable mappings.
pub type ResolveFilter<'r> = &'r dyn Fn(&[Mapping]) -> Vec<std::ops::Range<u64>>;

/// As [`encode_timeline`], with an address filter resolved per process as the kernel does for an
/// inherited event: in each process's own mappings (a forked child starts with its parent's, an
/// exec starts over), re-resolved at each new mapping; on a context switch the ranges of the incoming
/// task's process apply. [`Encoded::untraced`] lists the instructions outside them (of every CPU).
pub fn encode_timeline_filtered(
    timeline: &Timeline,
    cfg: &Config,
    filter: Option<ResolveFilter<'_>>,
) -> Vec<Encoded> {
    // Per process: its executable mappings and the filter's ranges in them.
    let mut maps: HashMap<i32, Vec<Mapping>> = HashMap::new();
    let mut ranges: HashMap<i32, Vec<std::ops::Range<u64>>> = HashMap::new();
    let mut untraced = Vec::new();
    // For each instruction, the task's next IP (its next instruction, or where an interrupt left it).
    let mut next_of = vec![None; timeline.events.len()];
    let mut upcoming: HashMap<i32, u64> = HashMap::new();
    for (i, e) in timeline.events.iter().enumerate().rev() {
        match e.what {
            What::Insn { ip, .. } => {
                next_of[i] = upcoming.get(&e.task.1).copied();
                upcoming.insert(e.task.1, ip);
            }
            What::Interrupt { at } => {
                upcoming.insert(e.task.1, at);
            }
            What::Exit { .. } => {
                upcoming.remove(&e.task.1);
            }
            _ => {}
        }
    }
    let no_overflow = Config {
        overflow: None,
        ..cfg.clone()
    };
    let mut encoders: Vec<Encoder> = (0..timeline.cpus)
        .map(|cpu| {
            let mut e = Encoder::new(if cpu == 0 { cfg } else { &no_overflow });
            e.external_clock = true;
            e.psb_plus(None);
            e
        })
        .collect();
    let cpus = encoders.len();
    // Per CPU: the instructions since the last one that produced a packet, and those lost.
    let mut unresolved: Vec<Vec<usize>> = vec![Vec::new(); cpus];
    let mut lost: Vec<Vec<usize>> = vec![Vec::new(); cpus];
    for (i, e) in timeline.events.iter().enumerate() {
        let cpu = e.cpu as usize;
        let enc = &mut encoders[cpu];
        enc.mark_split();
        enc.clock = e.tick;
        let pid = e.task.0;
        if let Some(resolve) = filter {
            match &e.what {
                What::Map(m) => {
                    let process = maps.entry(pid).or_default();
                    process.push(m.clone());
                    ranges.insert(pid, resolve(process));
                }
                What::Exec { .. } => {
                    maps.remove(&pid);
                    ranges.remove(&pid);
                }
                What::Fork { parent } if parent.0 != pid => {
                    let inherited = maps.get(&parent.0).cloned().unwrap_or_default();
                    ranges.insert(pid, resolve(&inherited));
                    maps.insert(pid, inherited);
                }
                _ => {}
            }
            enc.filter = Some(ranges.get(&pid).cloned().unwrap_or_default());
        }
        match e.what {
            What::Insn { ip, insn } => {
                if !enc.traced(ip) {
                    untraced.push(i);
                }
                if enc.instruction(ip, insn.len, insn.kind, next_of[i]) {
                    if enc.produced_packet {
                        unresolved[cpu].clear();
                    } else {
                        unresolved[cpu].push(i);
                    }
                } else {
                    // As in `encode`: a decoder loses the instructions since the last packet too.
                    lost[cpu].append(&mut unresolved[cpu]);
                    lost[cpu].push(i);
                }
            }
            What::Interrupt { at } => {
                enc.interrupt(at);
                unresolved[cpu].clear();
            }
            What::Switch { .. } => {
                enc.switch_task();
                unresolved[cpu].clear();
            }
            What::Map(_) | What::Fork { .. } | What::Exec { .. } | What::Exit { .. } => {}
        }
    }
    encoders
        .into_iter()
        .zip(lost)
        .map(|(mut enc, lost)| {
            enc.flush_tnt();
            Encoded {
                bytes: enc.out,
                map_times: Vec::new(),
                start_tsc: cfg.tsc_start,
                end_tsc: cfg.tsc_at(timeline.end),
                lost,
                untraced: untraced.clone(),
                stats: enc.stats,
                splits: enc.splits,
            }
        })
        .collect()
}

/// An Intel PT stream written piece by piece, for flows too long to hold in memory (see
/// [`crate::bulk`]): the caller walks the flow a basic block at a time, handing over the straight-line
/// instructions as a count and each control transfer as itself, and takes the bytes written so far
/// whenever it likes (they always end between packets; pending TNT bits stay for the next piece).
pub struct Stream<'a> {
    enc: Encoder<'a>,
}

impl<'a> Stream<'a> {
    /// A stream that starts with a PSB+, tracing off.
    pub fn new(cfg: &'a Config) -> Self {
        let mut enc = Encoder::new(cfg);
        enc.psb_plus(None);
        Stream { enc }
    }

    /// `count` instructions that transfer no control, the first at `ip` (where tracing starts if it is
    /// off).
    pub fn straight(&mut self, ip: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.enc.executed += count;
        if self.enc.enabled {
            self.enc.mtc();
        } else {
            self.enc.enable(ip);
        }
        self.enc.advance(count);
    }

    /// The control transfer at `ip` executes and execution goes on at `next`.
    pub fn branch(&mut self, ip: u64, len: u8, kind: Kind, next: u64) {
        self.enc.instruction(ip, len, kind, Some(next));
    }

    /// The control transfer at `ip` executes and tracing stops with it (TIP.PGD without an IP): a
    /// syscall, or a branch whose target is not traced.
    pub fn branch_then_stop(&mut self, ip: u64, len: u8, kind: Kind) {
        let enc = &mut self.enc;
        enc.executed += 1;
        if enc.enabled {
            enc.mtc();
        } else {
            enc.enable(ip);
        }
        enc.advance(1);
        if kind.pushes_return() {
            if enc.returns.len() == RETURN_STACK_DEPTH {
                enc.returns.pop_front();
            }
            enc.returns.push_back(ip + u64::from(len));
        } else if kind == Kind::Return {
            // perf pops its return stack at every return.
            enc.returns.pop_back();
        }
        enc.leave();
    }

    /// Tracing stops asynchronously before the instruction at `at`, which does not execute (FUP,
    /// TIP.PGD): a decoder walks to `at` from its last packet and stops at the first arrival there.
    pub fn stop_before(&mut self, at: u64) {
        self.enc.interrupt(at);
    }

    /// Bytes written and not yet taken.
    pub fn pending(&self) -> usize {
        self.enc.out.len()
    }

    /// The bytes written since the last take.
    pub fn take(&mut self) -> Vec<u8> {
        self.enc.drained += self.enc.out.len();
        std::mem::take(&mut self.enc.out)
    }

    /// Flushes pending TNT bits and returns the last bytes.
    pub fn finish(&mut self) -> Vec<u8> {
        self.enc.flush_tnt();
        self.take()
    }

    /// The model clock now, as a TSC.
    pub fn tsc(&self) -> u64 {
        self.enc.cfg.tsc_at(self.enc.clock)
    }

    pub fn stats(&self) -> Stats {
        self.enc.stats
    }
}

const TIP: u8 = 0x0d;
const TIP_PGE: u8 = 0x11;
const TIP_PGD: u8 = 0x01;
const FUP: u8 = 0x1d;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insn::Insn;

    fn insn(ip: u64, len: u8, kind: Kind) -> Event {
        Event::Insn {
            ip,
            insn: Insn {
                len,
                kind,
                rep_string: false,
            },
        }
    }

    fn cfg() -> Config {
        // One TSC tick per cycle, no MTC: the packets below stay short.
        Config {
            tsc_start: 0x10,
            psb_period: 1 << 20,
            cbr: 24,
            mtc_freq: None,
            ..Config::default()
        }
    }

    const PSB_PLUS: [u8; 30] = [
        0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02, 0x82, 0x02,
        0x82, 0x19, 0x10, 0, 0, 0, 0, 0, 0, // TSC
        0x02, 0x03, 24, 0x00, // CBR
        0x02, 0x23, // PSBEND
    ];

    #[test]
    fn start_branches_and_syscall() {
        let events = vec![
            insn(0x40_1000, 2, Kind::Conditional), // taken to 0x401010
            insn(0x40_1010, 2, Kind::Conditional), // not taken
            insn(
                0x40_1012,
                5,
                Kind::DirectCall {
                    zero_displacement: false,
                },
            ),
            insn(0x40_2000, 1, Kind::Return), // compressed: back to 0x401017
            insn(0x40_1017, 2, Kind::IndirectJump),
            insn(0x40_3000, 2, Kind::Syscall),
            insn(0x40_3002, 2, Kind::Syscall), // exit
        ];
        let e = encode(&events, &cfg());
        let mut want = PSB_PLUS.to_vec();
        want.extend_from_slice(&[0x99, 0x01, 0x19, 0x10, 0, 0, 0, 0, 0, 0]); // MODE.Exec, TSC
        want.extend_from_slice(&[0x51, 0x00, 0x10, 0x40, 0x00]); // TIP.PGE 4 bytes vs last IP 0
        want.push(0b0001_1010); // TNT T N T
        want.extend_from_slice(&[0x2d, 0x00, 0x30]); // TIP 2 bytes
        want.push(0x01); // TIP.PGD
        let t = 0x10 + 6 + 500;
        want.extend_from_slice(&[0x99, 0x01, 0x19, t as u8, (t >> 8) as u8, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0x31, 0x02, 0x30]); // TIP.PGE 2 bytes
        want.push(0x01);
        assert_eq!(e.bytes, want);
        assert_eq!(e.stats.compressed_returns, 1);
    }

    #[test]
    fn long_tnt_and_ip_widths() {
        let mut events: Vec<Event> = (0..50)
            .map(|i| insn(0x1000 + 2 * i, 2, Kind::Conditional))
            .collect();
        events.push(insn(0x1000 + 100, 2, Kind::IndirectJump));
        events.push(insn(0x7fff_f7fc_5000, 2, Kind::IndirectJump));
        events.push(insn(0xffff_8000_0000_0000, 2, Kind::Syscall));
        let e = encode(&events, &cfg());
        let tail = &e.bytes[PSB_PLUS.len() + 10 + 3..];
        // 47 not-taken outcomes: stop bit 47 of the 48-bit payload.
        assert_eq!(&tail[..8], &[0x02, 0xa3, 0, 0, 0, 0, 0, 0x80]);
        // 3 more, then a short TNT before the TIP.
        assert_eq!(tail[8], 0b0001_0000);
        // Sign-extended 6-byte IPs: user space, then the upper half.
        assert_eq!(&tail[9..16], &[0x6d, 0x00, 0x50, 0xfc, 0xf7, 0xff, 0x7f]);
        assert_eq!(&tail[16..23], &[0x6d, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(e.stats.tnt_long, 1);
        assert_eq!(e.stats.tnt_short, 1);
    }

    #[test]
    fn overflow_loses_packets_then_resyncs_with_a_full_fup() {
        let mut c = cfg();
        c.overflow = Some(Overflow { at: 3, lost: 2 });
        let mut events: Vec<Event> = (0..8)
            .map(|i| insn(0x1000 + 2 * i, 2, Kind::Conditional))
            .collect();
        events.push(insn(0x1010, 2, Kind::Syscall));
        let e = encode(&events, &c);
        // Instructions 3 and 4 are lost, and so is nothing before them: 2 produced a TNT bit.
        assert_eq!(e.lost, vec![3, 4]);
        assert_eq!(e.stats.overflows, 1);
        let body = &e.bytes[PSB_PLUS.len() + 10 + 3..];
        assert_eq!(body[0], 0b0001_0000); // N N N flushed before the loss
        assert_eq!(&body[1..3], &[0x02, 0xf3]); // OVF
        assert_eq!(&body[3..10], &[0x7d, 0x0a, 0x10, 0, 0, 0, 0]); // FUP, 6-byte IP 0x100a
        assert_eq!(body[10], 0b0001_0000); // N N N for instructions 5..7
        assert_eq!(body[11], 0x01); // TIP.PGD at the exit
    }

    #[test]
    fn aux_buffers_end_between_packets() {
        let mut c = cfg();
        c.aux_split = 16;
        let events: Vec<Event> = (0..40)
            .map(|i| insn(0x1000 + 0x10000 * i, 2, Kind::IndirectJump))
            .collect();
        let e = encode(&events, &c);
        let buffers = e.buffers();
        assert!(buffers.len() > 5, "{buffers:?}");
        assert_eq!(buffers[0].0, 0);
        assert_eq!(buffers.last().unwrap().1, e.bytes.len());
        for w in buffers.windows(2) {
            assert_eq!(w[0].1, w[1].0);
            assert!(w[0].2 <= w[1].2, "read times go forward");
            // Each buffer ends after a whole TIP (5 bytes: opcode and 4-byte IP) or the PSB+.
            assert!(w[0].1 - w[0].0 >= 16);
        }
    }

    #[test]
    fn mtc_and_tma_follow_the_model_clock() {
        let mut c = cfg();
        c.mtc_freq = Some(0);
        c.tsc_per_ctc = 4;
        let events: Vec<Event> = (0..10)
            .map(|i| insn(0x1000 + 2 * i, 2, Kind::Other))
            .chain([insn(0x1014, 2, Kind::Syscall)])
            .collect();
        let e = encode(&events, &c);
        // TSC 0x10: CTC 4, fast counter 0.
        let tma = [0x02, 0x73, 4, 0, 0, 0, 0];
        assert_eq!(&e.bytes[24..31], &tma);
        // One MTC per CTC tick (every 4 cycles) while tracing: CTC 5 and 6.
        assert_eq!(e.stats.mtcs, 2);
        let body = &e.bytes[e.bytes.len() - 5..];
        assert_eq!(body, &[0x59, 5, 0x59, 6, 0x01]);
    }

    #[test]
    fn uncompressed_return_after_psb() {
        let mut c = cfg();
        c.psb_period = 1;
        let events = vec![
            insn(
                0x1000,
                5,
                Kind::DirectCall {
                    zero_displacement: false,
                },
            ),
            insn(0x2000, 1, Kind::Return),
            insn(0x1005, 2, Kind::Syscall),
        ];
        let e = encode(&events, &c);
        assert_eq!(e.stats.compressed_returns, 0);
        assert_eq!(e.stats.tips, 1);
        assert_eq!(e.stats.psbs, 3);
    }
}
