//! What the perf-judged test files share: skipping without the tools, and scratch directories.

use std::path::PathBuf;

/// Whether `tool` is an executable on PATH. (Not `tool --version`: dash, Debian's `sh`, has none.)
pub fn have(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether the tools are here; panics instead of skipping when PTLENS_REQUIRE_PERF=1.
pub fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test}: skipped: {} not on PATH", missing.join(", "));
    if std::env::var("PTLENS_REQUIRE_PERF").as_deref() == Ok("1") {
        panic!("{reason} (PTLENS_REQUIRE_PERF=1)");
    }
    eprintln!("{reason}");
    false
}

/// An empty directory of its own for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ptlens-synth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
