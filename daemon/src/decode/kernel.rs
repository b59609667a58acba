//! Kernel code for the recording image: kernel maps (perf's MMAP of pid -1,
//! `[kernel.kallsyms]_text`) are not files at a page offset, so they are read through a vmlinux
//! (relocated by the map's `pgoff`, the run-time `_text`) or a kcore copy (run-time addresses),
//! chosen once per recording as perf chooses: `--vmlinux`, a vmlinux whose build-id matches at
//! perf's standard paths, then the recording's `kcore_dir`. kallsyms gives no code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::debuginfo::{vmlinux_text, Binary, BuildId, Kallsyms, Kcore, SearchPaths};
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
    Vmlinux(Vmlinux),
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

/// A vmlinux and the link-time address of its `_text` (`None` when it has no `_text` or
/// `_stext` symbol: taken as unrelocated).
#[derive(Debug, Clone)]
pub struct Vmlinux {
    pub binary: Arc<Binary>,
    pub text: Option<u64>,
}

fn open_vmlinux(path: &Path) -> Option<Vmlinux> {
    let binary = Binary::open(path).ok()?;
    let text = vmlinux_text(path).ok().flatten();
    Some(Vmlinux {
        binary: Arc::new(binary),
        text,
    })
}

/// The vmlinux perf would read for a kernel whose build-id is `build_id`: `--vmlinux` as it is,
/// else the first whose build-id matches of a build-id cache's `elf` and perf's standard paths
/// (under `--symfs`). Shared by
/// the decoder (code bytes) and `index::aggregate` (symbols and lines), so both see one file.
pub fn find_vmlinux(search: &SearchPaths, build_id: Option<&BuildId>) -> Option<Vmlinux> {
    // An explicit --vmlinux is taken as it is, as perf takes it.
    if let Some(found) = search.vmlinux.as_deref().and_then(open_vmlinux) {
        return Some(found);
    }
    let id = build_id?;
    // perf looks first for a vmlinux added to a build-id cache (`perf buildid-cache -a`), which
    // is kept as an `elf` beside the `kallsyms` copies, then at its standard paths.
    let hex = id.to_string();
    let (head, tail) = hex.split_at(2.min(hex.len()));
    let cached = search
        .buildid_dirs
        .iter()
        .map(|dir| dir.join(".build-id").join(head).join(tail).join("elf"));
    let standard = standard_vmlinux_paths()
        .into_iter()
        .map(|path| search.under_symfs(&path));
    cached.chain(standard).find_map(|path| {
        let matches = BuildId::from_elf_file(&path)
            .ok()
            .flatten()
            .is_some_and(|found| id.matches(&found));
        matches.then(|| open_vmlinux(&path)).flatten()
    })
}

fn find(search: &SearchPaths, build_id: Option<&BuildId>) -> Source {
    if let Some(vmlinux) = find_vmlinux(search, build_id) {
        return Source::Vmlinux(vmlinux);
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
            Source::Vmlinux(v) => v.binary.code_at(vmlinux_address(map, v.text, ip)),
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

/// The address in a kernel symbol source whose `_text` is `text` (a vmlinux's link-time one, or a
/// kallsyms copy's, perf's `kallsyms__delta`) of the kernel code the index names by `offset` in
/// `map` (its `Map::file_offset(ip)`, the run-time address for perf's kernel map, where `pgoff` is
/// `start`): the run-time address relocated as [`vmlinux_address`] relocates it.
pub fn kernel_symbol_address(map: &Map, text: Option<u64>, offset: u64) -> u64 {
    let ip = offset.wrapping_sub(map.pgoff).wrapping_add(map.start);
    vmlinux_address(map, text, ip)
}

/// A kernel symbol table found for the report, and the file it came from.
#[derive(Debug, Clone)]
pub struct FoundKallsyms {
    pub path: PathBuf,
    pub table: Kallsyms,
}

/// The kallsyms text perf would take symbols from when it has no vmlinux: `--kallsyms`, the
/// recording's `kcore_dir/kallsyms` (perf passes it as `--kallsyms`), then the copy in a build-id
/// cache. A table whose addresses were hidden as zeros resolves nothing and is passed over.
/// `Err` says what was tried.
pub fn find_kallsyms(
    search: &SearchPaths,
    build_id: Option<&BuildId>,
) -> Result<FoundKallsyms, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    candidates.extend(search.kallsyms.clone());
    candidates.extend(search.kcore_dir.as_ref().map(|d| d.join("kallsyms")));
    if let Some(id) = build_id {
        // A recorded pseudo-name: only the build-id caches are looked in, for a `kallsyms` file.
        if let Ok(located) = search.locate(Path::new(KERNEL_NAME), Some(id)) {
            candidates.push(located.path);
        }
    }
    let mut tried = Vec::new();
    for path in candidates {
        match Kallsyms::open(&path) {
            Ok(table) if table.is_zeroed() => {
                tried.push(format!("{}: addresses hidden as zeros", path.display()))
            }
            Ok(table) => return Ok(FoundKallsyms { path, table }),
            Err(e) => tried.push(e.to_string()),
        }
    }
    if tried.is_empty() {
        tried.push("no --kallsyms, kcore_dir/kallsyms or build-id cache copy".to_owned());
    }
    Err(tried.join("; "))
}
