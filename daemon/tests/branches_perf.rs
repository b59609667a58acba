//! The oracle: `ptlens branches` against live `perf script --itrace=be` on every sample, as
//! ordered streams, event for event — trace starts and ends and decoder errors included.
//!
//! Only the text format is normalised: perf's flag names become flag bits, hex becomes
//! numbers, whitespace is folded. Order is compared globally and, as a diagnosis, per CPU
//! (perf interleaves per-CPU queues by time; a difference only in the order of ties would show
//! as a global mismatch with equal per-CPU streams).

#[path = "perf_support.rs"]
mod perf_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use ptlens::decode::BranchFlags;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
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
    fn cpu(&self) -> i32 {
        match self {
            Event::Branch { cpu, .. } | Event::Error { cpu, .. } => *cpu,
        }
    }

    /// The event without its time.
    fn timeless(&self) -> Event {
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
                cpu,
                time: 0,
                flags,
                from,
                to,
            },
            Event::Error {
                tid, cpu, ip, code, ..
            } => Event::Error {
                tid,
                cpu,
                time: 0,
                ip,
                code,
            },
        }
    }
}

fn parse_time(text: &str) -> u64 {
    let (s, ns) = text.trim_end_matches(':').split_once('.').expect("time");
    s.parse::<u64>().unwrap() * 1_000_000_000 + ns.parse::<u64>().unwrap()
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex")
}

/// `perf script --itrace=be -F tid,cpu,time,flags,ip,addr --ns` lines.
fn parse_perf(text: &str) -> Vec<Event> {
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

/// The value of `"key":` in a flat JSON object (numbers and plain strings only).
fn json_field<'a>(line: &'a str, key: &str) -> &'a str {
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

fn parse_ptlens(text: &str) -> Vec<Event> {
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

fn samples() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(perf_support::repo().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("perf.data").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn perf_events(dir: &Path) -> Vec<Event> {
    let out = Command::new("perf")
        .arg("--buildid-dir")
        .arg(dir)
        .args(["script", "-i"])
        .arg(dir.join("perf.data"))
        .args(["--itrace=be", "-F", "tid,cpu,time,flags,ip,addr", "--ns"])
        .output()
        .expect("run perf script");
    assert!(out.status.success(), "perf script failed: {out:?}");
    parse_perf(&String::from_utf8_lossy(&out.stdout))
}

fn ptlens_events(dir: &Path) -> Vec<Event> {
    let out = Command::new(env!("CARGO_BIN_EXE_ptlens"))
        .arg("branches")
        .arg(dir.join("perf.data"))
        .args(["--format", "jsonl"])
        .output()
        .expect("run ptlens branches");
    assert!(
        out.status.success(),
        "ptlens branches failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ptlens(&String::from_utf8_lossy(&out.stdout))
}

/// The first difference of two streams, with a little context, or None.
fn first_difference(perf: &[Event], ours: &[Event]) -> Option<String> {
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

fn per_cpu(events: &[Event]) -> std::collections::BTreeMap<i32, Vec<Event>> {
    let mut map = std::collections::BTreeMap::<i32, Vec<Event>>::new();
    for e in events {
        map.entry(e.cpu()).or_default().push(e.clone());
    }
    map
}

/// Samples whose streams are known to differ from perf's, and why. The test fails when one
/// of them starts to agree, so the list stays current.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

/// Compares one sample: None when equal. With `with_time` false, times are left out.
fn compare(dir: &Path, with_time: bool) -> Option<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let strip = |v: Vec<Event>| -> Vec<Event> {
        if with_time {
            v
        } else {
            v.iter().map(Event::timeless).collect()
        }
    };
    let perf = strip(perf_events(dir));
    let ours = strip(ptlens_events(dir));
    let errors = perf
        .iter()
        .filter(|e| matches!(e, Event::Error { .. }))
        .count();
    eprintln!(
        "{name}: perf {} events ({errors} errors), ptlens {}",
        perf.len(),
        ours.len()
    );
    let diff = first_difference(&perf, &ours)?;
    // A difference only in how equal-time events of different CPUs interleave would leave
    // the per-CPU streams equal.
    let cpus_equal = per_cpu(&perf) == per_cpu(&ours);
    Some(format!("{name}: {diff}\n equal per CPU: {cpus_equal}"))
}

/// Every branch and error, in order, with thread, CPU, flags, from and to; times are
/// compared by `branch_times_equal_perf`.
#[test]
fn branches_equal_perf_script_on_every_sample() {
    if !perf_support::have_perf() {
        return;
    }
    let mut failures = Vec::new();
    for dir in samples() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let known = KNOWN_DIFFERENCES.iter().find(|(n, _)| *n == name);
        match (compare(&dir, false), known) {
            (None, None) => {}
            (Some(diff), None) => failures.push(diff),
            (Some(diff), Some((_, why))) => eprintln!("known difference: {why}\n{diff}"),
            (None, Some(_)) => failures.push(format!(
                "{name} now agrees with perf: remove it from KNOWN_DIFFERENCES"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same streams with perf's times: perf's MTC/TMA clock (`pt::flow::time::PerfClock`),
/// each branch at the time of the packet that decided it, and perf's estimates for trace
/// starts and errors.
#[test]
fn branch_times_equal_perf() {
    if !perf_support::have_perf() {
        return;
    }
    let failures: Vec<String> = samples()
        .iter()
        .filter_map(|dir| compare(dir, true))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn perf_flag_spellings_parse() {
    let events = parse_perf(
        " 1085 [-01]     1.789569706:   tr strt                               0 =>     7ffff7fe4b70\n\
         \x20instruction trace error type 1 time 1.789620665 cpu -1 pid 1085 tid 1085 ip 0x555555555198 code 7: Overflow packet\n\
         \x20 1085 [-01]     1.789620665:   tr end  syscall            7ffff7fe4b73 =>                0\n",
    );
    assert_eq!(events.len(), 3);
    assert!(matches!(
        events[2],
        Event::Branch { flags, to: 0, .. } if flags == BranchFlags::from_perf_name("tr end syscall").unwrap().bits()
    ));
}
