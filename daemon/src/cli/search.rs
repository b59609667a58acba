//! Where binaries are looked for, spelled as perf spells it: shared by every command that decodes.

use std::path::{Path, PathBuf};

use ptlens::debuginfo::SearchPaths;

#[derive(clap::Args, Clone)]
pub struct BinarySearchArgs {
    /// A build-id cache directory to search first (perf's --buildid-dir). The directory
    /// holding FILE is searched next, then ~/.debug.
    #[arg(long, value_name = "DIR")]
    pub buildid_dir: Vec<PathBuf>,

    /// Look for binaries under DIR (perf's --symfs).
    #[arg(long, value_name = "DIR")]
    pub symfs: Option<PathBuf>,

    /// The kernel image to read kernel code, symbols and lines from (perf's --vmlinux).
    #[arg(long, value_name = "FILE")]
    pub vmlinux: Option<PathBuf>,

    /// The kernel symbol table, in /proc/kallsyms format (perf's --kallsyms): kernel functions
    /// (no lines) when no vmlinux is found. Default: the recording's kcore_dir/kallsyms.
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,
}

impl BinarySearchArgs {
    /// The search order for `recording`: `--buildid-dir`s, the build-id cache beside the
    /// recording (a sample directory carries its own), perf's default cache, `--symfs`, and the
    /// kernel's sources (`--vmlinux`, `--kallsyms`, the recording's own `kcore_dir`).
    pub fn paths(&self, recording: &Path) -> SearchPaths {
        let mut search = SearchPaths::new();
        for dir in &self.buildid_dir {
            search = search.with_buildid_dir(dir);
        }
        let beside = recording
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        search = search.with_buildid_dir(beside);
        for dir in SearchPaths::perf_default().buildid_dirs {
            search = search.with_buildid_dir(dir);
        }
        if let Some(symfs) = &self.symfs {
            search = search.with_symfs(symfs);
        }
        if let Some(vmlinux) = &self.vmlinux {
            search = search.with_vmlinux(vmlinux);
        }
        if let Some(kallsyms) = &self.kallsyms {
            search = search.with_kallsyms(kallsyms);
        }
        let kcore_dir = recording.join("kcore_dir");
        if kcore_dir.is_dir() {
            search = search.with_kcore_dir(kcore_dir);
        }
        search
    }
}
