//! The branch events of a decoded recording, with perf's meaning (`perf script --itrace=be`).

use std::fmt;

/// perf's sample flags (`PERF_IP_FLAG_*`, tools/perf/util/event.h), as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BranchFlags(pub u32);

impl BranchFlags {
    pub const BRANCH: u32 = 1 << 0;
    pub const CALL: u32 = 1 << 1;
    pub const RETURN: u32 = 1 << 2;
    pub const CONDITIONAL: u32 = 1 << 3;
    pub const SYSCALLRET: u32 = 1 << 4;
    pub const ASYNC: u32 = 1 << 5;
    pub const INTERRUPT: u32 = 1 << 6;
    pub const TX_ABORT: u32 = 1 << 7;
    pub const TRACE_BEGIN: u32 = 1 << 8;
    pub const TRACE_END: u32 = 1 << 9;
    pub const IN_TX: u32 = 1 << 10;
    pub const VMENTRY: u32 = 1 << 11;
    pub const VMEXIT: u32 = 1 << 12;
    pub const INTR_DISABLE: u32 = 1 << 13;
    pub const INTR_TOGGLE: u32 = 1 << 14;

    /// perf's `sample_flags[]` names (builtin-script.c), plus `vmexit` with the async bit that
    /// perf's own table lacks (it prints that combination as `bcyh`).
    const NAMES: [(u32, &'static str); 16] = [
        (Self::BRANCH | Self::CALL, "call"),
        (Self::BRANCH | Self::RETURN, "return"),
        (Self::BRANCH | Self::CONDITIONAL, "jcc"),
        (Self::BRANCH, "jmp"),
        (Self::BRANCH | Self::CALL | Self::INTERRUPT, "int"),
        (Self::BRANCH | Self::RETURN | Self::INTERRUPT, "iret"),
        (Self::BRANCH | Self::CALL | Self::SYSCALLRET, "syscall"),
        (Self::BRANCH | Self::RETURN | Self::SYSCALLRET, "sysret"),
        (Self::BRANCH | Self::ASYNC, "async"),
        (
            Self::BRANCH | Self::CALL | Self::ASYNC | Self::INTERRUPT,
            "hw int",
        ),
        (Self::BRANCH | Self::TX_ABORT, "tx abrt"),
        (Self::BRANCH | Self::TRACE_BEGIN, "tr strt"),
        (Self::BRANCH | Self::TRACE_END, "tr end"),
        (Self::BRANCH | Self::CALL | Self::VMENTRY, "vmentry"),
        (Self::BRANCH | Self::CALL | Self::VMEXIT, "vmexit"),
        (
            Self::BRANCH | Self::CALL | Self::ASYNC | Self::VMEXIT,
            "vmexit",
        ),
    ];
    /// perf's `PERF_IP_FLAG_CHARS`, one per bit from bit 0.
    const CHARS: &'static [u8] = b"bcrosyiABExghDt";

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn contains(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    fn name_of(bits: u32) -> Option<&'static str> {
        Self::NAMES
            .iter()
            .find(|(flags, _)| *flags == bits)
            .map(|(_, name)| *name)
    }

    /// The flags as `perf script -F flags` prints them, without its padding: `jcc`,
    /// `tr strt`, `tr end  syscall` (two spaces, as perf), `call(x)`, or perf's letters when no
    /// name fits.
    pub fn perf_name(self) -> String {
        let extra = Self::IN_TX | Self::INTR_DISABLE | Self::INTR_TOGGLE;
        let mut xs = String::new();
        if self.0 & extra != 0 {
            xs.push('(');
            for (bit, c) in [
                (Self::IN_TX, 'x'),
                (Self::INTR_DISABLE, 'D'),
                (Self::INTR_TOGGLE, 't'),
            ] {
                if self.0 & bit != 0 {
                    xs.push(c);
                }
            }
            xs.push(')');
        }
        let base = self.0 & !extra;
        if let Some(name) = Self::name_of(base) {
            return format!("{name}{xs}");
        }
        for (edge, prefix) in [
            (Self::TRACE_BEGIN, "tr strt "),
            (Self::TRACE_END, "tr end  "),
        ] {
            if base & edge != 0 {
                if let Some(name) = Self::name_of(base & !edge) {
                    return format!("{prefix}{name}{xs}");
                }
            }
        }
        let mut letters = String::new();
        for i in 0..32 {
            if self.0 >> i & 1 == 1 {
                letters.push(Self::CHARS.get(i).map_or('?', |&c| char::from(c)));
            }
        }
        letters
    }

    /// Parses what [`Self::perf_name`] (or `perf script -F flags`, whitespace folded) prints.
    pub fn from_perf_name(text: &str) -> Option<BranchFlags> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut text = words.join(" ");
        let mut bits = 0;
        if let Some(open) = text.find('(') {
            let inner = text[open..].trim_start_matches('(').trim_end_matches(')');
            for c in inner.chars() {
                bits |= match c {
                    'x' => Self::IN_TX,
                    'D' => Self::INTR_DISABLE,
                    't' => Self::INTR_TOGGLE,
                    _ => return None,
                };
            }
            text.truncate(open);
            text = text.trim_end().to_owned();
        }
        let (edge, rest) = if let Some(rest) = text.strip_prefix("tr strt ") {
            (Self::TRACE_BEGIN, rest)
        } else if let Some(rest) = text.strip_prefix("tr end ") {
            (Self::TRACE_END, rest)
        } else {
            (0, text.as_str())
        };
        if let Some(&(flags, _)) = Self::NAMES.iter().find(|(_, name)| *name == rest) {
            return Some(BranchFlags(flags | edge | bits));
        }
        if edge != 0 || rest.is_empty() {
            return None;
        }
        // perf's letters.
        for c in rest.chars() {
            let i = Self::CHARS.iter().position(|&x| char::from(x) == c)?;
            bits |= 1 << i;
        }
        Some(BranchFlags(bits))
    }
}

impl fmt::Display for BranchFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.perf_name())
    }
}

/// Who a branch or error belongs to, as perf attributes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Perf time in ns (0 when the recording is timeless).
    pub time: u64,
    /// The CPU (-1 when per-thread recording).
    pub cpu: i32,
    pub pid: i32,
    pub tid: i32,
    /// 0 for the host, the VM's pid for a guest.
    pub machine_pid: i32,
    /// -1 unless a guest VCPU.
    pub vcpu: i32,
}

/// A decoder error, as `perf script --itrace=e` reports it (an `instruction trace error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// perf's `INTEL_PT_ERR_*` code (7: overflow, 6: trace doesn't match instruction, ...).
    pub code: u32,
    /// perf's message for the code (`intel_pt__strerror`).
    pub message: &'static str,
    /// The IP perf reports with it (its `state->from_ip`).
    pub ip: u64,
    /// Which AUX queue.
    pub queue: u32,
    /// Offset in the queue's trace stream (its buffers one after the other).
    pub offset: u64,
    /// What ptlens's flow decoder said, for diagnosis.
    pub detail: String,
}

/// What happened: a taken branch or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchKind {
    /// A branch from `from` to `to`; 0 at a trace start (`from`) or end (`to`).
    Branch {
        from: u64,
        to: u64,
        flags: BranchFlags,
    },
    Error(TraceError),
}

/// One event of `ptlens branches`, in trace order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchEvent {
    pub origin: Origin,
    pub kind: BranchKind,
}

/// perf's error codes and messages (intel-pt-decoder.h `INTEL_PT_ERR_*`, `intel_pt__strerror`).
pub mod error_code {
    pub const NOMEM: u32 = 1;
    pub const INTERN: u32 = 2;
    pub const BADPKT: u32 = 3;
    pub const NODATA: u32 = 4;
    pub const NOINSN: u32 = 5;
    pub const MISMAT: u32 = 6;
    pub const OVR: u32 = 7;
    pub const LOST: u32 = 8;
    pub const UNK: u32 = 9;
    pub const NELOOP: u32 = 10;
    pub const EPTW: u32 = 11;

    /// perf's message for `code`.
    pub fn message(code: u32) -> &'static str {
        match code {
            NOMEM => "Memory allocation failed",
            INTERN => "Internal error",
            BADPKT => "Bad packet",
            NODATA => "No more data",
            NOINSN => "Failed to get instruction",
            MISMAT => "Trace doesn't match instruction",
            OVR => "Overflow packet",
            LOST => "Lost trace data",
            NELOOP => "Never-ending loop (refer perf config intel-pt.max-loops)",
            EPTW => "Broken emulated ptwrite",
            _ => "Unknown error!",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_names_round_trip() {
        for name in [
            "jcc",
            "call",
            "return",
            "jmp",
            "tr strt",
            "tr end",
            "tr end  syscall",
            "tr end  async",
            "hw int",
            "syscall",
            "call(x)",
        ] {
            let flags = BranchFlags::from_perf_name(name).unwrap();
            assert_eq!(flags.perf_name(), name, "{name}");
        }
        assert_eq!(
            BranchFlags::from_perf_name("tr   end   syscall"),
            Some(BranchFlags(
                BranchFlags::BRANCH
                    | BranchFlags::CALL
                    | BranchFlags::SYSCALLRET
                    | BranchFlags::TRACE_END
            ))
        );
        assert_eq!(
            BranchFlags::from_perf_name("bcyh").map(|f| f.perf_name()),
            Some("vmexit".to_owned())
        );
    }
}
