//! Conformance: every ptdump run of the libipt corpus (`tests/data/libipt`) through
//! `pt::dump::write_ptdump`, compared line by line with whitespace folded (as libipt's own
//! `diff -ub` does). Runs that need what ptlens does not implement are skipped; the exceptions
//! are listed below with their reasons, and the test checks that exactly these were skipped.

use std::path::{Path, PathBuf};

use ptlens::pt::dump::{write_ptdump, PtdumpOptions};

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

    let (mut passed, mut failed) = (0usize, Vec::new());
    let mut skipped: Vec<(String, usize, &str)> = Vec::new();
    for name in &names {
        let dir = cases.join(name);
        let case = json::parse(&read(&dir.join("case.json"))).expect("case.json is JSON");
        let args: Vec<String> = case["options"]["ptdump"]["args"]
            .items()
            .iter()
            .map(|arg| arg.text().to_owned())
            .collect();
        let runs = case["runs"].items();
        let options = match options_for(name, &args) {
            Ok(options) => options,
            Err(reason) => {
                skipped.push((name.clone(), runs.len(), reason));
                continue;
            }
        };
        let trace = std::fs::read(dir.join(case["pt"].text())).expect("the case's .pt");
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
            let expected = read(&dir.join(run["expect"]["ptdump"].text()));
            let ours: Vec<String> = output.lines().map(fold).collect();
            let theirs: Vec<String> = expected.lines().map(fold).collect();
            if ours == theirs {
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
