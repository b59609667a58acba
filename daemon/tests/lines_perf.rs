//! The oracle for per-line counts: `ptlens lines --format json` against live `perf script`
//! aggregated per source line.
//!
//! What each perf count is of ours:
//! - `perf script --itrace=b -F ip,srcline` prints one sample per branch perf synthesises, at
//!   its source: taken branches, trace ends (`tr end`, at the last IP) and asynchronous
//!   branches, and trace starts (ip 0, no srcline: left out, they have no source). Their
//!   count per (file name, line) is our `taken` per line, summed over files of that name
//!   (perf prints only the file name).
//! - `perf script --itrace=i1i -F ip,srcline` prints one sample per instruction: its count
//!   per line is our `instructions`.
//!
//! Samples perf cannot give a line (`:0`, `??:0`, no srcline) are compared, as one total, with
//! our unresolved counts (no mapping, binary not found, no line).

#[path = "perf_support.rs"]
mod perf_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (file name, line) → count, and the count without a line.
#[derive(Debug, Default, PartialEq, Eq)]
struct PerLine {
    lines: BTreeMap<(String, u32), u64>,
    unresolved: u64,
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

fn sample(name: &str) -> PathBuf {
    perf_support::repo().join("samples").join(name)
}

/// perf's samples, one ip line each, followed by a srcline line when perf has one.
fn parse_perf(text: &str) -> PerLine {
    let mut out = PerLine::default();
    // The source of the sample before (None: none yet, or ip 0).
    let mut open: Option<u64> = None;
    let close = |open: &mut Option<u64>, out: &mut PerLine| {
        if open.take().is_some() {
            out.unresolved += 1;
        }
    };
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Ok(ip) = u64::from_str_radix(t, 16) {
            close(&mut open, &mut out);
            open = (ip != 0).then_some(ip);
            continue;
        }
        if open.take().is_none() {
            continue;
        }
        let parsed = t
            .rsplit_once(':')
            .and_then(|(f, l)| Some((f, l.parse::<u32>().ok()?)));
        match parsed {
            Some((file, line)) if line > 0 && !file.is_empty() && file != "??" => {
                *out.lines.entry((file_name(file), line)).or_default() += 1;
            }
            _ => out.unresolved += 1,
        }
    }
    close(&mut open, &mut out);
    out
}

fn perf_per_line(dir: &Path, itrace: &str) -> PerLine {
    let out = Command::new("perf")
        .arg("--buildid-dir")
        .arg(dir)
        .args(["script", "-i"])
        .arg(dir.join("perf.data"))
        .args([itrace, "-F", "ip,srcline"])
        .output()
        .expect("run perf script");
    assert!(out.status.success(), "perf script failed: {out:?}");
    parse_perf(&String::from_utf8_lossy(&out.stdout))
}

fn ptlens_json(dir: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ptlens"))
        .arg("lines")
        .arg(dir.join("perf.data"))
        .args(["--format", "json", "--srcline", "perf", "--buildid-dir"])
        .arg(dir)
        .output()
        .expect("run ptlens lines");
    assert!(
        out.status.success(),
        "ptlens lines failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ptlens lines --format json parses")
}

/// Our counts of `field` per (file name, line), and unresolved.
fn ptlens_per_line(json: &serde_json::Value, field: &str) -> PerLine {
    let mut out = PerLine::default();
    for l in json["lines"].as_array().expect("lines") {
        let n = l[field].as_u64().expect("count");
        if n == 0 {
            continue;
        }
        let file = file_name(l["file"].as_str().expect("file"));
        let line = u32::try_from(l["line"].as_u64().expect("line")).expect("line fits");
        *out.lines.entry((file, line)).or_default() += n;
    }
    for why in ["no_mapping", "binary_not_found", "no_line"] {
        out.unresolved += json["unresolved"][why][field].as_u64().expect("unresolved");
    }
    out
}

/// The differing lines of two aggregations, at most a few, or None.
fn differences(perf: &PerLine, ours: &PerLine) -> Option<String> {
    let mut keys: Vec<&(String, u32)> = perf.lines.keys().chain(ours.lines.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut diffs: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let (a, b) = (perf.lines.get(k), ours.lines.get(k));
            (a != b).then(|| format!("  {}:{} perf {a:?} ptlens {b:?}", k.0, k.1))
        })
        .collect();
    if perf.unresolved != ours.unresolved {
        diffs.push(format!(
            "  unresolved: perf {} ptlens {}",
            perf.unresolved, ours.unresolved
        ));
    }
    if diffs.is_empty() {
        return None;
    }
    let n = diffs.len();
    diffs.truncate(400);
    Some(format!("{n} differences:\n{}", diffs.join("\n")))
}

#[test]
fn perf_srcline_parsing() {
    let text = "                0\n     7ffff7fe4b73\n  :0\n     7ffff7fe5806\n  get-dynamic-info.h:55\n     401000\n     401002\n  prog.c:10\n";
    let got = parse_perf(text);
    assert_eq!(got.unresolved, 2);
    assert_eq!(got.lines.get(&("prog.c".to_owned(), 10)), Some(&1));
    assert_eq!(
        got.lines.get(&("get-dynamic-info.h".to_owned(), 55)),
        Some(&1)
    );
}

/// Branch samples per line equal our `taken` per line, on every sample.
#[test]
fn taken_per_line_equals_perf_branch_samples() {
    if !perf_support::have_perf() {
        return;
    }
    let mut failures = Vec::new();
    // Every sample. `threads` is included although its branch stream differs from perf's in
    // order and thread attribution (see `branches_perf.rs`): per-line counts ignore both.
    for dir in perf_support::samples() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let perf = perf_per_line(&dir, "--itrace=b");
        let ours = ptlens_per_line(&ptlens_json(&dir), "taken");
        let total: u64 = perf.lines.values().sum();
        eprintln!(
            "{name}: perf {total} branch samples on {} lines, {} without a line",
            perf.lines.len(),
            perf.unresolved
        );
        if let Some(d) = differences(&perf, &ours) {
            failures.push(format!("{name}: {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Instruction samples per line equal our `instructions` per line. perf takes ~20 s per
/// 250,000 instructions here, so only on the smallest sample.
#[test]
fn instructions_per_line_equal_perf_instruction_samples() {
    if !perf_support::have_perf() {
        return;
    }
    let dir = sample("single-thread");
    let perf = perf_per_line(&dir, "--itrace=i1i");
    let ours = ptlens_per_line(&ptlens_json(&dir), "instructions");
    if let Some(d) = differences(&perf, &ours) {
        panic!("single-thread: {d}");
    }
}
