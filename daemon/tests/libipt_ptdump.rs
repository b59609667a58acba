//! Conformance: every ptdump run of the libipt corpus (`tests/data/libipt`) through
//! `pt::dump::write_ptdump`, compared line by line with whitespace folded (as libipt's own
//! `diff -ub` does). Runs that need what ptlens does not implement are skipped; the exceptions
//! are listed below with their reasons, and the test checks that exactly these were skipped.

use ptlens::pt::dump::{write_ptdump, PtdumpOptions};

#[path = "support/libipt.rs"]
mod libipt;

use libipt::{case_names, same_output, Case};

/// Cases whose ptdump options ask for time tracking (`--time`, `--tcal`), which ptlens's ptdump
/// printer does not implement (its `tsc`/`fcr` columns need libipt's time estimation).
const NEEDS_TIMING: &[&str] = &[
    "cbr-cyc",
    "cbr-mtc-cyc-mtc",
    "cbr-tsc-cyc-tma",
    "cbr-tsc-tma-mtc-cyc",
    "mtc",
    "mtc-cyc_calibrate",
    "mtc-ovf_keep-cyc",
    "mtc-ovf_reset-cyc",
    "ptxed-tick",
    "skl168-cyc",
    "skl168-mtc",
    "tsc-cbr-cyc-tsc",
    "tsc-cyc_calibrate",
    "tsc-mtc-tma-mtc",
    "tsc-tma-cbr-cyc",
    "tsc-tma-cbr-cyc-mtc",
    "tsc-tma-cbr-mtc-cyc",
    "tsc-tma-cbr-mtc-cyc-mtc",
    "tsc-tma-cbr-mtc-cyc-no_cyc",
    "tsc-tma-cbr-mtc-cyc-tsc",
    "tsc-tma-cbr-mtc-cyc_calibrate",
    "tsc-tma-cbr-mtc-mtc-cyc",
    "tsc-tma-cyc",
    "tsc-tma-mtc-cyc_calibrate",
    "tsc-tma-mtc-mtc-cyc_calibrate",
    "tsc-tma-mtc-tsc",
    "tsc-tma-mtc_absolute",
    "tsc-tma-mtc_infreq",
    "tsc-tma-mtc_infreq_wrap",
    "tsc-tma-mtc_relative",
    "tsc-tma-mtc_wrap",
    "tsc-tma_zero_fc-cbr-cyc",
    "tsc_tma_mtc_gap",
];

/// Cases with perf_event sideband (`--sb:*`, `--pevent:*`): their expected output interleaves
/// sideband records, which the packet printer does not read.
const NEEDS_SIDEBAND: &[&str] = &[
    "pevent-comm_exec-mmap-tsc-iret",
    "pevent-dump",
    "pevent-dump_verbose",
    "pevent-fork",
    "pevent-mmap-tip_cached",
    "pevent-mmap_secondary-tsc",
    "pevent-split",
    "pevent-tip_pgd-comm_exec-mmap-tsc-tip_pge",
    "pevent-tip_pgd-mmap-tsc-tip_pge",
    "pevent-tip_pgd-switch-tsc-tip_pge",
    "pevent-tip_pgd-switch_cpu_wide-tsc-tip_pge",
    "pevent-warn",
];

/// Cases that need libipt's CPU model tables (errata workarounds are taken from `runs[].errata`).
const NEEDS_CPU_TABLES: &[(&str, &str)] = &[(
    "bad_cpu",
    "expects libipt's `failed to determine errata: unknown cpu` for --cpu 0/0",
)];

/// Options for one run, or the reason the run is skipped.
fn options_for(name: &str, args: &[String]) -> Result<PtdumpOptions, &'static str> {
    if NEEDS_TIMING.contains(&name) {
        return Err("timing");
    }
    if NEEDS_SIDEBAND.contains(&name) {
        return Err("sideband");
    }
    if NEEDS_CPU_TABLES.iter().any(|(case, _)| *case == name) {
        return Err("cpu tables");
    }
    let mut options = PtdumpOptions::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-offset" => options.show_offset = false,
            "--raw" => options.raw = true,
            "--lastip" => options.last_ip = true,
            "--exec-mode" => options.exec_mode = true,
            "--no-sync" => options.no_sync = true,
            // The cpu selects errata workarounds; each run lists them in `runs[].errata`.
            "--cpu" => {
                args.next();
            }
            other => panic!("{name}: ptdump option {other} is neither supported nor excepted"),
        }
    }
    Ok(options)
}

#[test]
fn libipt_ptdump_corpus() {
    let (mut passed, mut failed) = (0usize, Vec::new());
    let mut skipped: Vec<(String, usize, &str)> = Vec::new();
    for name in &case_names() {
        let case = Case::load(name);
        let args = case.args("ptdump");
        let runs = case.json["runs"].items();
        let options = match options_for(name, &args) {
            Ok(options) => options,
            Err(reason) => {
                skipped.push((name.clone(), runs.len(), reason));
                continue;
            }
        };
        let trace = case.trace();
        for run in runs {
            // ptdump enables the workarounds for the run's cpu; case.json lists them.
            let errata: Vec<&str> = run["errata"].items().iter().map(|e| e.text()).collect();
            let options = PtdumpOptions {
                skd007: errata.contains(&"skd007"),
                skz84: errata.contains(&"skz84"),
                ..options
            };
            let mut output = Vec::new();
            write_ptdump(&mut output, &trace, &options).expect("write to a Vec");
            let output = String::from_utf8(output).expect("ASCII");
            let expected = case.expected(run, "ptdump").unwrap_or_default();
            if same_output(&output, &expected) {
                passed += 1;
            } else {
                failed.push(format!(
                    "{name} (cpu {}):\n--- expected\n{expected}--- ptlens\n{output}",
                    run["cpu"].text()
                ));
            }
        }
    }

    let skipped_runs: usize = skipped.iter().map(|(_, runs, _)| runs).sum();
    println!(
        "libipt ptdump corpus: {passed} runs passed, {} failed, {skipped_runs} skipped ({} cases)",
        failed.len(),
        skipped.len()
    );
    for reason in ["timing", "sideband", "cpu tables"] {
        let cases: Vec<&str> = skipped
            .iter()
            .filter(|(_, _, r)| *r == reason)
            .map(|(name, _, _)| name.as_str())
            .collect();
        println!("  skipped for {reason}: {}", cases.join(", "));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Every exception names a real case, so the lists cannot silently go stale.
    let excepted = NEEDS_TIMING.len() + NEEDS_SIDEBAND.len() + NEEDS_CPU_TABLES.len();
    assert_eq!(
        skipped.len(),
        excepted,
        "an excepted case is missing from the corpus"
    );
    assert!(passed >= 435, "only {passed} runs passed");
}
