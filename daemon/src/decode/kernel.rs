//! Kernel code for the recording image: kernel maps (perf's MMAP of pid -1,
//! `[kernel.kallsyms]_text`) are not files at a page offset, so they are read through a vmlinux
//! (relocated by the map's `pgoff`, the run-time `_text`) or a kcore copy (run-time addresses),
//! chosen once per recording as perf chooses: `--vmlinux`, a vmlinux whose build-id matches at
//! perf's standard paths, then the recording's `kcore_dir`. kallsyms gives no code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::debuginfo::{vmlinux_text, Binary, BuildId, Kcore, SearchPaths};
use crate::sideband::Map;

/// How perf names the kernel's dso in its reports and warnings.
pub const KERNEL_NAME: &str = "[kernel.kallsyms]";

/// Whether `map` is a kernel image map (not a module: those are ordinary files).
pub fn is_kernel_map(map: &Map) -> bool {
    map.filename.starts_with("[kernel.kallsyms]") || map.filename.starts_with("[guest.kernel")
}

/// Where kernel code comes from, once found.
#[derive(Debug)]
enum Source {
    /// A vmlinux and the link-time address of its `_text`.
    Vmlinux {
        binary: Arc<Binary>,
        text: Option<u64>,
    },
    Kcore(Kcore),
    /// Nothing gives code bytes: every read fails and the kernel is named missing.
    Missing,
}

/// The kernel code source of one recording, looked for on the first kernel read.
#[derive(Debug, Default)]
pub struct KernelCode {
    source: OnceLock<Source>,
}

/// perf's `vmlinux_path` (symbol.c), for the running kernel's release: only a file whose
/// build-id matches the recording's is taken from these.
fn standard_vmlinux_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("vmlinux"), PathBuf::from("/boot/vmlinux")];
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        let r = release.trim();
        for p in [
            format!("/boot/vmlinux-{r}"),
            format!("/usr/lib/debug/boot/vmlinux-{r}"),
            format!("/lib/modules/{r}/build/vmlinux"),
            format!("/usr/lib/debug/lib/modules/{r}/vmlinux"),
            format!("/usr/lib/debug/boot/vmlinux-{r}.debug"),
        ] {
            paths.push(PathBuf::from(p));
        }
    }
    paths
}

fn open_vmlinux(path: &Path) -> Option<Source> {
    let binary = Binary::open(path).ok()?;
    let text = vmlinux_text(path).ok().flatten();
    Some(Source::Vmlinux {
        binary: Arc::new(binary),
        text,
    })
}

fn find(search: &SearchPaths, build_id: Option<&BuildId>) -> Source {
    // An explicit --vmlinux is taken as it is, as perf takes it.
    if let Some(source) = search.vmlinux.as_deref().and_then(open_vmlinux) {
        return source;
    }
    if let Some(id) = build_id {
        for path in standard_vmlinux_paths() {
            let path = search.under_symfs(&path);
            let matches = BuildId::from_elf_file(&path)
                .ok()
                .flatten()
                .is_some_and(|found| id.matches(&found));
            if let Some(source) = matches.then(|| open_vmlinux(&path)).flatten() {
                return source;
            }
        }
    }
    if let Some(dir) = &search.kcore_dir {
        if let Ok(kcore) = Kcore::open(&dir.join("kcore")) {
            return Source::Kcore(kcore);
        }
    }
    Source::Missing
}

impl KernelCode {
    pub fn new() -> KernelCode {
        KernelCode::default()
    }

    /// Reads the kernel code at `ip` (in kernel map `map`) into `buf`: the bytes read, or `Err`
    /// with the name to report missing when no source holds kernel code.
    pub fn read(
        &self,
        search: &SearchPaths,
        map: &Map,
        ip: u64,
        buf: &mut [u8],
    ) -> Result<usize, &'static str> {
        let source = self.source.get_or_init(|| {
            let id = map
                .build_id
                .as_ref()
                .and_then(|b| BuildId::new(b.as_bytes()));
            find(search, id.as_ref())
        });
        let code = match source {
            Source::Missing => return Err(KERNEL_NAME),
            Source::Kcore(kcore) => kcore.code_at(ip),
            Source::Vmlinux { binary, text } => binary.code_at(vmlinux_address(map, *text, ip)),
        };
        // An address the source does not hold (outside the image, in a module) reads nothing:
        // the decoder reports it as it reports any unreadable code.
        let Some(code) = code else {
            return Ok(0);
        };
        let in_map = map.end().saturating_sub(ip);
        let len = buf
            .len()
            .min(code.len())
            .min(usize::try_from(in_map).unwrap_or(usize::MAX));
        buf[..len].copy_from_slice(&code[..len]);
        Ok(len)
    }
}

/// The vmlinux virtual address of run-time address `ip`: perf records the run-time `_text` as
/// the kernel map's `pgoff`, so the kernel was relocated by `pgoff - text`. Without either
/// (`pgoff` 0 or no `_text` symbol) the kernel is taken as unrelocated.
pub fn vmlinux_address(map: &Map, text: Option<u64>, ip: u64) -> u64 {
    match text {
        Some(text) if map.pgoff != 0 => ip.wrapping_sub(map.pgoff).wrapping_add(text),
        _ => ip,
    }
}
