//! Timing: the last TSC and an estimate between TSC packets, and perf-time conversion.
//!
//! Two models: libipt's (the default, what ptxed prints) and perf 6.1's
//! (`intel-pt-decoder.c`, selected by [`EventConfig::perf`]), which the perf pipeline needs
//! because `perf script` times, orders and attributes branches by it.

use crate::pt::packets::{self, BlockContext, Packet};

use super::events::EventConfig;

/// Selects perf's timing model (see [`PerfClock`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerfTiming {
    /// The maximum non-turbo ratio (AUXTRACE_INFO), for CYC and instruction estimates.
    pub max_non_turbo_ratio: u32,
}

/// Where a timing packet sits in the trace, for perf's CYC calibration.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacketContext<'a> {
    /// The packet before this one (PADs aside) was a CYC (perf's `last_packet_type`).
    pub after_cyc: bool,
    /// The bytes after this packet up to the end of its AUXTRACE buffer: perf's look-ahead
    /// reads no further.
    pub rest: &'a [u8],
    /// The BBP…BEP context after this packet, to decode `rest`.
    pub block: BlockContext,
}

/// perf 6.1's `decoder->timestamp` and the state it is computed from.
///
/// Differences from libipt that matter: MTC time is anchored at `TSC - FastCounter - CTC
/// remainder` (TMA), an MTC counts from the last MTC (a repeat counts 256 periods), nothing is
/// reset at a PSB, and time never goes backwards.
///
/// CYC: cycles since a reference time (the last CBR change, or a TSC or MTC that follows a
/// CYC) times a TSC-per-cycle rate: the CBR's (`max non-turbo ratio / CBR`) until an MTC
/// that follows a CYC calibrates it by reading ahead to the next such MTC in the same buffer
/// (the TSC ticks between the two over the cycles between them). A TSC after a CYC drops the
/// calibration; a CBR change keeps it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerfClock {
    timestamp: u64,
    tsc_timestamp: u64,
    ctc_timestamp: u64,
    ctc_delta: u64,
    last_mtc: u32,
    have_tma: bool,
    fixup_last_mtc: bool,
    cbr: u32,
    cyc_ref_timestamp: u64,
    cycle_cnt: u64,
    /// TSC ticks per cycle at the CBR (perf computes it in double precision).
    cbr_cyc_to_tsc: f64,
    /// TSC ticks per cycle measured between two MTCs, when one is known.
    calc_cyc_to_tsc: Option<f64>,
    /// Bumped where perf zeroes `timestamp_insn_cnt` (so callers can count instructions
    /// since the last timing update, for `intel_pt_est_timestamp`).
    epoch: u64,
    mtc_shift: u32,
    ratio_n: u32,
    ratio_d: u32,
    max_non_turbo_ratio: u32,
}

/// perf's `multdiv`: t * n / d without overflowing on t * n.
fn multdiv(t: u64, n: u32, d: u32) -> u64 {
    if d == 0 {
        return 0;
    }
    let (n, d) = (u64::from(n), u64::from(d));
    (t / d)
        .wrapping_mul(n)
        .wrapping_add((t % d).wrapping_mul(n) / d)
}

/// How far (in TSC ticks) a TSC packet may seem to go back before perf takes it as a wrap.
const TSC_SLIP: u64 = 0x10000;

impl PerfClock {
    fn new(config: EventConfig, perf: PerfTiming) -> Self {
        let (ratio_n, ratio_d) = match config.ctc_ratio {
            Some((n, d)) if n != 0 => (n, d),
            _ => (0, 0),
        };
        PerfClock {
            mtc_shift: u32::from(config.mtc_freq).min(31),
            ratio_n,
            ratio_d,
            max_non_turbo_ratio: perf.max_non_turbo_ratio,
            ..PerfClock::default()
        }
    }

    /// `decoder->timestamp` (0: none yet).
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Changes whenever perf zeroes its instruction count since the last timing packet.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn cbr(&self) -> u32 {
        self.cbr
    }

    /// CTC ticks to TSC ticks (perf uses the integer multiplier when the ratio is whole).
    fn ctc_to_tsc(&self, ctc: u64) -> u64 {
        if self.ratio_d != 0 && self.ratio_n % self.ratio_d == 0 {
            ctc.wrapping_mul(u64::from(self.ratio_n / self.ratio_d))
        } else {
            multdiv(ctc, self.ratio_n, self.ratio_d)
        }
    }

    /// `intel_pt_est_timestamp`: `sample` plus two cycles per instruction at the CBR.
    pub fn estimate(&self, sample: u64, insns: u64) -> u64 {
        let mut est = insns.wrapping_shl(1);
        if self.cbr != 0 && self.max_non_turbo_ratio != 0 {
            est = est.wrapping_mul(u64::from(self.max_non_turbo_ratio)) / u64::from(self.cbr);
        }
        sample.wrapping_add(est)
    }

    fn tsc(&mut self, payload: u64, ctx: &PacketContext) {
        self.have_tma = false;
        if self.timestamp == 0 {
            // perf resolves the first TSC against the buffer's reference time; the upper
            // byte is zero for any TSC a recording of this century carries.
            self.tsc_timestamp = payload;
            self.timestamp = payload;
        } else {
            let mut ts = payload | (self.timestamp & (0xff << 56));
            self.tsc_timestamp = ts;
            if ts < self.timestamp && self.timestamp - ts < TSC_SLIP {
                ts = self.timestamp;
            }
            if ts < self.timestamp {
                // A wrap of the 56-bit TSC (perf also checks the buffer time; it has none here).
                ts = ts.wrapping_add(1 << 56);
                self.tsc_timestamp = ts;
            }
            self.timestamp = ts;
        }
        self.epoch += 1;
        if ctx.after_cyc {
            // A new reference; perf does not calibrate from TSC packets (they may slip
            // against CYC in PSB+), so the CBR rate applies until the next MTC.
            self.cyc_ref_timestamp = self.timestamp;
            self.cycle_cnt = 0;
            self.calc_cyc_to_tsc = None;
        }
    }

    fn tma(&mut self, ctc: u32, fc: u32) {
        if self.ratio_d == 0 {
            return;
        }
        let rem_mask = (1u32 << self.mtc_shift).wrapping_sub(1);
        let rem = ctc & rem_mask;
        self.last_mtc = (ctc >> self.mtc_shift) & 0xff;
        self.ctc_timestamp = self
            .tsc_timestamp
            .wrapping_sub(u64::from(fc))
            .wrapping_sub(self.ctc_to_tsc(u64::from(rem)));
        self.ctc_delta = 0;
        self.have_tma = true;
        self.fixup_last_mtc = true;
    }

    /// The TSC an MTC gives, advancing the MTC state `mtc_state` (the decoder's own, or
    /// the look-ahead's copy).
    fn mtc_timestamp(&self, st: &mut MtcState, mtc: u32) -> u64 {
        if self.mtc_shift > 8 && st.fixup_last_mtc {
            // TMA carries CTC[15:0] only: take the missing high MTC bits from this MTC.
            st.fixup_last_mtc = false;
            let first_missing = 1u32 << (16 - self.mtc_shift);
            st.last_mtc |= mtc & !(first_missing - 1);
            if st.last_mtc >= mtc {
                st.last_mtc = st.last_mtc.wrapping_sub(first_missing) & 0xff;
            }
        }
        let delta = if mtc > st.last_mtc {
            mtc - st.last_mtc
        } else {
            mtc + 256 - st.last_mtc
        };
        st.ctc_delta = st
            .ctc_delta
            .wrapping_add(u64::from(delta) << self.mtc_shift);
        st.last_mtc = mtc;
        self.ctc_timestamp
            .wrapping_add(self.ctc_to_tsc(st.ctc_delta))
    }

    fn mtc(&mut self, mtc: u32, ctx: &PacketContext) {
        if !self.have_tma {
            return;
        }
        let mut st = MtcState {
            last_mtc: self.last_mtc,
            ctc_delta: self.ctc_delta,
            fixup_last_mtc: self.fixup_last_mtc,
        };
        let ts = self.mtc_timestamp(&mut st, mtc);
        (self.last_mtc, self.ctc_delta, self.fixup_last_mtc) =
            (st.last_mtc, st.ctc_delta, st.fixup_last_mtc);
        if ts >= self.timestamp {
            self.timestamp = ts;
        }
        self.epoch += 1;
        if ctx.after_cyc {
            self.cyc_ref_timestamp = self.timestamp;
            self.cycle_cnt = 0;
            self.calc_cyc_to_tsc = None;
            self.calibrate(ctx);
        }
    }

    /// perf's `intel_pt_calc_cyc_to_tsc` from an MTC: reads the packets after it (to the end
    /// of its buffer) for the next MTC that follows a CYC, counting the cycles on the way,
    /// and takes the rate from the TSC between the two MTCs. Gives up at anything that may
    /// stop or change the clock (TSC, TMA, TIP.PGD, OVF, power events, a second CBR value),
    /// at an MTC going back, at a bad packet and at the buffer's end.
    fn calibrate(&mut self, ctx: &PacketContext) {
        let mut st = MtcState {
            last_mtc: self.last_mtc,
            ctc_delta: self.ctc_delta,
            fixup_last_mtc: self.fixup_last_mtc,
        };
        let mut timestamp = self.timestamp;
        let mut cycles = 0u64;
        // perf's look-ahead starts with the type of the packet before the MTC: a CYC.
        let mut after_cyc = true;
        let mut cbr: u32 = 0;
        let mut cbr_cyc_to_tsc = 0f64;
        let (data, mut block, mut pos) = (ctx.rest, ctx.block, 0usize);
        let end_ts = loop {
            if pos >= data.len() {
                return;
            }
            let Ok(packet) = packets::decode(data, pos, block) else {
                return;
            };
            pos += packet.size();
            block = block.after(&packet);
            match packet {
                Packet::Pad => continue,
                Packet::Mtc { ctc } => {
                    // No TMA yet (the decoder's): MTCs count for nothing.
                    if self.have_tma {
                        let ts = self.mtc_timestamp(&mut st, u32::from(ctc));
                        if ts < timestamp {
                            return;
                        }
                        if after_cyc {
                            break ts;
                        }
                        timestamp = ts;
                    }
                }
                Packet::Cyc { cycles: n, .. } => cycles = cycles.wrapping_add(n),
                Packet::Cbr { payload } => {
                    // The look-ahead takes both payload bytes, where the decoder takes one.
                    let value = u32::from(payload);
                    if cbr != 0 && cbr != value {
                        return;
                    }
                    cbr = value;
                    cbr_cyc_to_tsc = f64::from(self.max_non_turbo_ratio) / f64::from(value);
                }
                Packet::Tnt(_)
                | Packet::TipPge(_)
                | Packet::Tip(_)
                | Packet::Fup(_)
                | Packet::Psb
                | Packet::Pip(_)
                | Packet::ModeExec(_)
                | Packet::ModeTsx(_)
                | Packet::PsbEnd
                | Packet::Vmcs { .. }
                | Packet::Mnt { .. }
                | Packet::Ptw(_)
                | Packet::Bbp(_)
                | Packet::Bip { .. }
                | Packet::Bep { .. }
                | Packet::Cfe(_)
                | Packet::Evd(_) => {}
                // TSC and TMA (perf does not calibrate across them), TIP.PGD, TraceStop,
                // EXSTOP, MWAIT, PWRE, PWRX, OVF, and what perf 6.1 does not know.
                _ => return,
            }
            after_cyc = matches!(packet, Packet::Cyc { .. });
        };
        if cbr == 0 && self.cbr != 0 {
            cbr = self.cbr;
            cbr_cyc_to_tsc = self.cbr_cyc_to_tsc;
        }
        if cycles == 0 {
            return;
        }
        let rate = end_ts.wrapping_sub(self.timestamp) as f64 / cycles as f64;
        // A rate far above the CBR's means the clock stopped in between: not a measure.
        if cbr != 0 && rate > cbr_cyc_to_tsc && rate / cbr_cyc_to_tsc > 1.25 {
            return;
        }
        self.calc_cyc_to_tsc = Some(rate);
    }

    fn cbr_packet(&mut self, payload: u16) {
        let cbr = u32::from(payload & 0xff);
        if cbr == self.cbr {
            return;
        }
        self.cbr = cbr;
        self.cbr_cyc_to_tsc = f64::from(self.max_non_turbo_ratio) / f64::from(cbr);
        self.cyc_ref_timestamp = self.timestamp;
        self.cycle_cnt = 0;
    }

    /// The reference time plus the cycles since at the calibrated rate, else the CBR's.
    fn cyc(&mut self, cycles: u64) {
        self.cycle_cnt = self.cycle_cnt.wrapping_add(cycles);
        if self.cyc_ref_timestamp == 0 {
            return;
        }
        let rate = match self.calc_cyc_to_tsc {
            Some(rate) => rate,
            None if self.cbr != 0 => self.cbr_cyc_to_tsc,
            None => return,
        };
        // perf computes this in double precision and truncates.
        let ts = (self.cyc_ref_timestamp as f64 + self.cycle_cnt as f64 * rate) as u64;
        if ts >= self.timestamp {
            self.timestamp = ts;
        }
        self.epoch += 1;
    }

    fn update(&mut self, packet: &Packet, ctx: &PacketContext) {
        match *packet {
            Packet::Tsc { tsc } => self.tsc(tsc, ctx),
            Packet::Tma(tma) => self.tma(u32::from(tma.ctc), u32::from(tma.fast_counter())),
            Packet::Mtc { ctc } => self.mtc(u32::from(ctc), ctx),
            Packet::Cyc { cycles, .. } => self.cyc(cycles),
            Packet::Cbr { payload } => self.cbr_packet(payload),
            Packet::Stop => self.have_tma = false,
            _ => {}
        }
    }
}

/// The MTC counting state perf's look-ahead works on a copy of.
struct MtcState {
    last_mtc: u32,
    ctc_delta: u64,
    fixup_last_mtc: bool,
}

/// Time as the timing packets tell it.
///
/// Keeps the last full TSC and refines it with MTC (when the TSC:CTC ratio is known) so events
/// between TSC packets get an estimate; CYC is not used for estimates. With
/// [`EventConfig::perf`] set, time is perf's instead (see [`PerfClock`]).
#[derive(Debug, Clone, Copy)]
pub struct Time {
    tsc: Option<u64>,
    /// TSC at the last MTC/TMA anchor and the CTC value there.
    base_tsc: u64,
    base_ctc: Option<u64>,
    /// Last CTC value reconstructed from MTC.
    last_ctc: u64,
    mtc_shift: u32,
    ratio: Option<(u32, u32)>,
    cbr: Option<u8>,
    perf: Option<PerfClock>,
}

impl Time {
    pub fn new(config: EventConfig) -> Self {
        Time {
            perf: config.perf.map(|p| PerfClock::new(config, p)),
            tsc: None,
            base_tsc: 0,
            base_ctc: None,
            last_ctc: 0,
            mtc_shift: u32::from(config.mtc_freq).min(31),
            ratio: config.ctc_ratio.filter(|&(_, d)| d != 0),
            cbr: None,
        }
    }

    /// The estimated TSC now.
    pub fn tsc(&self) -> Option<u64> {
        match &self.perf {
            Some(clock) => (clock.timestamp != 0).then_some(clock.timestamp),
            None => self.tsc,
        }
    }

    /// perf's clock, when the configuration selected it.
    pub fn perf(&self) -> Option<&PerfClock> {
        self.perf.as_ref()
    }

    /// Timing after a (re)synchronisation: libipt starts afresh, perf carries on.
    pub fn restart(&mut self, config: EventConfig) {
        if self.perf.is_none() || config.perf.is_none() {
            *self = Time::new(config);
        }
    }

    /// The last core:bus ratio.
    pub fn cbr(&self) -> Option<u8> {
        self.cbr
    }

    /// Updates with `packet` alone (no CYC calibration for perf's clock).
    pub fn update(&mut self, packet: &Packet) {
        self.update_in(packet, &PacketContext::default());
    }

    /// Updates with `packet`, read at `ctx` in the trace.
    pub fn update_in(&mut self, packet: &Packet, ctx: &PacketContext) {
        if let Some(clock) = &mut self.perf {
            clock.update(packet, ctx);
        }
        match *packet {
            Packet::Tsc { tsc } => {
                self.tsc = Some(tsc);
                self.base_tsc = tsc;
                self.base_ctc = None;
            }
            Packet::Tma(tma) => {
                self.base_ctc = Some(u64::from(tma.ctc));
                self.last_ctc = u64::from(tma.ctc);
            }
            Packet::Mtc { ctc } => {
                let (Some(base_ctc), Some((num, den))) = (self.base_ctc, self.ratio) else {
                    return;
                };
                // MTC carries CTC bits [shift+7:shift]; carry into the upper bits on wrap.
                let unit = 1u64 << self.mtc_shift;
                let mask = 0xffu64 << self.mtc_shift;
                let mut ctc = (self.last_ctc & !mask) | (u64::from(ctc) << self.mtc_shift);
                if ctc < self.last_ctc {
                    ctc = ctc.wrapping_add(mask.wrapping_add(unit));
                }
                self.last_ctc = ctc;
                let delta = ctc.wrapping_sub(base_ctc);
                let tsc = self
                    .base_tsc
                    .wrapping_add(delta.wrapping_mul(u64::from(num)) / u64::from(den));
                if self.tsc.is_none_or(|old| tsc > old) {
                    self.tsc = Some(tsc);
                }
            }
            Packet::Cbr { payload } => self.cbr = Some(payload as u8),
            _ => {}
        }
    }
}

/// TSC to perf time, from perf's `time_shift`, `time_mult` and `time_zero`
/// (PERF_RECORD_TIME_CONV or the Intel PT AUXTRACE_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeConv {
    pub shift: u16,
    pub mult: u32,
    pub zero: u64,
}

impl TimeConv {
    /// perf time = zero + (tsc * mult) >> shift, split so the product cannot overflow.
    pub fn perf_time(&self, tsc: u64) -> u64 {
        let shift = u32::from(self.shift).min(63);
        let mult = u64::from(self.mult);
        let quot = tsc >> shift;
        let rem = tsc & ((1u64 << shift) - 1);
        self.zero
            .wrapping_add(quot.wrapping_mul(mult))
            .wrapping_add(rem.wrapping_mul(mult) >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pt::flow::ErrorKind;
    use crate::pt::packets::{self, Tma};

    /// The samples' configuration: MTCFreq 3, TSC:CTC 200/2, max non-turbo ratio 24.
    fn perf_config() -> EventConfig {
        EventConfig {
            mtc_freq: 3,
            ctc_ratio: Some((200, 2)),
            perf: Some(PerfTiming {
                max_non_turbo_ratio: 24,
            }),
        }
    }

    /// The samples' TSC to perf time.
    const CONV: TimeConv = TimeConv {
        shift: 31,
        mult: 894_784_853,
        zero: 0,
    };

    fn tma(ctc: u16, fc: u16) -> Packet {
        Packet::Tma(Tma {
            ctc,
            reserved: 0,
            fast_counter_raw: fc,
        })
    }

    fn feed(time: &mut Time, packets: &[Packet]) {
        for p in packets {
            time.update(p);
        }
    }

    #[test]
    fn perf_mtc_is_anchored_at_tsc_minus_fast_counter() {
        // single-thread: TSC 0x100000000, TMA CTC 0x5c28 FC 0x60, MTC 0x86; perf script
        // times the branches after that MTC 1.789569999.
        let mut time = Time::new(perf_config());
        feed(
            &mut time,
            &[Packet::Tsc { tsc: 0x1_0000_0000 }, tma(0x5c28, 0x60)],
        );
        assert_eq!(time.tsc(), Some(0x1_0000_0000));
        assert_eq!(CONV.perf_time(0x1_0000_0000), 1_789_569_706);
        time.update(&Packet::Mtc { ctc: 0x86 });
        assert_eq!(time.tsc(), Some(0x1_0000_0000 - 0x60 + 8 * 100));
        assert_eq!(CONV.perf_time(time.tsc().unwrap()), 1_789_569_999);
    }

    #[test]
    fn perf_tma_subtracts_the_ctc_remainder() {
        // threads, CPU 0: TSC 0x100000096, TMA CTC 0x5c2a (remainder 2) FC 0x2e; perf: the
        // trace start at 1.789569768, then 1.789569999 and 1.789570332 after MTC 0x86, 0x87.
        let mut time = Time::new(perf_config());
        feed(
            &mut time,
            &[Packet::Tsc { tsc: 0x1_0000_0096 }, tma(0x5c2a, 0x2e)],
        );
        assert_eq!(CONV.perf_time(time.tsc().unwrap()), 1_789_569_768);
        let anchor = 0x1_0000_0096 - 0x2e - 2 * 100;
        time.update(&Packet::Mtc { ctc: 0x86 });
        assert_eq!(time.tsc(), Some(anchor + 800));
        assert_eq!(CONV.perf_time(anchor + 800), 1_789_569_999);
        time.update(&Packet::Mtc { ctc: 0x87 });
        assert_eq!(CONV.perf_time(time.tsc().unwrap()), 1_789_570_332);
    }

    #[test]
    fn perf_repeated_mtc_counts_a_full_wrap_and_time_never_goes_back() {
        let mut time = Time::new(perf_config());
        feed(
            &mut time,
            &[
                Packet::Tsc { tsc: 0x1_0000_0000 },
                tma(0x5c28, 0),
                Packet::Mtc { ctc: 0x86 },
            ],
        );
        let first = time.tsc().unwrap();
        // perf: an MTC equal to the last one is 256 MTC periods later.
        time.update(&Packet::Mtc { ctc: 0x86 });
        assert_eq!(time.tsc(), Some(first + 256 * 8 * 100));
        // A TSC slightly behind (within perf's 0x10000 slip) does not move time back.
        time.update(&Packet::Tsc {
            tsc: first + 256 * 800 - 0x100,
        });
        assert_eq!(time.tsc(), Some(first + 256 * 800));
    }

    #[test]
    fn perf_mtc_needs_a_tma_after_each_tsc() {
        let mut time = Time::new(perf_config());
        feed(
            &mut time,
            &[
                Packet::Tsc { tsc: 0x1_0000_0000 },
                tma(0x5c28, 0x60),
                Packet::Tsc { tsc: 0x1_0000_1000 },
                Packet::Mtc { ctc: 0x86 },
            ],
        );
        assert_eq!(time.tsc(), Some(0x1_0000_1000));
        let epoch = time.perf().unwrap().epoch();
        // A TSC zeroes perf's instruction count; an MTC without TMA does not.
        time.update(&Packet::Mtc { ctc: 0x87 });
        assert_eq!(time.perf().unwrap().epoch(), epoch);
    }

    #[test]
    fn perf_time_survives_a_resync_libipt_time_does_not() {
        let mut perf = Time::new(perf_config());
        perf.update(&Packet::Tsc { tsc: 0x1_0000_0000 });
        perf.restart(perf_config());
        assert_eq!(perf.tsc(), Some(0x1_0000_0000));
        let libipt = EventConfig {
            perf: None,
            ..perf_config()
        };
        let mut time = Time::new(libipt);
        time.update(&Packet::Tsc { tsc: 0x1_0000_0000 });
        time.restart(libipt);
        assert_eq!(time.tsc(), None);
    }

    #[test]
    fn perf_cyc_runs_at_the_cbr_rate_and_estimates_use_it() {
        let mut time = Time::new(perf_config());
        // CBR 0x20 (32) against max non-turbo 24: 0.75 TSC ticks per cycle.
        feed(
            &mut time,
            &[Packet::Tsc { tsc: 1_000 }, Packet::Cbr { payload: 0x20 }],
        );
        time.update(&Packet::Cyc {
            cycles: 100,
            size: 2,
        });
        assert_eq!(time.tsc(), Some(1_075));
        // intel_pt_est_timestamp: 2 cycles per instruction, 10 instructions.
        assert_eq!(time.perf().unwrap().estimate(1_000, 10), 1_015);
    }

    /// Packet bytes for the CYC tests.
    mod enc {
        pub fn tsc(tsc: u64) -> Vec<u8> {
            let mut v = vec![0x19];
            v.extend_from_slice(&tsc.to_le_bytes()[..7]);
            v
        }
        pub fn tma(ctc: u16, fc: u16) -> Vec<u8> {
            let [c0, c1] = ctc.to_le_bytes();
            vec![0x02, 0x73, c0, c1, 0, fc as u8, (fc >> 8) as u8 & 1]
        }
        pub fn cbr(ratio: u8) -> Vec<u8> {
            vec![0x02, 0x03, ratio, 0]
        }
        pub fn mtc(ctc: u8) -> Vec<u8> {
            vec![0x59, ctc]
        }
        /// CYC: 5 count bits in the header byte, then 7 per byte (bit 0: more follow).
        pub fn cyc(mut cycles: u64) -> Vec<u8> {
            let mut v = vec![(((cycles & 0x1f) as u8) << 3) | 0b11];
            cycles >>= 5;
            if cycles != 0 {
                v[0] |= 0b100;
            }
            while cycles != 0 {
                let more = u8::from(cycles >> 7 != 0);
                v.push(((cycles & 0x7f) as u8) << 1 | more);
                cycles >>= 7;
            }
            v
        }
        /// A short TNT of one taken branch.
        pub fn tnt() -> Vec<u8> {
            vec![0x06]
        }
        pub fn pad() -> Vec<u8> {
            vec![0x00]
        }
    }

    /// Feeds a packet stream as the event decoder does (each packet with whether a CYC came
    /// before it and the bytes after it) and returns perf's timestamp after every packet,
    /// relative to `base`.
    fn run(packets: &[Vec<u8>], base: u64) -> Vec<i64> {
        run_to(packets, base, usize::MAX)
    }

    /// As [`run`], with the look-ahead limited to the buffer ending at byte `end`.
    fn run_to(packets: &[Vec<u8>], base: u64, end: usize) -> Vec<i64> {
        let data: Vec<u8> = packets.concat();
        let mut time = Time::new(perf_config());
        let (mut pos, mut block, mut after_cyc) = (0, BlockContext::None, false);
        let mut out = Vec::new();
        for expected in packets {
            let packet = packets::decode(&data, pos, block).unwrap();
            assert_eq!(packet.size(), expected.len(), "{packet:?}");
            pos += packet.size();
            block = block.after(&packet);
            let ctx = PacketContext {
                after_cyc,
                rest: data.get(pos..end.min(data.len())).unwrap_or(&[]),
                block,
            };
            time.update_in(&packet, &ctx);
            if packet != Packet::Pad {
                after_cyc = matches!(packet, Packet::Cyc { .. });
            }
            out.push(time.tsc().unwrap_or(0).wrapping_sub(base) as i64);
        }
        out
    }

    const T0: u64 = 1 << 32;

    /// TSC T0, TMA with CTC 0x5c28 (last MTC 0x85, no remainder) and no fast counter, so MTC
    /// 0x86 is T0 + 800 (8 CTC ticks of 100 TSC ticks), 0x87 T0 + 1600; CBR 32 against max
    /// non-turbo 24: 0.75 TSC ticks per cycle until calibrated.
    fn start() -> Vec<Vec<u8>> {
        vec![enc::tsc(T0), enc::tma(0x5c28, 0), enc::cbr(32)]
    }

    #[test]
    fn perf_cyc_calibrates_from_mtc_to_mtc() {
        let mut p = start();
        p.extend([
            enc::cyc(1000), // T0 + 1000 * 0.75
            enc::mtc(0x86), // after a CYC: new reference T0 + 800, rate read ahead: 800 / 1060
            enc::cyc(500),  // T0 + 800 + 500 * 800 / 1060 = T0 + 1177.36
            enc::tnt(),
            enc::pad(),
            enc::cyc(560), // 1060 cycles: T0 + 1600 (the double product is 800.0000000000001)
            enc::mtc(0x87), // after a CYC: reference T0 + 1600; nothing ahead: no rate
            enc::cyc(100), // the CBR's rate again: T0 + 1600 + 75
        ]);
        let t = run(&p, T0);
        assert_eq!(&t[3..], &[750, 800, 1177, 1177, 1177, 1600, 1600, 1675]);
    }

    #[test]
    fn perf_cyc_mtc_not_after_a_cyc_keeps_the_reference() {
        let mut p = start();
        p.extend([
            enc::cyc(1000),
            enc::tnt(),
            enc::mtc(0x86), // after a TNT: time T0 + 800, but cycles still count from T0
            enc::cyc(200),  // 1200 cycles from T0 at 0.75
        ]);
        assert_eq!(&run(&p, T0)[3..], &[750, 750, 800, 900]);
    }

    #[test]
    fn perf_cyc_rejects_a_rate_over_a_quarter_above_the_cbr() {
        let mut p = start();
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86), // ahead: 800 TSC ticks over 700 cycles, 1.52 times 0.75: refused
            enc::cyc(700),  // T0 + 800 + 700 * 0.75
            enc::mtc(0x87),
        ]);
        assert_eq!(&run(&p, T0)[3..], &[750, 800, 1325, 1600]);
        // 800 over 1000 cycles (1.07 times 0.75) is taken: T0 + 800 + 700 * 0.8.
        let mut p = start();
        p.extend([enc::cyc(1000), enc::mtc(0x86), enc::cyc(700), enc::cyc(300)]);
        p.push(enc::mtc(0x87));
        assert_eq!(&run(&p, T0)[3..], &[750, 800, 1360, 1600, 1600]);
    }

    #[test]
    fn perf_cyc_lookahead_stops_at_a_tsc_and_a_tsc_after_cyc_drops_the_rate() {
        let mut p = start();
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86),      // ahead: a TSC before the next MTC: no rate
            enc::cyc(400),       // T0 + 800 + 300
            enc::tsc(T0 + 1200), // after a CYC: reference T0 + 1200
            enc::tma(0x5c34, 0), // CTC 12 ticks on, remainder 4: MTCs from T0 + 800 again
            enc::cyc(1000),      // T0 + 1200 + 750
            enc::mtc(0x87),      // T0 + 1600 is behind: time stays
        ]);
        assert_eq!(&run(&p, T0)[3..], &[750, 800, 1100, 1200, 1200, 1950, 1950]);
        // Calibrated first (800 over 1000 cycles), then a TSC after a CYC: back to 0.75.
        let mut p = start();
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86),
            enc::cyc(1000), // T0 + 1600 at 0.8
            enc::mtc(0x87),
            enc::cyc(10), // no rate ahead: 0.75 from T0 + 1600
            enc::tsc(T0 + 1700),
            enc::cyc(100), // T0 + 1700 + 75
        ]);
        assert_eq!(&run(&p, T0)[3..], &[750, 800, 1600, 1600, 1607, 1700, 1775]);
    }

    #[test]
    fn perf_cyc_cbr_change_keeps_the_calibrated_rate() {
        let mut p = start();
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86), // rate 800 / 1000 from the look-ahead (the CBR 16 ahead is fine: one value)
            enc::cyc(250),  // T0 + 800 + 200
            enc::cbr(16),   // a new reference at T0 + 1000; the rate stays 0.8 (the CBR's is 1.5)
            enc::cyc(500),  // T0 + 1000 + 400
            enc::cyc(250),  // 750 cycles: T0 + 1600
            enc::mtc(0x87),
        ]);
        assert_eq!(&run(&p, T0)[3..], &[750, 800, 1000, 1000, 1400, 1600, 1600]);
    }

    #[test]
    fn perf_cyc_lookahead_starts_as_if_after_a_cyc() {
        // perf's look-ahead takes the type of the packet before the MTC for the packet before
        // the first one it reads: an MTC right after the calibrating MTC ends it with no
        // cycles counted, so the CBR rate stays (else 1600 ticks over 2000 cycles: 0.8).
        let mut p = start();
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86), // reference T0 + 800
            enc::mtc(0x87), // not after a CYC: time T0 + 1600, the reference stays
            enc::cyc(2000), // T0 + 800 + 2000 * 0.75
            enc::mtc(0x88),
        ]);
        assert_eq!(&run(&p, T0)[3..], &[750, 800, 1600, 2300, 2400]);
    }

    #[test]
    fn perf_cyc_lookahead_ends_with_its_buffer() {
        let mut p = start();
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86),
            enc::cyc(1000),
            enc::mtc(0x87),
        ]);
        // In one buffer: 800 ticks over 1000 cycles, the CYC lands on T0 + 1600.
        assert_eq!(&run(&p, T0)[3..], &[750, 800, 1600, 1600]);
        // The buffer ends before the second MTC: no rate, the CYC runs at 0.75.
        let end = p.iter().map(Vec::len).sum::<usize>() - 2;
        assert_eq!(&run_to(&p, T0, end)[3..], &[750, 800, 1550, 1600]);
    }

    /// The TSCs of the TNT events an event decoder gives, from `sync` on.
    fn tnt_times(
        data: &[u8],
        sync: impl FnOnce(&mut super::super::events::EventDecoder) -> Result<(), ErrorKind>,
    ) -> Vec<u64> {
        tnt_times_in(data, &[], sync)
    }

    /// As [`tnt_times`], for the buffers ending at `ends` joined.
    fn tnt_times_in(
        data: &[u8],
        ends: &[usize],
        sync: impl FnOnce(&mut super::super::events::EventDecoder) -> Result<(), ErrorKind>,
    ) -> Vec<u64> {
        let mut dec = super::super::events::EventDecoder::new(data, perf_config());
        dec.set_buffer_ends(ends);
        sync(&mut dec).unwrap();
        let mut out = Vec::new();
        while let Ok(event) = dec.next_event() {
            if matches!(event.kind, super::super::EventKind::Tnt { .. }) {
                out.push(event.tsc.unwrap_or(0) - T0);
            }
        }
        out
    }

    /// PSB+ at `tsc` (with a TMA of `ctc` and `fc`, CBR 32, tracing on at a FUP).
    fn psb_plus(tsc: u64, ctc: u16, fc: u16) -> Vec<Vec<u8>> {
        let fup = [0x7d, 0x00, 0x10, 0x40, 0x00, 0x00, 0x00];
        vec![
            packets::PSB.to_vec(),
            enc::tsc(tsc),
            enc::tma(ctc, fc),
            enc::cbr(32),
            fup.to_vec(),
            vec![0x02, 0x23],
        ]
    }

    #[test]
    fn perf_cyc_lookahead_stops_at_the_end_of_an_auxtrace_buffer() {
        let mut p = psb_plus(T0, 0x5c28, 0);
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86), // reference T0 + 800; ahead: 800 ticks over 1005 cycles
            enc::tnt(),
            enc::cyc(1000),
            enc::tnt(), // T0 + 800 + 1000 * 800 / 1005 = T0 + 1596.02
        ]);
        let first = p.iter().map(Vec::len).sum::<usize>();
        p.extend([enc::cyc(5), enc::mtc(0x87)]);
        let data: Vec<u8> = p.concat();
        assert_eq!(tnt_times(&data, |d| d.sync_forward()), [800, 1596]);
        // perf joins the buffers into one stream but reads ahead only in the current one:
        // the MTC that would calibrate is in the next buffer, so the CBR's rate stays.
        let ends = [first, data.len()];
        assert_eq!(
            tnt_times_in(&data, &ends, |d| d.sync_forward()),
            [800, 1550]
        );
    }

    #[test]
    fn perf_cyc_state_crosses_a_psb_and_a_segment_decoded_alone_rebuilds_it() {
        let mut p = psb_plus(T0, 0x5c28, 0);
        p.extend([
            enc::cyc(1000),
            enc::mtc(0x86), // after a CYC: reference T0 + 800, no rate (the look-ahead meets the next TSC)
            enc::tnt(),     // T0 + 800
            enc::cyc(301),
            enc::tnt(), // T0 + 800 + 225.75
        ]);
        let second = p.iter().map(Vec::len).sum::<usize>();
        // TSC T0 + 1026, CTC 10 ticks and a remainder of 2 on: MTCs count from T0 + 800.
        p.extend(psb_plus(T0 + 1026, 0x5c32, 26));
        // The CBR is unchanged, so the reference stays T0 + 800: 305 cycles at 0.75 give
        // T0 + 1028.75. A decoder that knew only this segment would take its TSC as the
        // reference: T0 + 1026 + 3 = T0 + 1029.
        p.extend([enc::cyc(4), enc::tnt()]);
        let data: Vec<u8> = p.concat();
        assert_eq!(tnt_times(&data, |d| d.sync_forward()), [800, 1025, 1028]);
        assert_eq!(tnt_times(&data, |d| d.sync_set(second)), [1028]);
        assert_eq!(tnt_times(&data[second..], |d| d.sync_forward()), [1029]);
    }

    #[test]
    fn perf_mtc_fixup_takes_missing_high_bits_from_the_mtc() {
        // MTCFreq 10: TMA's CTC[15:0] gives only MTC bits 5:0.
        let config = EventConfig {
            mtc_freq: 10,
            ..perf_config()
        };
        let mut time = Time::new(config);
        feed(&mut time, &[Packet::Tsc { tsc: 1 << 40 }, tma(0x0400, 0)]);
        // last_mtc 0x01 becomes 0x41 from MTC 0x42: one period later.
        time.update(&Packet::Mtc { ctc: 0x42 });
        assert_eq!(time.tsc(), Some((1 << 40) + (1 << 10) * 100));
    }

    #[test]
    fn perf_time_matches_the_unsplit_formula() {
        let conv = TimeConv {
            shift: 10,
            mult: 1_000,
            zero: 5,
        };
        let tsc = 123_456_789u64;
        assert_eq!(conv.perf_time(tsc), 5 + ((tsc as u128 * 1000) >> 10) as u64);
    }
}
