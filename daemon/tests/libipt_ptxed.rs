//! Conformance: every ptxed run of the libipt corpus (`tests/data/libipt`) through
//! `pt::flow::ptxed::print` (libipt's block decoder semantics, `--no-inst --check`), compared line
//! by line with blanks folded as libipt's `diff -ub` does. Runs that need what ptlens does not
//! implement are listed below by case name with the reason; the test fails when a listed case
//! passes or disappears, and when an unlisted one fails.

use ptlens::pt::flow::ptxed::{print, PtxedOptions};
use ptlens::pt::flow::{AddrRangeKind, Errata, RawImage};

#[path = "support/libipt.rs"]
mod libipt;

use libipt::{case_names, same_output, Case};

/// Cases ptlens does not reproduce, with the reason.
const EXCEPTIONS: &[(&str, &str)] = &[
    (
        "bdm64-tnt-cond-xabort",
        "BDM64 workaround (a wrong TNT bit or TIP before a TSX abort) not implemented",
    ),
    (
        "bdm64-tnt-ind_call-xabort",
        "BDM64 workaround (a wrong TNT bit or TIP before a TSX abort) not implemented",
    ),
    ("exstop-trig", "TRIG events not implemented"),
    ("fup-tip-trig", "TRIG events not implemented"),
    ("mode-trig-trig", "TRIG events not implemented"),
    (
        "mtc-ovf_keep-cyc",
        "tick events (--event:tick, libipt time estimation) not implemented",
    ),
    (
        "mtc-ovf_reset-cyc",
        "tick events (--event:tick, libipt time estimation) not implemented",
    ),
    (
        "mwait-pwre-exstop_ip-fup-ovf",
        "PWRE/PWRX/MWAIT event order around OVF and TIP.PGE differs from libipt (open)",
    ),
    (
        "mwait-pwre-exstop_ip-ovf",
        "PWRE/PWRX/MWAIT event order around OVF and TIP.PGE differs from libipt (open)",
    ),
    (
        "mwait-pwre-ovf",
        "PWRE/PWRX/MWAIT event order around OVF and TIP.PGE differs from libipt (open)",
    ),
    (
        "ovf-pwre-pwrx-tip_pge",
        "PWRE/PWRX/MWAIT event order around OVF and TIP.PGE differs from libipt (open)",
    ),
    (
        "pevent-comm_exec-mmap-tsc-iret",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-fork",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-mmap-tip_cached",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-mmap_secondary-tsc",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-split",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-tip_pgd-comm_exec-mmap-tsc-tip_pge",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-tip_pgd-mmap-tsc-tip_pge",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-tip_pgd-switch-tsc-tip_pge",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-tip_pgd-switch_cpu_wide-tsc-tip_pge",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    (
        "pevent-warn",
        "perf_event sideband (--pevent/--sb) not implemented",
    ),
    ("psb-fup-ptw-trig", "TRIG events not implemented"),
    ("psb-fup-trig", "TRIG events not implemented"),
    ("ptet", "event tracing (CFE/EVD packets) not implemented"),
    (
        "ptet-evd_cr2-cfe_iret",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-evd_cr2-evd_vmxq",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-evd_vmxq-cfe_intr",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-evd_vmxr-cfe_rsm",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-evd_vmxr-evd-cr2",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-init-sipi",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-int-eretu",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-int-int-erets-eretu",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-int-iret",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-int-iret-cpl_0",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-int-iret-cpl_3",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-mode_exec-if",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-smi-rsm",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-uint-uiret",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-vmexit-vmentry",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-vmexit-vmentry-nonroot",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptet-vmexit-vmentry-root",
        "event tracing (CFE/EVD packets) not implemented",
    ),
    (
        "ptxed-block-stat",
        "block boundaries with --block:end-on-call/jump differ from libipt (open)",
    ),
    (
        "ptxed-end_on_call-fup-tip",
        "block boundaries with --block:end-on-call/jump differ from libipt (open)",
    ),
    (
        "ptxed-end_on_call-fup-tip_pgd",
        "block boundaries with --block:end-on-call/jump differ from libipt (open)",
    ),
    (
        "ptxed-end_on_call-ret_tip",
        "block boundaries with --block:end-on-call/jump differ from libipt (open)",
    ),
    (
        "ptxed-end_on_call-ret_tnt",
        "block boundaries with --block:end-on-call/jump differ from libipt (open)",
    ),
    (
        "ptxed-end_on_call-tip_pgd",
        "block boundaries with --block:end-on-call/jump differ from libipt (open)",
    ),
    (
        "ptxed-end_on_jump-fup-tip_pgd",
        "block boundaries with --block:end-on-call/jump differ from libipt (open)",
    ),
    (
        "ptxed-resync-nomap-mode_exec-fup",
        "resync after a missing image before MODE.Exec + FUP differs from libipt (open)",
    ),
    (
        "ptxed-tick",
        "tick events (--event:tick, libipt time estimation) not implemented",
    ),
    (
        "pwre-exstop_ip-pwrx",
        "PWRE/PWRX/MWAIT event order around OVF and TIP.PGE differs from libipt (open)",
    ),
    ("tip-trig", "TRIG events not implemented"),
    (
        "tip_pge-pwre-pwrx-tip_pgd",
        "PWRE/PWRX/MWAIT event order around OVF and TIP.PGE differs from libipt (open)",
    ),
    ("tip_pge-trig", "TRIG events not implemented"),
    ("tnt-trig", "TRIG events not implemented"),
    ("trig", "TRIG events not implemented"),
    ("trig-fup", "TRIG events not implemented"),
];

fn options_for(name: &str, args: &[String]) -> PtxedOptions {
    let mut options = PtxedOptions::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--event:ip" => options.event_ip = true,
            "--event:time" => options.event_time = true,
            "--resync-on-error" => options.resync_on_error = true,
            "--block:show-blocks" => options.show_blocks = true,
            "--block:end-on-call" => options.block.end_on_call = true,
            "--block:end-on-jump" => options.block.end_on_jump = true,
            "--quiet" => options.quiet = true,
            "--stat" => options.stat = true,
            "--stat:insn" => options.stat_insn = true,
            "--stat:blocks" => options.stat_blocks = true,
            // Options that change nothing ptlens prints, or whose cases are excepted.
            "--event:tick"
            | "--event:iflags"
            | "--insn-decoder"
            | "--block-decoder"
            | "--insn:keep-tcal-on-ovf"
            | "--block:keep-tcal-on-ovf"
            | "--check" => {}
            "--filter:addr0_cfg" | "--filter:addr0_a" | "--filter:addr0_b" => {
                let value = args.next().expect("a value");
                let range = &mut options.block.filter.ranges[0];
                if arg.ends_with("cfg") {
                    range.kind = match value.as_str() {
                        "1" => AddrRangeKind::Filter,
                        "2" => AddrRangeKind::Stop,
                        _ => AddrRangeKind::Unused,
                    };
                } else if arg.ends_with('a') {
                    range.start = libipt::hex(value);
                } else {
                    range.end = libipt::hex(value);
                }
            }
            "--cpu" => {
                let cpu = args.next().expect("F/M");
                let (family, model) = cpu.split_once('/').expect("F/M");
                match Errata::for_cpu(family.parse().unwrap(), model.parse().unwrap()) {
                    Some(errata) => options.block.errata = errata,
                    None => options.unknown_cpu = true,
                }
            }
            "--mtc-freq"
            | "--nom-freq"
            | "--cpuid-0x15.eax"
            | "--cpuid-0x15.ebx"
            | "--raw"
            | "--pevent:kernel-start" => {
                args.next();
            }
            other if other.starts_with("--sb") || other.starts_with("--pevent") => {}
            other => panic!("{name}: ptxed option {other} is neither supported nor excepted"),
        }
    }
    options
}

#[test]
fn libipt_ptxed_corpus() {
    let (mut passed, mut skipped) = (0usize, 0usize);
    let mut failed = Vec::new();
    let mut unexpected_passes = Vec::new();
    let mut seen_exceptions = Vec::new();
    for name in &case_names() {
        let case = Case::load(name);
        let runs = case.json["runs"].items();
        if runs.iter().all(|run| case.expected(run, "ptxed").is_none()) {
            continue;
        }
        let options = options_for(name, &case.args("ptxed"));
        let mut image = RawImage::new();
        for (address, bytes) in case.images() {
            image.add(address, bytes);
        }
        let trace = case.trace();
        let exception = EXCEPTIONS.iter().find(|(case, _)| case == name);
        if exception.is_some() {
            seen_exceptions.push(name.clone());
        }
        let mut all_passed = true;
        let mut report = String::new();
        for run in runs {
            let mut options = options;
            // `--cpu F/M` selects the workarounds; the table must agree with the corpus.
            if let Some((family, model)) = run["cpu"].text().split_once('/') {
                match Errata::for_cpu(family.parse().unwrap(), model.parse().unwrap()) {
                    Some(errata) => {
                        let mut listed: Vec<&str> =
                            run["errata"].items().iter().map(|e| e.text()).collect();
                        listed.sort_unstable();
                        assert_eq!(
                            errata.names(),
                            listed,
                            "{name}: errata of cpu {family}/{model}"
                        );
                        options.block.errata = errata;
                    }
                    None => options.unknown_cpu = true,
                }
            }
            let mut output = Vec::new();
            print(&mut output, &trace, &image, &options).expect("write to a Vec");
            let output = String::from_utf8(output).expect("ASCII");
            let expected = case.expected(run, "ptxed").unwrap_or_default();
            // PTXED_CASE=name shows one case's output, excepted or not.
            if std::env::var("PTXED_CASE").is_ok_and(|case| case == *name) {
                println!("{name}:\n--- expected\n{expected}--- ptlens\n{output}");
            }
            if !same_output(&output, &expected) {
                all_passed = false;
                report = format!("{name}:\n--- expected\n{expected}--- ptlens\n{output}");
            }
        }
        match (exception, all_passed) {
            (None, true) => passed += runs.len(),
            (None, false) => failed.push(report),
            (Some(_), false) => skipped += runs.len(),
            (Some(_), true) => unexpected_passes.push(name.clone()),
        }
    }

    println!(
        "libipt ptxed corpus: {passed} runs passed, {} cases failed, {skipped} runs excepted ({} cases)",
        failed.len(),
        seen_exceptions.len()
    );
    for (case, reason) in EXCEPTIONS {
        println!("  excepted {case}: {reason}");
    }
    assert!(
        failed.is_empty(),
        "{} failures:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(
        unexpected_passes.is_empty(),
        "excepted cases now pass; remove them from EXCEPTIONS: {unexpected_passes:?}"
    );
    assert_eq!(
        seen_exceptions.len(),
        EXCEPTIONS.len(),
        "an excepted case is missing from the corpus"
    );
}
