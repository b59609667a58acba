//! `ptlens annotate FILE [SOURCE…]`: source listings with counts in a margin, as a perf user
//! reads `perf annotate`.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use ptlens::index::LineCounts;

use super::lines::{line_report, warn_unresolved, SearchArgs};

/// Print the source files a recording executed, hottest first, each line with its counts in
/// a margin: how often control entered it, and for lines with conditional branches how often
/// they were taken / not taken.
///
/// Sources are read from the paths the DWARF names; when such a path does not exist, a file
/// of the same name next to FILE is used (and the listing says so). A source that cannot be
/// found is reported, and its counts are listed by line number.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct AnnotateArgs {
    /// The perf.data file.
    pub file: PathBuf,

    /// Only these source files (a path, a path suffix or a file name).
    pub sources: Vec<String>,

    #[command(flatten)]
    pub search: SearchArgs,
}

/// Lines of one source file.
struct SourceFile<'r> {
    path: &'r str,
    lines: BTreeMap<u32, &'r LineCounts>,
    instructions: u64,
}

fn wanted(path: &str, filters: &[String]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            path == f
                || path.ends_with(&format!("/{f}"))
                || Path::new(path).file_name() == Path::new(f).file_name()
        })
}

/// Where to read `dwarf_path` from, and a note when it is not where the DWARF says.
fn find_source(dwarf_path: &str, recording: &Path) -> (Option<PathBuf>, Option<String>) {
    let path = Path::new(dwarf_path);
    if path.is_file() {
        return (Some(path.to_owned()), None);
    }
    let beside = path.file_name().map(|name| {
        recording
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(name)
    });
    match beside.filter(|p| p.is_file()) {
        Some(p) => {
            let note = format!("{dwarf_path} does not exist; showing {}", p.display());
            (Some(p), Some(note))
        }
        None => (
            None,
            Some(format!(
                "source not found: {dwarf_path} (nor beside the recording); counts by line"
            )),
        ),
    }
}

fn margin(l: Option<&LineCounts>) -> String {
    match l {
        None => format!("{:>10} {:>15}", "", ""),
        Some(l) if l.taken + l.not_taken > 0 && l.branches > 0 => {
            format!(
                "{:>10} {:>15}",
                l.executions,
                format!("{}/{}", l.taken, l.not_taken)
            )
        }
        Some(l) => format!("{:>10} {:>15}", l.executions, ""),
    }
}

impl AnnotateArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let (report, _) = line_report(&self.file, &self.search)?;
        let mut files: BTreeMap<&str, SourceFile<'_>> = BTreeMap::new();
        for l in &report.lines {
            if !wanted(&l.file, &self.sources) {
                continue;
            }
            let f = files.entry(&l.file).or_insert_with(|| SourceFile {
                path: &l.file,
                lines: BTreeMap::new(),
                instructions: 0,
            });
            f.lines.insert(l.line, l);
            f.instructions += l.instructions;
        }
        let mut files: Vec<SourceFile<'_>> = files.into_values().collect();
        files.sort_by(|a, b| b.instructions.cmp(&a.instructions).then(a.path.cmp(b.path)));

        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        for f in &files {
            writeln!(out, "== {} ({} instructions)", f.path, f.instructions)?;
            writeln!(out, "{:>10} {:>15}", "executions", "taken/not-taken")?;
            let (source, note) = find_source(f.path, &self.file);
            if let Some(note) = &note {
                writeln!(out, "   ({note})")?;
            }
            let text = source.and_then(|p| std::fs::read(p).ok());
            match text {
                Some(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let mut n = 0u32;
                    for (i, line) in text.lines().enumerate() {
                        n = u32::try_from(i + 1).unwrap_or(u32::MAX);
                        let counts = f.lines.get(&n).copied();
                        writeln!(out, "{} {n:>5}: {line}", margin(counts))?;
                    }
                    // Lines the DWARF names past the end of the file (a stale source).
                    for (line, l) in f.lines.range(n.saturating_add(1)..) {
                        writeln!(
                            out,
                            "{} {line:>5}: (past the end of the file)",
                            margin(Some(l))
                        )?;
                    }
                }
                None => {
                    for (line, l) in &f.lines {
                        writeln!(out, "{} {line:>5}:", margin(Some(l)))?;
                    }
                }
            }
            writeln!(out)?;
        }
        if files.is_empty() {
            writeln!(
                out,
                "no source lines executed{}",
                if self.sources.is_empty() {
                    ""
                } else {
                    " in the files asked for"
                }
            )?;
        }
        out.flush()?;
        warn_unresolved(&report);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_found_beside_the_recording() {
        let dir = tempfile::tempdir().expect("temp dir");
        let recording = dir.path().join("perf.data");
        let beside = dir.path().join("prog.c");
        std::fs::write(&beside, "int main(void) { return 0; }\n").expect("write");
        // The DWARF's own path wins when it exists.
        let (found, note) = find_source(&beside.to_string_lossy(), &recording);
        assert_eq!((found, note), (Some(beside.clone()), None));
        // A build directory that is gone: the file of that name beside the recording.
        let (found, note) = find_source("/nonexistent/build/prog.c", &recording);
        assert_eq!(found, Some(beside));
        assert!(note.is_some_and(|n| n.contains("does not exist")));
        // Neither: reported, and the counts are listed by line number.
        let (found, note) = find_source("/nonexistent/build/other.c", &recording);
        assert_eq!(found, None);
        assert!(note.is_some_and(|n| n.contains("source not found")));
    }

    #[test]
    fn filters_match_paths_suffixes_and_names() {
        let path = "/src/app/lib/prog.c";
        assert!(wanted(path, &[]));
        assert!(wanted(path, &["prog.c".to_owned()]));
        assert!(wanted(path, &["lib/prog.c".to_owned()]));
        assert!(wanted(path, &[path.to_owned()]));
        assert!(!wanted(path, &["other.c".to_owned()]));
    }
}
