//! Timing: the last TSC and an estimate between TSC packets, and perf-time conversion.
//!
//! Two models: libipt's (the default, what ptxed prints) and perf 6.1's
//! (`intel-pt-decoder.c`, selected by [`EventConfig::perf`]), which the perf pipeline needs
//! because `perf script` times, orders and attributes branches by it.

use crate::pt::packets::Packet;

use super::events::EventConfig;

/// Selects perf's timing model (see [`PerfClock`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerfTiming {
    /// The maximum non-turbo ratio (AUXTRACE_INFO), for CYC and instruction estimates.
    pub max_non_turbo_ratio: u32,
}

/// perf 6.1's `decoder->timestamp` and the state it is computed from.
///
/// Differences from libipt that matter: MTC time is anchored at `TSC - FastCounter - CTC
/// remainder` (TMA), an MTC counts from the last MTC (a repeat counts 256 periods), nothing is
/// reset at a PSB, and time never goes backwards.
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

    fn tsc(&mut self, payload: u64) {
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

    fn mtc(&mut self, mtc: u32) {
        if !self.have_tma {
            return;
        }
        if self.mtc_shift > 8 && self.fixup_last_mtc {
            // TMA carries CTC[15:0] only: take the missing high MTC bits from this MTC.
            self.fixup_last_mtc = false;
            let first_missing = 1u32 << (16 - self.mtc_shift);
            self.last_mtc |= mtc & !(first_missing - 1);
            if self.last_mtc >= mtc {
                self.last_mtc = self.last_mtc.wrapping_sub(first_missing) & 0xff;
            }
        }
        let delta = if mtc > self.last_mtc {
            mtc - self.last_mtc
        } else {
            mtc + 256 - self.last_mtc
        };
        self.ctc_delta = self
            .ctc_delta
            .wrapping_add(u64::from(delta) << self.mtc_shift);
        let ts = self
            .ctc_timestamp
            .wrapping_add(self.ctc_to_tsc(self.ctc_delta));
        if ts >= self.timestamp {
            self.timestamp = ts;
        }
        self.epoch += 1;
        self.last_mtc = mtc;
    }

    fn cbr_packet(&mut self, payload: u16) {
        let cbr = u32::from(payload & 0xff);
        if cbr == self.cbr {
            return;
        }
        self.cbr = cbr;
        self.cyc_ref_timestamp = self.timestamp;
        self.cycle_cnt = 0;
    }

    /// CYC at the CBR-based rate (perf's calibration from MTC look-ahead is not modelled).
    fn cyc(&mut self, cycles: u64) {
        self.cycle_cnt = self.cycle_cnt.wrapping_add(cycles);
        if self.cyc_ref_timestamp == 0 || self.cbr == 0 || self.max_non_turbo_ratio == 0 {
            return;
        }
        // perf computes this in double precision and truncates.
        let per_cycle = f64::from(self.max_non_turbo_ratio) / f64::from(self.cbr);
        let ts = (self.cyc_ref_timestamp as f64 + self.cycle_cnt as f64 * per_cycle) as u64;
        if ts >= self.timestamp {
            self.timestamp = ts;
        }
        self.epoch += 1;
    }

    fn update(&mut self, packet: &Packet) {
        match *packet {
            Packet::Tsc { tsc } => self.tsc(tsc),
            Packet::Tma(tma) => self.tma(u32::from(tma.ctc), u32::from(tma.fast_counter())),
            Packet::Mtc { ctc } => self.mtc(u32::from(ctc)),
            Packet::Cyc { cycles, .. } => self.cyc(cycles),
            Packet::Cbr { payload } => self.cbr_packet(payload),
            Packet::Stop => self.have_tma = false,
            _ => {}
        }
    }
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

    pub fn update(&mut self, packet: &Packet) {
        if let Some(clock) = &mut self.perf {
            clock.update(packet);
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
    use crate::pt::packets::Tma;

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
