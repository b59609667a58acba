//! `ptlens annotate` on the single-thread sample: sources with counts in the margin, hottest
//! first, and a filter by source name.

use std::path::PathBuf;
use std::process::Command;

fn annotate(args: &[&str]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/single-thread");
    let out = Command::new(env!("CARGO_BIN_EXE_ptlens"))
        .arg("annotate")
        .arg(dir.join("perf.data"))
        .args(args)
        .output()
        .expect("run ptlens annotate");
    assert!(
        out.status.success(),
        "ptlens annotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn annotates_the_program_source() {
    let text = annotate(&["prog.c"]);
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("== ")).collect();
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert!(headers[0].contains("prog.c"), "{headers:?}");
    // fib's line: entered 1393 times, its jcc taken 1393 and not taken 233 (perf agrees on
    // the taken count, see lines_perf.rs).
    let fib = text
        .lines()
        .find(|l| l.contains("static int fib(int n)"))
        .expect("fib's line is listed");
    let margin: Vec<&str> = fib.split_whitespace().take(3).collect();
    assert_eq!(margin, ["1393", "1393/233", "10:"], "{fib}");
}

#[test]
fn hottest_file_first() {
    let text = annotate(&[]);
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("== "))
        .filter_map(|l| {
            let n = l.rsplit_once(" (")?.1.strip_suffix(" instructions)")?;
            n.parse().ok()
        })
        .collect();
    assert!(counts.len() > 5, "{counts:?}");
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
}
