//! perf time ⇄ TSC, and the Intel PT recording parameters from AUXTRACE_INFO, as plain data.

use crate::perf::{EventAttr, IntelPtInfo, TimeConv};

/// How perf time (ns) relates to the TSC: perf's `struct perf_tsc_conversion`
/// (tools/perf/util/tsc.h). The field widths are perf's own — `time_shift` is a u16 and
/// `time_mult` a u32 there, so wider values from a record are truncated the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscConversion {
    pub time_shift: u16,
    pub time_mult: u32,
    pub time_zero: u64,
    pub time_cycles: u64,
    pub time_mask: u64,
    pub cap_user_time_zero: bool,
    pub cap_user_time_short: bool,
}

impl TscConversion {
    /// The conversion Intel PT decoding uses: AUXTRACE_INFO priv[1..=3]. perf's Intel PT
    /// decoder never sets `cap_user_time_short`, and it uses a multiplier of 1 when the
    /// recording is timeless and the multiplier is 0.
    pub fn from_intel_pt(info: &IntelPtInfo) -> Self {
        TscConversion {
            time_shift: info.time_shift as u16,
            time_mult: info.time_mult as u32,
            time_zero: info.time_zero,
            cap_user_time_zero: info.cap_user_time_zero != 0,
            ..Default::default()
        }
    }

    /// The conversion in a TIME_CONV record (old layout: no cycles/mask/caps).
    pub fn from_time_conv(tc: &TimeConv) -> Self {
        TscConversion {
            time_shift: tc.time_shift as u16,
            time_mult: tc.time_mult as u32,
            time_zero: tc.time_zero,
            time_cycles: tc.time_cycles.unwrap_or(0),
            time_mask: tc.time_mask.unwrap_or(0),
            cap_user_time_zero: tc.cap_user_time_zero.unwrap_or(false),
            cap_user_time_short: tc.cap_user_time_short.unwrap_or(false),
        }
    }

    /// perf's `tsc_to_perf_time`: split so that `tsc * mult` cannot overflow, wrapping where
    /// perf's u64 arithmetic wraps.
    pub fn tsc_to_perf(&self, tsc: u64) -> u64 {
        let mut cyc = tsc;
        if self.cap_user_time_short {
            cyc = self
                .time_cycles
                .wrapping_add(cyc.wrapping_sub(self.time_cycles) & self.time_mask);
        }
        let shift = u32::from(self.time_shift);
        let mult = u64::from(self.time_mult);
        let quot = cyc.checked_shr(shift).unwrap_or(0);
        let rem = cyc & 1u64.checked_shl(shift).unwrap_or(0).wrapping_sub(1);
        self.time_zero
            .wrapping_add(quot.wrapping_mul(mult))
            .wrapping_add(rem.wrapping_mul(mult).checked_shr(shift).unwrap_or(0))
    }

    /// perf's `perf_time_to_tsc`, the inverse of [`Self::tsc_to_perf`] up to rounding. A zero
    /// multiplier counts as 1 (as perf sets it for timeless decoding) instead of dividing by 0.
    pub fn perf_to_tsc(&self, time: u64) -> u64 {
        let shift = u32::from(self.time_shift);
        let mult = u64::from(self.time_mult.max(1));
        let t = time.wrapping_sub(self.time_zero);
        let (quot, rem) = (t / mult, t % mult);
        quot.checked_shl(shift)
            .unwrap_or(0)
            .wrapping_add(rem.checked_shl(shift).unwrap_or(0) / mult)
    }
}

/// The Intel PT recording parameters (AUXTRACE_INFO priv[], tools/perf/util/intel-pt.h) and the
/// PT event's config. The `*_bit` fields are masks of `config` bits, as perf records them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtConfig {
    pub pmu_type: u32,
    /// The Intel PT event's `attr.config`, when the recording has that event.
    pub config: Option<u64>,
    /// Whether the Intel PT event excluded kernel code.
    pub exclude_kernel: bool,
    /// Whether every event samples TIME (perf decodes timeless otherwise).
    pub all_events_have_time: bool,
    pub cap_user_time_zero: bool,
    pub tsc_bit: u64,
    pub noretcomp_bit: u64,
    /// 0 none, 1 sched_switch tracepoint, 2 per-thread SWITCH, 3 SWITCH_CPU_WIDE.
    pub have_sched_switch: u64,
    pub snapshot_mode: bool,
    pub per_cpu_mmaps: bool,
    pub mtc_bit: u64,
    pub mtc_freq_bits: u64,
    pub tsc_ctc_ratio_n: u64,
    pub tsc_ctc_ratio_d: u64,
    pub cyc_bit: u64,
    pub max_nonturbo_ratio: u64,
    /// The address filter (`filter 0x…/0x…@/path`), when recorded.
    pub filter: Option<String>,
    pub cap_event_trace: Option<u64>,
}

impl PtConfig {
    /// Reads the AUXTRACE_INFO fields and finds the PT event among `attrs` by its PMU type.
    pub fn new(info: &IntelPtInfo, attrs: &[EventAttr<'_>]) -> Self {
        let pt_attr = attrs.iter().find(|a| u64::from(a.type_) == info.pmu_type);
        PtConfig {
            pmu_type: info.pmu_type as u32,
            config: pt_attr.map(|a| a.config),
            exclude_kernel: pt_attr
                .is_some_and(|a| a.flags & crate::perf::attr_flags::EXCLUDE_KERNEL != 0),
            all_events_have_time: attrs
                .iter()
                .all(|a| a.sample_type & crate::perf::sample_type::TIME != 0),
            cap_user_time_zero: info.cap_user_time_zero != 0,
            tsc_bit: info.tsc_bit,
            noretcomp_bit: info.noretcomp_bit,
            have_sched_switch: info.have_sched_switch,
            snapshot_mode: info.snapshot_mode != 0,
            per_cpu_mmaps: info.per_cpu_mmaps != 0,
            mtc_bit: info.mtc_bit.unwrap_or(0),
            mtc_freq_bits: info.mtc_freq_bits.unwrap_or(0),
            tsc_ctc_ratio_n: info.tsc_ctc_ratio_n.unwrap_or(0),
            tsc_ctc_ratio_d: info.tsc_ctc_ratio_d.unwrap_or(0),
            cyc_bit: info.cyc_bit.unwrap_or(0),
            max_nonturbo_ratio: info.max_nonturbo_ratio.unwrap_or(0),
            filter: info.filter.clone().filter(|f| !f.is_empty()),
            cap_event_trace: info.cap_event_trace,
        }
    }

    fn config_has(&self, mask: u64) -> bool {
        mask != 0 && self.config.is_some_and(|c| c & mask != 0)
    }

    /// TSC packets enabled (perf's `intel_pt_have_tsc`).
    pub fn has_tsc(&self) -> bool {
        self.config_has(self.tsc_bit)
    }

    pub fn has_mtc(&self) -> bool {
        self.config_has(self.mtc_bit)
    }

    pub fn has_cyc(&self) -> bool {
        self.config_has(self.cyc_bit)
    }

    /// Returns may be compressed into TNT bits (perf's `intel_pt_return_compression`).
    pub fn return_compression(&self) -> bool {
        !self.config_has(self.noretcomp_bit)
    }

    /// The MTC period field of the config (perf's `intel_pt_mtc_period`).
    pub fn mtc_period(&self) -> u32 {
        if self.mtc_freq_bits == 0 {
            return 0;
        }
        let shift = self.mtc_freq_bits.trailing_zeros();
        self.config
            .map_or(0, |c| ((c & self.mtc_freq_bits) >> shift) as u32)
    }

    /// Whether perf decodes without timestamps (perf's `intel_pt_timeless_decoding`): then
    /// per-CPU current threads cannot be followed and only per-thread queues attribute threads.
    pub fn timeless_decoding(&self) -> bool {
        self.tsc_bit == 0
            || !self.cap_user_time_zero
            || !self.all_events_have_time
            || !self.has_tsc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_arithmetic() {
        // Skylake values: shift 10, mult 611, zero as recorded.
        let c = TscConversion {
            time_shift: 10,
            time_mult: 611,
            time_zero: 0xfffe_ffd9_f4c6_d1a2,
            ..Default::default()
        };
        for tsc in [0u64, 1, 0xbc4cbefc32, u64::MAX >> 8] {
            let t = c.tsc_to_perf(tsc);
            let back = c.perf_to_tsc(t);
            // Rounding down both ways: back never exceeds tsc and is within one ns's worth.
            assert!(
                back <= tsc && tsc - back <= 2,
                "{tsc:#x} -> {t} -> {back:#x}"
            );
        }
        let timeless = TscConversion::default();
        assert_eq!(timeless.perf_to_tsc(5), 5);
        assert_eq!(timeless.tsc_to_perf(5), 0);
        let big_shift = TscConversion {
            time_shift: 70,
            time_mult: 3,
            ..Default::default()
        };
        // Shifts past 63 are undefined in C; here they are defined and do not panic.
        big_shift.tsc_to_perf(u64::MAX);
        big_shift.perf_to_tsc(u64::MAX);
    }

    #[test]
    fn short_time_wraps_like_perf() {
        let c = TscConversion {
            time_shift: 0,
            time_mult: 1,
            time_cycles: 0x1000,
            time_mask: 0xff,
            cap_user_time_short: true,
            ..Default::default()
        };
        assert_eq!(c.tsc_to_perf(0x1005), 0x1005);
        assert_eq!(c.tsc_to_perf(0x2105), 0x1005);
    }
}
