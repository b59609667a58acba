//! Address filters (`record --filter 'filter 0xOFFSET/0xSIZE@BINARY'`): perf must decode a filtered
//! recording into exactly the instructions inside the region, with no errors, and only because it
//! knows the filter: without the filter string in AUXTRACE_INFO it follows the direct calls out of the
//! region and reports errors.
//!
//! Needs `perf`, `gcc`, `nm` and `readelf`; prints why it skips when one is missing, unless
//! `PTLENS_REQUIRE_PERF=1`.

use std::path::Path;
use std::process::Command;

use ptlens_synth::{check, recording};
use support::{scratch, tools_or_skip};

mod support;

/// `hot` is called 6 times from a loop in `main`, and calls `helper`, outside the region, from a loop
/// of its own; `helper` loops too (conditional branches a decoder ignoring the filter trips over).
const PROG: &str = r#"
#include <stdio.h>

__attribute__((noinline)) static long helper(long x) {
    long s = 0;
    for (long i = 0; i < (x & 7) + 2; i++)
        s += i * x;
    return s;
}

__attribute__((noinline)) long hot(long n) {
    long acc = 0;
    for (long i = 0; i < n; i++) {
        if (i & 1)
            acc += helper(i);
        else
            acc ^= i;
    }
    return acc;
}

int main(void) {
    long total = 0;
    for (int k = 0; k < 6; k++)
        total += hot(k + 3);
    printf("%ld\n", total);
    return 0;
}
"#;

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The file offset and size of `symbol` in `binary` (`nm -S`, then the LOAD segment holding it).
fn symbol_offset(binary: &Path, symbol: &str) -> (u64, u64) {
    let nm = output(Command::new("nm").arg("-S").arg(binary));
    let (addr, size) = nm
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == symbol).then(|| {
                (
                    u64::from_str_radix(f[0], 16).unwrap(),
                    u64::from_str_radix(f[1], 16).unwrap(),
                )
            })
        })
        .unwrap_or_else(|| panic!("{symbol} not in nm -S output:\n{nm}"));
    let segs = output(Command::new("readelf").arg("-lW").arg(binary));
    let offset = segs
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .find_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(5)
                .map(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).unwrap())
                .collect();
            let (off, vaddr, filesz) = (f[0], f[1], f[3]);
            (addr >= vaddr && addr < vaddr + filesz).then(|| addr - vaddr + off)
        })
        .unwrap_or_else(|| panic!("no LOAD segment holds {addr:#x}:\n{segs}"));
    (offset, size)
}

#[test]
fn filtered_recording_decodes_to_the_region_only_and_needs_the_filter() {
    if !tools_or_skip(
        "filtered_recording_decodes_to_the_region_only_and_needs_the_filter",
        &["perf", "gcc", "nm", "readelf"],
    ) {
        return;
    }
    let work = scratch("filter-work");
    let src = work.join("prog.c");
    std::fs::write(&src, PROG).unwrap();
    let bin = work.join("prog");
    output(
        Command::new("gcc")
            .args(["-g", "-O1", "-o"])
            .arg(&bin)
            .arg(&src),
    );
    let (offset, size) = symbol_offset(&bin, "hot");
    let filter =
        recording::AddrFilter::parse(&format!("filter {offset:#x}/{size:#x} @ {}", bin.display()))
            .unwrap();
    let text = filter.perf_string();
    assert!(
        text.starts_with(&format!("filter {offset:#x}/{size:#x}@/")),
        "{text}"
    );

    let dir = work.join("rec");
    let opts = recording::Options {
        filter: Some(filter),
        ..recording::Options::default()
    };
    let rec = recording::record(bin.to_str().unwrap(), &[], &dir, &opts).unwrap();
    assert_eq!(rec.exit_code, 0);
    // 6 calls in, 6 returns out; each call of helper leaves and comes back.
    let s = rec.stats;
    assert!(s.pge >= 12 && s.pge == s.pgd, "{s:?}");

    // The ground truth holds the region's instructions only, far fewer than the program ran.
    let truth = recording::read_ground_truth(&dir.join(recording::GROUND_TRUTH)).unwrap();
    assert!(truth.len() > 100, "{}", truth.len());
    assert!((truth.len() as u64) < rec.instructions / 10);
    let (lo, hi) = truth
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &(_, ip)| (lo.min(ip), hi.max(ip)));
    assert!(hi - lo < size, "{lo:#x}..={hi:#x} is wider than the region");

    // perf read the filter string as written and decodes exactly the ground truth, no errors.
    let dump = output(
        Command::new("perf")
            .arg("--buildid-dir")
            .arg(&dir)
            .args(["script", "-D", "-i"])
            .arg(dir.join(recording::PERF_DATA)),
    );
    let shown = dump
        .lines()
        .filter(|l| !l.contains("Filter string len"))
        .find_map(|l| l.trim().strip_prefix("Filter string").map(str::trim))
        .unwrap_or_else(|| panic!("perf -D shows no filter string"));
    assert_eq!(shown, text);
    let verdict = check::check(&dir).unwrap();
    assert!(verdict.is_exact(), "{verdict}");
    assert_eq!(verdict.decoded, truth.len(), "{verdict}");

    // The same recording with the filter string blanked (same sizes): perf follows the calls to
    // helper out of the region and fails.
    let blank = work.join("rec-nofilter");
    output(Command::new("cp").arg("-r").arg(&dir).arg(&blank));
    let data = blank.join(recording::PERF_DATA);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes
        .windows(text.len())
        .position(|w| w == text.as_bytes())
        .expect("the filter string is in perf.data");
    bytes[at..at + text.len()].fill(0);
    std::fs::write(&data, bytes).unwrap();
    let verdict = check::check(&blank).unwrap();
    assert!(
        !verdict.errors.is_empty(),
        "no errors without the filter: {verdict}"
    );
    assert!(
        verdict
            .errors
            .iter()
            .any(|e| e.contains("Trace doesn't match")),
        "{verdict}"
    );

    let _ = std::fs::remove_dir_all(&work);
}
