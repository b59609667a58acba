//! Committed samples: `samples/<name>/prog.c`, built with `gcc -g`, recorded, checked against perf, and
//! stored with perf's own `--itrace=be` output as the reference.
//!
//! A sample directory holds `prog.c`, `perf.data`, `.build-id/`, `ground-truth.txt.zst` (the ptrace
//! instruction flow, `TID IP` per line) and `perf-script-be.txt.zst` (`perf script --itrace=be`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::check::{self, CheckError, Verdict};
use crate::recording::{self, RecordError, Recording, GROUND_TRUTH};

pub const SOURCE: &str = "prog.c";
/// Optional per-sample record options: `key=value` lines (`overflow_at`, `overflow_lost`, `per_cpu`,
/// `quantum`, `aux_split`, `cyc` (1: cycle-accurate mode), `filter_function`: an address filter on
/// that function of the program — or on each of several, comma-separated or on several lines —, its
/// file offset and size found at regeneration with `nm -S` and `readelf -lW`), `#` comments.
pub const OPTIONS: &str = "synth-options";
pub const REFERENCE: &str = "perf-script-be.txt.zst";

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("{0}: no {SOURCE} here")]
    NoSource(PathBuf),
    #[error("gcc failed on {source_file}: {stderr}")]
    Compile {
        source_file: PathBuf,
        stderr: String,
    },
    #[error("cannot run gcc: {0}")]
    NoCompiler(std::io::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("perf disagrees with the ground truth: {0}")]
    Disagrees(Verdict),
    #[error("{path}: bad option line: {line}")]
    BadOption { path: PathBuf, line: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SampleError {
    let path = path.to_path_buf();
    move |source| SampleError::Io { path, source }
}

/// Compiles a C file with `gcc -g -O1`.
pub fn compile(source: &Path, binary: &Path) -> Result<(), SampleError> {
    let out = Command::new("gcc")
        .args(["-g", "-O1", "-o"])
        .arg(binary)
        .arg(source)
        .output()
        .map_err(SampleError::NoCompiler)?;
    if !out.status.success() {
        return Err(SampleError::Compile {
            source_file: source.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Builds `sample_dir/prog.c` in `work` (as `work/<sample name>`), records it into `out`, removes the
/// binary (so perf can only find it in the build-id cache), checks the recording with perf and writes the
/// reference output. `out` may be the sample directory itself.
pub fn regenerate(
    sample_dir: &Path,
    work: &Path,
    out: &Path,
    opts: &recording::Options,
) -> Result<(Recording, Verdict), SampleError> {
    let source = sample_dir.join(SOURCE);
    if !source.is_file() {
        return Err(SampleError::NoSource(sample_dir.to_path_buf()));
    }
    let name = sample_dir
        .canonicalize()
        .map_err(io_err(sample_dir))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sample".into());
    std::fs::create_dir_all(work).map_err(io_err(work))?;
    let binary = work.join(&name);
    compile(&source, &binary)?;

    // Start from a clean output: stale build-ids would linger otherwise.
    for stale in [".build-id", recording::PERF_DATA, GROUND_TRUTH] {
        let p = out.join(stale);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
        } else if p.exists() {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    let opts = options(sample_dir, opts, &binary)?;
    let rec = recording::record(binary.to_str().unwrap_or(&name), &[], out, &opts)?;
    std::fs::remove_file(&binary).map_err(io_err(&binary))?;

    let verdict = check::check(out)?;
    if !verdict.is_exact() {
        return Err(SampleError::Disagrees(verdict));
    }
    let reference = check::perf_script(out, &["--itrace=be"])?;
    write_zst(&out.join(REFERENCE), reference.as_bytes())?;
    let truth = out.join(GROUND_TRUTH);
    let text = std::fs::read(&truth).map_err(io_err(&truth))?;
    write_zst(&out.join(format!("{GROUND_TRUTH}.zst")), &text)?;
    std::fs::remove_file(&truth).map_err(io_err(&truth))?;
    Ok((rec, verdict))
}

/// The sample's record options: `base` plus what its `synth-options` file says (`binary`: the built
/// program, for `filter_function`).
pub fn options(
    sample_dir: &Path,
    base: &recording::Options,
    binary: &Path,
) -> Result<recording::Options, SampleError> {
    let mut opts = base.clone();
    let path = sample_dir.join(OPTIONS);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(opts),
        Err(source) => return Err(SampleError::Io { path, source }),
    };
    let mut overflow = crate::encode::Overflow {
        at: 0,
        lost: 10_000,
    };
    let mut has_overflow = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || SampleError::BadOption {
            path: path.clone(),
            line: line.to_string(),
        };
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        if key.trim() == "filter_function" {
            let bad_filter = |what: String| SampleError::BadOption {
                path: path.clone(),
                line: format!("{line}: {what}"),
            };
            // One range per function named (comma-separated, or on further lines).
            let mut entries: Vec<String> = opts
                .filter
                .as_ref()
                .map(|f| vec![f.perf_string()])
                .unwrap_or_default();
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let (offset, size) = function_offset(binary, name).map_err(bad_filter)?;
                entries.push(format!("filter {offset:#x}/{size:#x}@{}", binary.display()));
            }
            let filter = recording::AddrFilter::parse(&entries.join(",")).map_err(bad_filter)?;
            opts.filter = Some(filter);
            continue;
        }
        let value: u64 = value.trim().parse().map_err(|_| bad())?;
        match key.trim() {
            "overflow_at" => {
                overflow.at = value;
                has_overflow = true;
            }
            "overflow_lost" => overflow.lost = value,
            "per_cpu" => opts.per_cpu = Some(u32::try_from(value).map_err(|_| bad())?),
            "quantum" => opts.quantum = value,
            "aux_split" => opts.encode.aux_split = usize::try_from(value).map_err(|_| bad())?,
            "cyc" => opts.encode.cyc = value != 0,
            _ => return Err(bad()),
        }
    }
    if has_overflow {
        opts.encode.overflow = Some(overflow);
    }
    Ok(opts)
}

fn tool_output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The file offset and size of the function `symbol` in `binary` (`nm -S`, then the `LOAD` segment
/// holding it, from `readelf -lW`).
pub fn function_offset(binary: &Path, symbol: &str) -> Result<(u64, u64), String> {
    let hex = |t: &str| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok();
    let nm = tool_output(Command::new("nm").arg("-S").arg(binary))?;
    let (addr, size) = nm
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 4 && f[3] == symbol && matches!(f[2], "T" | "t") {
                Some((hex(f[0])?, hex(f[1])?))
            } else {
                None
            }
        })
        .ok_or_else(|| format!("no function {symbol} in {}", binary.display()))?;
    let segs = tool_output(Command::new("readelf").arg("-lW").arg(binary))?;
    let offset = segs
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .find_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(5)
                .filter_map(hex)
                .collect();
            let (off, vaddr, filesz) = (*f.first()?, *f.get(1)?, *f.get(3)?);
            (addr >= vaddr && addr < vaddr + filesz).then(|| addr - vaddr + off)
        })
        .ok_or_else(|| format!("no LOAD segment of {} holds {addr:#x}", binary.display()))?;
    Ok((offset, size))
}

/// Every directory under `root` that holds a `prog.c`, sorted.
pub fn find(root: &Path) -> Result<Vec<PathBuf>, SampleError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io_err(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(SOURCE).is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn write_zst(path: &Path, data: &[u8]) -> Result<(), SampleError> {
    let packed =
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest);
    std::fs::write(path, packed).map_err(io_err(path))
}

/// Reads a file, decompressing it if its name ends in `.zst`.
pub fn read_maybe_zst(path: &Path) -> std::io::Result<Vec<u8>> {
    let raw = std::fs::read(path)?;
    if path.extension().is_some_and(|e| e == "zst") {
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?
            .read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zst_round_trip() {
        let dir = std::env::temp_dir().join(format!("ptlens-synth-zst-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.txt.zst");
        let text = "1234 7ffff7fe4b70\n".repeat(1000);
        write_zst(&p, text.as_bytes()).unwrap();
        assert_eq!(read_maybe_zst(&p).unwrap(), text.as_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
