//! Real perf as the judge: decode a recording directory with `perf --buildid-dir DIR script` and compare
//! its instruction flow with the ground truth.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::recording::{EXPECTED_ERRORS, GROUND_TRUTH, PERF_DATA};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot run perf: {0}")]
    Spawn(std::io::Error),
    #[error("perf script failed ({status}): {stderr}")]
    Perf { status: String, stderr: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected perf script line: {0}")]
    Parse(String),
}

/// Whether `perf` can be run.
pub fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `perf --buildid-dir DIR script -i DIR/perf.data ARGS`.
pub(crate) fn perf_script_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("perf");
    command
        .arg("--buildid-dir")
        .arg(dir)
        .arg("script")
        .arg("-i")
        .arg(dir.join(PERF_DATA))
        .args(args);
    command
}

/// An error, with perf's standard error, unless perf succeeded.
pub(crate) fn perf_succeeded(out: &Output) -> Result<(), CheckError> {
    if !out.status.success() {
        return Err(CheckError::Perf {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Runs `perf --buildid-dir DIR script -i DIR/perf.data ARGS` and returns its standard output.
pub fn perf_script(dir: &Path, args: &[&str]) -> Result<String, CheckError> {
    let out = perf_script_command(dir, args)
        .output()
        .map_err(CheckError::Spawn)?;
    perf_succeeded(&out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// perf's instruction flow: (tid, ip) for every instruction (`--itrace=i1i -F tid,ip`).
pub fn perf_instructions(dir: &Path) -> Result<Vec<Executed>, CheckError> {
    let text = perf_script(dir, &["--itrace=i1i", "-F", "tid,ip"])?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let tid = f.next().and_then(|t| t.parse().ok());
            let ip = f.next().and_then(|t| u64::from_str_radix(t, 16).ok());
            match (tid, ip) {
                (Some(t), Some(ip)) => Ok((t, ip)),
                _ => Err(CheckError::Parse(l.to_string())),
            }
        })
        .collect()
}

/// perf's decoder errors (`--itrace=e`), one line each.
pub fn perf_errors(dir: &Path) -> Result<Vec<String>, CheckError> {
    let text = perf_script(dir, &["--itrace=e"])?;
    Ok(text
        .lines()
        .filter(|l| l.contains("error"))
        .map(str::to_string)
        .collect())
}

/// One executed instruction: (thread id, instruction pointer).
pub type Executed = (u32, u64);

/// Where perf's flow first departs from the ground truth: the first thread (lowest tid) whose
/// instruction sequence differs, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difference {
    pub tid: u32,
    /// The index within that thread's instructions.
    pub index: usize,
    pub expected: Option<Executed>,
    pub decoded: Option<Executed>,
}

/// How perf's decoding compares with the ground truth.
#[derive(Debug)]
pub struct Verdict {
    pub truth: usize,
    pub decoded: usize,
    /// Decoder errors beyond the expected ones, and expected ones perf did not report.
    pub errors: Vec<String>,
    /// Expected decoder errors (simulated overflows) that perf reported.
    pub expected_errors: usize,
    pub first_difference: Option<Difference>,
}

impl Verdict {
    pub fn is_exact(&self) -> bool {
        self.errors.is_empty() && self.first_difference.is_none()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ground truth {} instructions, perf decoded {}, {} unexpected decoder errors, {} expected",
            self.truth,
            self.decoded,
            self.errors.len(),
            self.expected_errors
        )?;
        if let Some(d) = &self.first_difference {
            let show = |x: &Option<Executed>| match x {
                Some((t, ip)) => format!("{t} {ip:#x}"),
                None => "nothing".into(),
            };
            write!(
                f,
                "; first difference in thread {} at its instruction {}: expected {}, perf has {}",
                d.tid,
                d.index,
                show(&d.expected),
                show(&d.decoded)
            )?;
        }
        for e in self.errors.iter().take(5) {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Compares perf's decoding of `dir` with the ground truth written beside it (`ground-truth.txt`, or
/// `ground-truth.txt.zst` in a committed sample).
pub fn check(dir: &Path) -> Result<Verdict, CheckError> {
    let plain = dir.join(GROUND_TRUTH);
    let truth_path = if plain.exists() {
        plain
    } else {
        dir.join(format!("{GROUND_TRUTH}.zst"))
    };
    let truth =
        crate::recording::read_ground_truth(&truth_path).map_err(|source| CheckError::Io {
            path: truth_path,
            source,
        })?;
    let expected_path = dir.join(EXPECTED_ERRORS);
    let expected = match std::fs::read_to_string(&expected_path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CheckError::Io {
                path: expected_path,
                source,
            })
        }
    };
    compare(dir, &truth, &expected)
}

/// Compares thread by thread: each thread's instructions, in order, must be equal. (A per-CPU
/// recording interleaves threads differently in perf's output than in the ground truth.)
pub fn first_difference(truth: &[Executed], decoded: &[Executed]) -> Option<Difference> {
    let by_thread = |flow: &[Executed]| {
        let mut m: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
        for &(t, ip) in flow {
            m.entry(t).or_default().push(ip);
        }
        m
    };
    let (want, got) = (by_thread(truth), by_thread(decoded));
    let mut tids: Vec<u32> = want.keys().chain(got.keys()).copied().collect();
    tids.sort_unstable();
    tids.dedup();
    let empty = Vec::new();
    tids.into_iter().find_map(|tid| {
        let (w, g) = (
            want.get(&tid).unwrap_or(&empty),
            got.get(&tid).unwrap_or(&empty),
        );
        (0..w.len().max(g.len()))
            .find(|&i| w.get(i) != g.get(i))
            .map(|index| Difference {
                tid,
                index,
                expected: w.get(index).map(|&ip| (tid, ip)),
                decoded: g.get(index).map(|&ip| (tid, ip)),
            })
    })
}

/// Compares perf's decoding of `dir` with `truth`; `expected` lists the messages of the decoder errors
/// the recording is meant to produce.
pub fn compare(dir: &Path, truth: &[Executed], expected: &[String]) -> Result<Verdict, CheckError> {
    let decoded = perf_instructions(dir)?;
    let mut pending: Vec<&String> = expected.iter().collect();
    let mut errors = Vec::new();
    let mut expected_errors = 0;
    for line in perf_errors(dir)? {
        match pending.iter().position(|m| line.ends_with(m.as_str())) {
            Some(k) => {
                pending.remove(k);
                expected_errors += 1;
            }
            None => errors.push(line),
        }
    }
    errors.extend(
        pending
            .iter()
            .map(|m| format!("expected but not reported: {m}")),
    );
    let first_difference = first_difference(truth, &decoded);
    Ok(Verdict {
        truth: truth.len(),
        decoded: decoded.len(),
        errors,
        expected_errors,
        first_difference,
    })
}
