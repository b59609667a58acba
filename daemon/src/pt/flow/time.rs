//! Timing: the last TSC and an estimate between TSC packets, and perf-time conversion.

use crate::pt::packets::Packet;

use super::events::EventConfig;

/// Time as the timing packets tell it.
///
/// Keeps the last full TSC and refines it with MTC (when the TSC:CTC ratio is known) so events
/// between TSC packets get an estimate; CYC is not used for estimates.
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
}

impl Time {
    pub fn new(config: EventConfig) -> Self {
        Time {
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
        self.tsc
    }

    /// The last core:bus ratio.
    pub fn cbr(&self) -> Option<u8> {
        self.cbr
    }

    pub fn update(&mut self, packet: &Packet) {
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
