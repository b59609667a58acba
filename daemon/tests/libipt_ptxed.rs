//! Conformance: every ptxed run of the libipt corpus (`tests/data/libipt`) through
//! `pt::flow::ptxed::print` (libipt's block decoder semantics, `--no-inst --check`), compared line
//! by line with blanks folded as libipt's `diff -ub` does. Runs that need what ptlens does not
//! implement are listed below by case name with the reason; the test fails when a listed case
//! passes or disappears, and when an unlisted one fails.

use std::path::{Path, PathBuf};

use ptlens::pt::flow::ptxed::{print, PtxedOptions};
use ptlens::pt::flow::RawImage;

/// Cases ptlens does not reproduce, with the reason.
const EXCEPTIONS: &[(&str, &str)] = &[
    (
        "apl11",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "apl12-psb",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "apl12-tip_pge",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "bad_cpu",
        "needs libipt's cpu tables (`--cpu 0/0` is an unknown cpu)",
    ),
    (
        "bdm64-tnt-cond-xabort",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "bdm64-tnt-ind_call-xabort",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "bdm70-psb_fup-tip_pge",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "bdm70-tip_pgd-psb_fup-tip_pge",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
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
    (
        "skd007",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skd010-mode_tsx-fup",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skd010-psb",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skd010-tip",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skd010-tip_pgd",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skd022",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skl014-call",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skl014-jmp",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
    ),
    (
        "skl014-jmp-jmp",
        "erratum workaround for the run's cpu (and skl014's address filter) not implemented",
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

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/libipt")
}

/// Collapses each run of blanks to one space and drops trailing blanks, as `diff -b` compares.
fn fold(line: &str) -> String {
    line.split([' ', '\t'])
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex address")
}

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
            "--cpu"
            | "--mtc-freq"
            | "--nom-freq"
            | "--cpuid-0x15.eax"
            | "--cpuid-0x15.ebx"
            | "--filter:addr0_cfg"
            | "--filter:addr0_a"
            | "--filter:addr0_b"
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
    let cases = corpus().join("cases");
    let mut names: Vec<String> = std::fs::read_dir(&cases)
        .expect("tests/data/libipt/cases")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 242, "the corpus has 242 cases");

    let (mut passed, mut skipped) = (0usize, 0usize);
    let mut failed = Vec::new();
    let mut unexpected_passes = Vec::new();
    let mut seen_exceptions = Vec::new();
    for name in &names {
        let dir = cases.join(name);
        let case = json::parse(&read(&dir.join("case.json"))).expect("case.json is JSON");
        let runs = case["runs"].items();
        if runs
            .iter()
            .all(|run| run["expect"]["ptxed"].text().is_empty())
        {
            continue;
        }
        let args: Vec<String> = case["options"]["ptxed"]["args"]
            .items()
            .iter()
            .map(|arg| arg.text().to_owned())
            .collect();
        let options = options_for(name, &args);
        let mut image = RawImage::new();
        for section in case["images"].items() {
            let bytes = std::fs::read(dir.join(section["file"].text())).expect("image file");
            let offset = match &section["offset"] {
                json::Value::Number(n) => *n as usize,
                _ => 0,
            };
            let end = match &section["size"] {
                json::Value::Number(n) => offset + *n as usize,
                _ => bytes.len(),
            };
            image.add(
                hex(section["address"].text()),
                bytes[offset.min(end)..end.min(bytes.len())].to_vec(),
            );
        }
        let trace = std::fs::read(dir.join(case["pt"].text())).expect("the case's .pt");
        let exception = EXCEPTIONS.iter().find(|(case, _)| case == name);
        if exception.is_some() {
            seen_exceptions.push(name.clone());
        }
        let mut all_passed = true;
        let mut report = String::new();
        for run in runs {
            let mut output = Vec::new();
            print(&mut output, &trace, &image, &options).expect("write to a Vec");
            let output = String::from_utf8(output).expect("ASCII");
            let expected = read(&dir.join(run["expect"]["ptxed"].text()));
            let ours: Vec<String> = output.lines().map(fold).collect();
            let theirs: Vec<String> = expected.lines().map(fold).collect();
            if ours != theirs {
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Just enough JSON to read `case.json` files, so that the test needs no dependency.
mod json {
    use std::ops::Index;

    #[derive(Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(f64),
        Text(String),
        List(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    static NULL: Value = Value::Null;

    impl Value {
        pub fn items(&self) -> &[Value] {
            match self {
                Value::List(items) => items,
                _ => &[],
            }
        }

        /// The string, or "" for anything else (null included).
        pub fn text(&self) -> &str {
            match self {
                Value::Text(text) => text,
                _ => "",
            }
        }
    }

    impl Index<&str> for Value {
        type Output = Value;

        fn index(&self, key: &str) -> &Value {
            match self {
                Value::Object(fields) => fields
                    .iter()
                    .find(|(name, _)| name == key)
                    .map_or(&NULL, |(_, value)| value),
                _ => &NULL,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value()?;
        parser.blanks();
        if parser.pos != parser.bytes.len() {
            return Err(format!("trailing text at {}", parser.pos));
        }
        Ok(value)
    }

    struct Parser<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl Parser<'_> {
        fn blanks(&mut self) {
            while self
                .bytes
                .get(self.pos)
                .is_some_and(u8::is_ascii_whitespace)
            {
                self.pos += 1;
            }
        }

        fn expect(&mut self, byte: u8) -> Result<(), String> {
            self.blanks();
            if self.bytes.get(self.pos) == Some(&byte) {
                self.pos += 1;
                Ok(())
            } else {
                Err(format!("expected '{}' at {}", byte as char, self.pos))
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.blanks();
            let rest = &self.bytes[self.pos.min(self.bytes.len())..];
            for (word, value) in [
                ("null", Value::Null),
                ("true", Value::Bool(true)),
                ("false", Value::Bool(false)),
            ] {
                if rest.starts_with(word.as_bytes()) {
                    self.pos += word.len();
                    return Ok(value);
                }
            }
            match rest.first() {
                Some(b'"') => self.string().map(Value::Text),
                Some(b'[') => {
                    self.pos += 1;
                    let mut items = Vec::new();
                    self.blanks();
                    if self.bytes.get(self.pos) == Some(&b']') {
                        self.pos += 1;
                        return Ok(Value::List(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.blanks();
                        match self.bytes.get(self.pos) {
                            Some(b',') => self.pos += 1,
                            _ => break,
                        }
                    }
                    self.expect(b']')?;
                    Ok(Value::List(items))
                }
                Some(b'{') => {
                    self.pos += 1;
                    let mut fields = Vec::new();
                    self.blanks();
                    if self.bytes.get(self.pos) == Some(&b'}') {
                        self.pos += 1;
                        return Ok(Value::Object(fields));
                    }
                    loop {
                        self.blanks();
                        let key = self.string()?;
                        self.expect(b':')?;
                        fields.push((key, self.value()?));
                        self.blanks();
                        match self.bytes.get(self.pos) {
                            Some(b',') => self.pos += 1,
                            _ => break,
                        }
                    }
                    self.expect(b'}')?;
                    Ok(Value::Object(fields))
                }
                _ => {
                    let start = self.pos;
                    while self
                        .bytes
                        .get(self.pos)
                        .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                    {
                        self.pos += 1;
                    }
                    std::str::from_utf8(&self.bytes[start..self.pos])
                        .ok()
                        .and_then(|number| number.parse().ok())
                        .map(Value::Number)
                        .ok_or_else(|| format!("bad value at {start}"))
                }
            }
        }

        fn string(&mut self) -> Result<String, String> {
            self.expect(b'"')?;
            let mut text = String::new();
            loop {
                let rest = std::str::from_utf8(&self.bytes[self.pos..])
                    .map_err(|_| format!("bad UTF-8 at {}", self.pos))?;
                let mut chars = rest.chars();
                let c = chars.next().ok_or("unterminated string")?;
                self.pos += c.len_utf8();
                match c {
                    '"' => return Ok(text),
                    '\\' => {
                        let escape = chars.next().ok_or("unterminated escape")?;
                        self.pos += 1;
                        text.push(match escape {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            'b' => '\u{8}',
                            'f' => '\u{c}',
                            'u' => {
                                let hex = self
                                    .bytes
                                    .get(self.pos..self.pos + 4)
                                    .and_then(|h| std::str::from_utf8(h).ok())
                                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                                    .ok_or("bad \\u escape")?;
                                self.pos += 4;
                                char::from_u32(hex).unwrap_or('\u{fffd}')
                            }
                            other => other,
                        });
                    }
                    c => text.push(c),
                }
            }
        }
    }
}
