//! Shared by the branch-stream oracles (`branches_perf.rs`, `corrupt_traces.rs`): the events
//! of `ptlens branches --format jsonl` and of `perf script --itrace=be -F
//! tid,cpu,time,flags,ip,addr --ns`, parsed into one type, and the first difference of two
//! streams. Each test uses a part of it.
#![allow(dead_code)]

use ptlens::decode::BranchFlags;

/// A branch or decoder error, with every field both tools print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Branch {
        tid: i32,
        cpu: i32,
        time: u64,
        flags: u32,
        from: u64,
        to: u64,
    },
    Error {
        tid: i32,
        cpu: i32,
        time: u64,
        ip: u64,
        code: u32,
    },
}

impl Event {
    pub fn tid(&self) -> i32 {
        match self {
            Event::Branch { tid, .. } | Event::Error { tid, .. } => *tid,
        }
    }

    pub fn cpu(&self) -> i32 {
        match self {
            Event::Branch { cpu, .. } | Event::Error { cpu, .. } => *cpu,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Event::Error { .. })
    }

    /// Whether this is a branch with exactly perf's flags `name` (e.g. "tr strt").
    pub fn is_branch(&self, name: &str) -> bool {
        let want = BranchFlags::from_perf_name(name)
            .unwrap_or_else(|| panic!("unknown perf flags {name:?}"))
            .bits();
        matches!(self, Event::Branch { flags, .. } if *flags == want)
    }

    /// The event without its time.
    pub fn timeless(&self) -> Event {
        self.project(true)
    }

    /// The event without its time and CPU: thread, flags, from and to, or thread, IP and code.
    pub fn threadwise(&self) -> Event {
        self.project(false)
    }

    fn project(&self, keep_cpu: bool) -> Event {
        let keep = |cpu: i32| if keep_cpu { cpu } else { 0 };
        match self.clone() {
            Event::Branch {
                tid,
                cpu,
                flags,
                from,
                to,
                ..
            } => Event::Branch {
                tid,
                cpu: keep(cpu),
                time: 0,
                flags,
                from,
                to,
            },
            Event::Error {
                tid, cpu, ip, code, ..
            } => Event::Error {
                tid,
                cpu: keep(cpu),
                time: 0,
                ip,
                code,
            },
        }
    }
}

/// perf's `SECONDS.NANOSECONDS[:]`, in nanoseconds.
pub fn parse_time(text: &str) -> u64 {
    let (s, ns) = text.trim_end_matches(':').split_once('.').expect("time");
    s.parse::<u64>().unwrap() * 1_000_000_000 + ns.parse::<u64>().unwrap()
}

pub fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex")
}

/// The value of `"key":` in a flat JSON object (numbers and plain strings only).
pub fn json_field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let at = line.find(&pat).unwrap_or_else(|| panic!("{key} in {line}")) + pat.len();
    let rest = &line[at..];
    if let Some(rest) = rest.strip_prefix('"') {
        &rest[..rest.find('"').expect("closing quote")]
    } else {
        let end = rest.find([',', '}']).expect("end of value");
        &rest[..end]
    }
}

/// The arguments after `perf script -i FILE` that print what `parse_perf` reads.
pub const PERF_SCRIPT_ARGS: &[&str] = &["--itrace=be", "-F", "tid,cpu,time,flags,ip,addr", "--ns"];

/// `perf script --itrace=be -F tid,cpu,time,flags,ip,addr --ns` lines.
pub fn parse_perf(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if line.contains("instruction trace error") {
            // " instruction trace error type 1 time T cpu C pid P tid T ip 0x.. code N: msg"
            let field = |name: &str| {
                let at = words.iter().position(|w| *w == name).expect(name);
                words[at + 1]
            };
            events.push(Event::Error {
                tid: field("tid").parse().unwrap(),
                cpu: field("cpu").parse().unwrap(),
                time: parse_time(field("time")),
                ip: hex(field("ip")),
                code: field("code").trim_end_matches(':').parse().unwrap(),
            });
            continue;
        }
        // "TID [CPU] TIME: FLAGS... FROM => TO"
        let n = words.len();
        assert!(
            n >= 6 && words[n - 2] == "=>",
            "unexpected perf line: {line}"
        );
        let cpu = words[1].trim_start_matches('[').trim_end_matches(']');
        let flags = words[3..n - 3].join(" ");
        events.push(Event::Branch {
            tid: words[0].parse().unwrap(),
            cpu: cpu.parse().unwrap(),
            time: parse_time(words[2]),
            flags: BranchFlags::from_perf_name(&flags)
                .unwrap_or_else(|| panic!("unknown perf flags {flags:?}"))
                .bits(),
            from: hex(words[n - 3]),
            to: hex(words[n - 1]),
        });
    }
    events
}

/// `ptlens branches --format jsonl` lines.
pub fn parse_ptlens(text: &str) -> Vec<Event> {
    text.lines()
        .map(|line| {
            let num = |k: &str| json_field(line, k).parse::<i64>().unwrap();
            match json_field(line, "type") {
                "branch" => Event::Branch {
                    tid: num("tid") as i32,
                    cpu: num("cpu") as i32,
                    time: num("time") as u64,
                    flags: num("flag_bits") as u32,
                    from: hex(json_field(line, "from")),
                    to: hex(json_field(line, "to")),
                },
                "error" => Event::Error {
                    tid: num("tid") as i32,
                    cpu: num("cpu") as i32,
                    time: num("time") as u64,
                    ip: hex(json_field(line, "ip")),
                    code: num("code") as u32,
                },
                other => panic!("unknown type {other}"),
            }
        })
        .collect()
}

/// Where two streams first differ, with a little context, or None.
pub fn first_difference(perf: &[Event], ours: &[Event]) -> Option<String> {
    let at = perf
        .iter()
        .zip(ours)
        .position(|(a, b)| a != b)
        .or_else(|| (perf.len() != ours.len()).then(|| perf.len().min(ours.len())))?;
    let lo = at.saturating_sub(2);
    Some(format!(
        "first difference at event {at} (perf {} events, ptlens {}):\n perf:   {:?}\n ptlens: {:?}",
        perf.len(),
        ours.len(),
        &perf[lo..(at + 3).min(perf.len())],
        &ours[lo..(at + 3).min(ours.len())]
    ))
}
