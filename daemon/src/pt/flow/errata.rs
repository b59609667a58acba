//! CPU errata that change what the trace says, and the CPUs that have them.
//!
//! Each flag turns on the decoder's workaround for one erratum, under the name libipt gives it
//! (`struct pt_errata`). Which CPUs have which erratum is taken from libipt's conformance corpus
//! (`tests/data/libipt`, `runs[].errata`), which records it per family/model.

/// Workarounds to apply, one flag per erratum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errata {
    /// BDM64: after a TSX abort, the last TNT bit or TIP may be wrong.
    pub bdm64: bool,
    /// BDM70: PSB+ may hold a FUP (and MODE.TSX) while tracing is disabled.
    pub bdm70: bool,
    /// SKD007: an OVF may overwrite the second byte of a CYC (`xx 02 F3`).
    pub skd007: bool,
    /// SKD010: the FUP after an OVF may be missing.
    pub skd010: bool,
    /// SKD022: a VM entry that clears TraceEn may send FUP + TIP.PGD.
    pub skd022: bool,
    /// SKL014: a TIP.PGD at a direct branch leaving the filtered range may have no IP.
    pub skl014: bool,
    /// SKL168: timing packets after a PSB may be wrong (ptdump timing only).
    pub skl168: bool,
    /// APL11: an OVF may be followed by a TIP.PGD.
    pub apl11: bool,
    /// APL12: an OVF may be followed by a FUP that belongs to no branch.
    pub apl12: bool,
    /// SKZ84: a TMA may carry reserved bits.
    pub skz84: bool,
}

impl Errata {
    /// The errata of Intel family/model, or `None` for a CPU that is not known (family 0).
    /// Models not listed have none.
    pub fn for_cpu(family: u16, model: u8) -> Option<Errata> {
        let none = Errata::default();
        let skylake = Errata {
            bdm70: true,
            skd007: true,
            skd010: true,
            skd022: true,
            skl014: true,
            skl168: true,
            ..none
        };
        let broadwell = Errata {
            bdm64: true,
            bdm70: true,
            ..none
        };
        let later = Errata {
            bdm70: true,
            skd022: true,
            ..none
        };
        let goldmont = Errata {
            apl11: true,
            ..none
        };
        Some(match (family, model) {
            (0, _) => return None,
            (6, 78 | 94 | 142 | 158 | 165 | 166) => skylake,
            (6, 61 | 71 | 79 | 86) => broadwell,
            (6, 85 | 106 | 108) => Errata {
                skl014: true,
                skz84: true,
                ..later
            },
            (6, 102 | 125 | 126 | 140 | 141 | 167 | 168) => Errata {
                skl014: true,
                ..later
            },
            (6, 143 | 173 | 174 | 207) | (19, 1) => Errata {
                skz84: true,
                ..later
            },
            (6, 151 | 154 | 170 | 172 | 181 | 183 | 186 | 189 | 191 | 197 | 198 | 204 | 213)
            | (18, 1 | 3) => Errata {
                apl11: true,
                ..later
            },
            (6, 92 | 95) => Errata {
                apl12: true,
                ..goldmont
            },
            (6, 122 | 134 | 150 | 156 | 175 | 182 | 221) => goldmont,
            _ => none,
        })
    }

    /// The flags set, by libipt's names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.apl11, "apl11"),
            (self.apl12, "apl12"),
            (self.bdm64, "bdm64"),
            (self.bdm70, "bdm70"),
            (self.skd007, "skd007"),
            (self.skd010, "skd010"),
            (self.skd022, "skd022"),
            (self.skl014, "skl014"),
            (self.skl168, "skl168"),
            (self.skz84, "skz84"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// What an address range of IA32_RTIT_ADDRn does (its ADDRn_CFG field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AddrRangeKind {
    #[default]
    Unused,
    /// Trace only inside the range (FilterEn).
    Filter,
    /// Stop tracing on entering the range (TraceStop).
    Stop,
}

/// One address range of the trace configuration (perf's `--filter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddrRange {
    pub kind: AddrRangeKind,
    /// First address in the range.
    pub start: u64,
    /// Last address in the range (inclusive, as in the MSRs).
    pub end: u64,
}

/// The address ranges tracing was configured with (IA32_RTIT_ADDR0..3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddrFilter {
    pub ranges: [AddrRange; 4],
}

impl AddrFilter {
    /// Whether any range filters (tracing is limited to the filter ranges).
    pub fn filters(&self) -> bool {
        self.ranges.iter().any(|r| r.kind == AddrRangeKind::Filter)
    }

    /// Whether `ip` may be traced: inside a filter range when there is one, and in no stop range.
    pub fn allows(&self, ip: u64) -> bool {
        let inside = |r: &AddrRange| r.start <= ip && ip <= r.end;
        let filtered = self
            .ranges
            .iter()
            .filter(|r| r.kind == AddrRangeKind::Filter)
            .any(inside);
        let stopped = self
            .ranges
            .iter()
            .filter(|r| r.kind == AddrRangeKind::Stop)
            .any(inside);
        (filtered || !self.filters()) && !stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_cpus() {
        assert_eq!(Errata::for_cpu(0, 0), None);
        assert_eq!(Errata::for_cpu(6, 1), Some(Errata::default()));
        let skylake = Errata::for_cpu(6, 94).unwrap();
        assert_eq!(
            skylake.names(),
            ["bdm70", "skd007", "skd010", "skd022", "skl014", "skl168"]
        );
        assert_eq!(Errata::for_cpu(6, 92).unwrap().names(), ["apl11", "apl12"]);
    }

    #[test]
    fn filter_ranges() {
        let mut filter = AddrFilter::default();
        assert!(filter.allows(5));
        filter.ranges[0] = AddrRange {
            kind: AddrRangeKind::Filter,
            start: 0x1000,
            end: 0x10ff,
        };
        assert!(filter.allows(0x10ff) && !filter.allows(0x1100));
        filter.ranges[1] = AddrRange {
            kind: AddrRangeKind::Stop,
            start: 0x1080,
            end: 0x1080,
        };
        assert!(!filter.allows(0x1080));
    }
}
