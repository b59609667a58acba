//! The oracle: `ptlens branches` against live `perf script --itrace=be` on every sample, as
//! ordered streams, event for event — trace starts and ends and decoder errors included.
//!
//! Only the text format is normalised: perf's flag names become flag bits, hex becomes
//! numbers, whitespace is folded. Order is compared globally and, as a diagnosis, per CPU
//! (perf interleaves per-CPU queues by time; a difference only in the order of ties would show
//! as a global mismatch with equal per-CPU streams).

#[path = "support/branch_stream.rs"]
mod branch_stream;
#[path = "perf_support.rs"]
mod perf_support;

use std::path::Path;
use std::process::Command;

use branch_stream::{first_difference, parse_perf, parse_ptlens, Event, PERF_SCRIPT_ARGS};
use perf_support::samples;
use ptlens::decode::BranchFlags;

fn perf_events(dir: &Path) -> Vec<Event> {
    let out = Command::new("perf")
        .arg("--buildid-dir")
        .arg(dir)
        .args(["script", "-i"])
        .arg(dir.join("perf.data"))
        .args(PERF_SCRIPT_ARGS)
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
