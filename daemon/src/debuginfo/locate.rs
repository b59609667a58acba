//! Finding binaries and their separate debug files the way perf 6.1 does (`dso__load`,
//! `dso__read_binary_type_filename`, `__dso__build_id_filename`).
//!
//! perf's facts, and where ptlens differs:
//! - Build-id cache: `DIR/.build-id/<2 hex>/<rest of hex>`; a regular file there is the binary itself
//!   (old layout), a directory holds `elf` (or `vdso` for `[vdso]`, `kallsyms` for the kernel) and
//!   `debug`. perf has one cache directory; ptlens searches a list (`--buildid-dir`, `~/.debug`, the
//!   one inside a sample directory) in order.
//! - Then the recorded path, under `--symfs` when one is given (perf joins the two and does not fall
//!   back to the bare path, and neither does ptlens).
//! - perf rejects any image whose build-id differs from the recorded one (`symsrc__init`), so does
//!   ptlens, for every candidate.
//! - Separate debug files, in perf's order: `.gnu_debuglink` (same directory, `.debug/`, the global
//!   debug directory + the binary's directory), the cache's `debug`, `/usr/lib/debug/<path>.debug`,
//!   `/usr/lib/debug/<path>`, `/usr/lib/debug/.build-id/<2 hex>/<rest>.debug`. Unlike perf, ptlens
//!   also checks the debuglink CRC (as gdb does) and that the file has DWARF at all.

use std::fmt;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::build_id::{self, BuildId};
use super::map_file;

/// Where to look for binaries and their debug files. Plain data: building one does no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPaths {
    /// Build-id cache directories, searched in order (each holds a `.build-id/` directory).
    pub buildid_dirs: Vec<PathBuf>,
    /// perf's `--symfs`: a root under which recorded paths (and the global debug directory) are
    /// looked up instead of under `/`.
    pub symfs: Option<PathBuf>,
    /// The global debug directory, `/usr/lib/debug` unless a test says otherwise. Looked up under
    /// `symfs` as perf does.
    pub debug_dir: PathBuf,
    /// perf's `--vmlinux FILE`: the kernel image, taken whatever its build-id.
    pub vmlinux: Option<PathBuf>,
    /// perf's `--kallsyms FILE`: the kernel's symbol table.
    pub kallsyms: Option<PathBuf>,
    /// A recording's `kcore_dir` (`perf record --kcore`): `kcore`, `kallsyms`, `modules`.
    pub kcore_dir: Option<PathBuf>,
}

impl Default for SearchPaths {
    fn default() -> Self {
        SearchPaths {
            buildid_dirs: Vec::new(),
            symfs: None,
            debug_dir: PathBuf::from("/usr/lib/debug"),
            vmlinux: None,
            kallsyms: None,
            kcore_dir: None,
        }
    }
}

/// How a file was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// In this build-id cache directory.
    BuildIdCache(PathBuf),
    /// At the recorded path under `--symfs`.
    Symfs,
    /// At the recorded path itself.
    RecordedPath,
    /// Through the binary's `.gnu_debuglink`.
    DebugLink,
    /// In the global debug directory, by the binary's path.
    DebugDirByPath,
    /// In the global debug directory's `.build-id/`.
    DebugDirByBuildId,
}

/// A file that was found, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file to open.
    pub path: PathBuf,
    /// Its build-id, when it has one (it matches the one asked for, when one was).
    pub build_id: Option<BuildId>,
    /// Where it was found.
    pub origin: Origin,
}

/// Why a candidate file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No regular file there.
    Missing,
    /// Not an ELF file (the parser's words).
    NotElf(String),
    /// A build-id was asked for, and this file has none.
    NoBuildId,
    /// This file's build-id differs from the one asked for.
    BuildIdMismatch(BuildId),
    /// A debuglink target whose CRC differs from the one the binary records.
    CrcMismatch {
        /// The CRC in the binary's `.gnu_debuglink`.
        expected: u32,
        /// The CRC of the file found.
        found: u32,
    },
    /// A debug-file candidate with no DWARF in it.
    NoDebugInfo,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Missing => f.write_str("missing"),
            Rejection::NotElf(why) => write!(f, "not ELF: {why}"),
            Rejection::NoBuildId => f.write_str("has no build-id"),
            Rejection::BuildIdMismatch(found) => write!(f, "build-id mismatch: has {found}"),
            Rejection::CrcMismatch { expected, found } => {
                write!(
                    f,
                    "CRC mismatch: {found:08x}, debuglink says {expected:08x}"
                )
            }
            Rejection::NoDebugInfo => f.write_str("has no DWARF"),
        }
    }
}

/// A place that was looked at, and why it was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    /// The candidate file.
    pub path: PathBuf,
    /// Why it was not used.
    pub rejection: Rejection,
}

/// A binary that is nowhere it was looked for: names it and every place tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct NotFound {
    /// The path the recording gives for the binary.
    pub recorded_path: PathBuf,
    /// The build-id the recording gives, if any.
    pub build_id: Option<BuildId>,
    /// Every candidate, in the order tried.
    pub tried: Vec<Tried>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "binary {} ", self.recorded_path.display())?;
        if let Some(id) = &self.build_id {
            write!(f, "(build-id {id}) ")?;
        }
        f.write_str("not found")?;
        if self.tried.is_empty() {
            return f.write_str(": nowhere to look");
        }
        f.write_str("; tried")?;
        for (i, t) in self.tried.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{} ({})", t.path.display(), t.rejection)?;
        }
        Ok(())
    }
}

/// The contents of a `.gnu_debuglink` section: the debug file's name and the CRC-32 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugLink {
    /// A file name (no directory).
    pub name: String,
    /// The CRC-32 (as zlib's `crc32`) of the whole debug file.
    pub crc: u32,
}

/// What kind of file a recorded name stands for, which decides the name inside a cache directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Elf,
    Vdso,
    Kallsyms,
}

impl Kind {
    fn of(recorded: &Path) -> Kind {
        let name = recorded.to_string_lossy();
        if name.starts_with("[vdso") {
            Kind::Vdso
        } else if name.starts_with("[kernel.kallsyms") || name.starts_with("[guest.kernel.kallsyms")
        {
            Kind::Kallsyms
        } else {
            Kind::Elf
        }
    }

    /// perf's `build_id_cache__basename`.
    fn cache_name(self) -> &'static str {
        match self {
            Kind::Elf => "elf",
            Kind::Vdso => "vdso",
            Kind::Kallsyms => "kallsyms",
        }
    }
}

/// Is this a pseudo-name like `[vdso]`, which names no file on disk?
fn is_pseudo(recorded: &Path) -> bool {
    recorded.to_string_lossy().starts_with('[')
}

impl SearchPaths {
    /// No build-id cache, no symfs, `/usr/lib/debug`.
    pub fn new() -> SearchPaths {
        SearchPaths::default()
    }

    /// What perf uses with no options: the build-id cache in `$PERF_BUILDID_DIR`, else `~/.debug`.
    pub fn perf_default() -> SearchPaths {
        let dir = std::env::var_os("PERF_BUILDID_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".debug")));
        SearchPaths {
            buildid_dirs: dir.into_iter().collect(),
            ..SearchPaths::default()
        }
    }

    /// Adds a build-id cache directory, searched after those already there.
    pub fn with_buildid_dir(mut self, dir: impl Into<PathBuf>) -> SearchPaths {
        self.buildid_dirs.push(dir.into());
        self
    }

    /// Sets `--symfs`.
    pub fn with_symfs(mut self, dir: impl Into<PathBuf>) -> SearchPaths {
        self.symfs = Some(dir.into());
        self
    }

    /// Sets the global debug directory.
    pub fn with_debug_dir(mut self, dir: impl Into<PathBuf>) -> SearchPaths {
        self.debug_dir = dir.into();
        self
    }

    /// Sets `--vmlinux`.
    pub fn with_vmlinux(mut self, file: impl Into<PathBuf>) -> SearchPaths {
        self.vmlinux = Some(file.into());
        self
    }

    /// Sets `--kallsyms`.
    pub fn with_kallsyms(mut self, file: impl Into<PathBuf>) -> SearchPaths {
        self.kallsyms = Some(file.into());
        self
    }

    /// Sets the recording's `kcore_dir`.
    pub fn with_kcore_dir(mut self, dir: impl Into<PathBuf>) -> SearchPaths {
        self.kcore_dir = Some(dir.into());
        self
    }

    /// `path` under `--symfs` (perf's `__symbol__join_symfs`), or `path` itself without one.
    pub fn under_symfs(&self, path: &Path) -> PathBuf {
        match &self.symfs {
            // `Path::join` with an absolute path would replace the root, so strip the `/`.
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    /// The file perf would read for the binary recorded as `recorded_path` with `build_id`: the
    /// build-id caches, then the recorded path (under symfs). A candidate whose build-id differs from
    /// `build_id` is refused; with no `build_id`, the recorded path is taken as it is.
    pub fn locate(
        &self,
        recorded_path: &Path,
        build_id: Option<&BuildId>,
    ) -> Result<Located, NotFound> {
        let kind = Kind::of(recorded_path);
        let mut tried = Vec::new();
        let mut candidates: Vec<(PathBuf, Origin)> = Vec::new();
        if let Some(id) = build_id {
            for dir in &self.buildid_dirs {
                let link = cache_link(dir, id);
                // perf's old cache layout: the link itself is the file.
                let path = if link.is_file() {
                    link
                } else {
                    link.join(kind.cache_name())
                };
                candidates.push((path, Origin::BuildIdCache(dir.clone())));
            }
        }
        if !is_pseudo(recorded_path) {
            let origin = if self.symfs.is_some() {
                Origin::Symfs
            } else {
                Origin::RecordedPath
            };
            candidates.push((self.under_symfs(recorded_path), origin));
        }
        for (path, origin) in candidates {
            let checked = if kind == Kind::Kallsyms {
                // A kallsyms copy is text, not ELF: nothing to verify.
                if path.is_file() {
                    Ok(None)
                } else {
                    Err(Rejection::Missing)
                }
            } else {
                check_elf(&path, build_id, None, false)
            };
            match checked {
                Ok(found) => {
                    return Ok(Located {
                        path,
                        build_id: found.or(build_id.copied()),
                        origin,
                    })
                }
                Err(rejection) => tried.push(Tried { path, rejection }),
            }
        }
        Err(NotFound {
            recorded_path: recorded_path.to_owned(),
            build_id: build_id.copied(),
            tried,
        })
    }

    /// The separate debug file of `binary` (found for `recorded_path`), if there is one with DWARF
    /// and a matching build-id (and CRC, for a debuglink). `Err` lists what was tried.
    pub fn locate_debug_file(
        &self,
        recorded_path: &Path,
        binary: &Located,
        debuglink: Option<&DebugLink>,
    ) -> Result<Located, NotFound> {
        let id = binary.build_id.as_ref();
        let mut candidates: Vec<(PathBuf, Origin, Option<u32>)> = Vec::new();
        // A debuglink names a file; anything else (a path) is not followed.
        if let Some(link) = debuglink.filter(|l| !l.name.contains('/') && l.name != "..") {
            let mut dirs = Vec::new();
            if !is_pseudo(recorded_path) {
                if let Some(dir) = self.under_symfs(recorded_path).parent() {
                    dirs.push(dir.to_owned());
                }
            }
            // gdb looks beside the file actually opened, which may be elsewhere than perf's place.
            if let Some(dir) = binary.path.parent() {
                if !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_owned());
                }
            }
            let global = self.under_symfs(&self.debug_dir);
            let mut paths = Vec::new();
            for dir in &dirs {
                paths.push(dir.join(&link.name));
                paths.push(dir.join(".debug").join(&link.name));
            }
            if let Some(dir) = recorded_path.parent().filter(|_| !is_pseudo(recorded_path)) {
                paths.push(
                    global
                        .join(dir.strip_prefix("/").unwrap_or(dir))
                        .join(&link.name),
                );
            }
            for p in paths {
                if !candidates.iter().any(|c| c.0 == p) {
                    candidates.push((p, Origin::DebugLink, Some(link.crc)));
                }
            }
        }
        if let Some(id) = id {
            for dir in &self.buildid_dirs {
                let link = cache_link(dir, id);
                if link.is_dir() {
                    candidates.push((link.join("debug"), Origin::BuildIdCache(dir.clone()), None));
                }
            }
        }
        let global = self.under_symfs(&self.debug_dir);
        if !is_pseudo(recorded_path) {
            let rel = recorded_path.strip_prefix("/").unwrap_or(recorded_path);
            let mut fedora = global.join(rel).into_os_string();
            fedora.push(".debug");
            candidates.push((fedora.into(), Origin::DebugDirByPath, None));
            candidates.push((global.join(rel), Origin::DebugDirByPath, None));
        }
        if let Some(id) = id {
            let hex = id.to_string();
            let (head, tail) = hex.split_at(2.min(hex.len()));
            candidates.push((
                global
                    .join(".build-id")
                    .join(head)
                    .join(format!("{tail}.debug")),
                Origin::DebugDirByBuildId,
                None,
            ));
        }
        let mut tried = Vec::new();
        for (path, origin, crc) in candidates {
            // With no build-id, a by-path candidate is taken on trust, as perf takes it.
            match check_elf(&path, id, crc, true) {
                Ok(found) => {
                    return Ok(Located {
                        path,
                        build_id: found,
                        origin,
                    })
                }
                Err(rejection) => tried.push(Tried { path, rejection }),
            }
        }
        Err(NotFound {
            recorded_path: recorded_path.to_owned(),
            build_id: id.copied(),
            tried,
        })
    }
}

/// perf's `build_id_cache__linkname`: `DIR/.build-id/<2 hex>/<rest>`.
fn cache_link(dir: &Path, id: &BuildId) -> PathBuf {
    let hex = id.to_string();
    let (head, tail) = hex.split_at(2.min(hex.len()));
    dir.join(".build-id").join(head).join(tail)
}

/// Checks a candidate ELF file: it exists, parses, has the wanted build-id (when one is wanted), the
/// wanted CRC (when one is given) and, for a debug file, DWARF. Returns the file's build-id.
fn check_elf(
    path: &Path,
    want: Option<&BuildId>,
    crc: Option<u32>,
    need_dwarf: bool,
) -> Result<Option<BuildId>, Rejection> {
    if !path.is_file() {
        return Err(Rejection::Missing);
    }
    let map = map_file(path).map_err(|e| Rejection::NotElf(e.to_string()))?;
    let file = object::File::parse(&*map).map_err(|e| Rejection::NotElf(e.to_string()))?;
    let found = build_id::from_object(&file).map_err(|e| Rejection::NotElf(e.to_string()))?;
    if let Some(want) = want {
        match &found {
            None => return Err(Rejection::NoBuildId),
            Some(found) if !want.matches(found) => return Err(Rejection::BuildIdMismatch(*found)),
            Some(_) => {}
        }
    }
    if let Some(expected) = crc {
        let found = crc32(&map);
        if found != expected {
            return Err(Rejection::CrcMismatch { expected, found });
        }
    }
    if need_dwarf && !has_dwarf(&file) {
        return Err(Rejection::NoDebugInfo);
    }
    Ok(found)
}

/// Whether an object has DWARF line or debug info (in a section with contents, not `NOBITS`).
pub(crate) fn has_dwarf(file: &object::File<'_>) -> bool {
    [".debug_info", ".debug_line"].iter().any(|name| {
        file.section_by_name(name)
            .is_some_and(|s| s.file_range().is_some_and(|(_, size)| size > 0))
    })
}

/// The `.gnu_debuglink` of an object, if it has a well-formed one.
pub(crate) fn debuglink(file: &object::File<'_>) -> Option<DebugLink> {
    let (name, crc) = file.gnu_debuglink().ok()??;
    let name = std::str::from_utf8(name).ok()?.to_owned();
    Some(DebugLink { name, crc })
}

/// CRC-32 as zlib computes it (reflected, polynomial 0xEDB88320), which `.gnu_debuglink` uses.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn symfs_join_keeps_root() {
        let s = SearchPaths::new().with_symfs("/sym");
        assert_eq!(
            s.under_symfs(Path::new("/usr/bin/ls")),
            Path::new("/sym/usr/bin/ls")
        );
        assert_eq!(
            SearchPaths::new().under_symfs(Path::new("/bin/x")),
            Path::new("/bin/x")
        );
    }

    #[test]
    fn cache_kind_from_name() {
        assert_eq!(Kind::of(Path::new("[vdso]")), Kind::Vdso);
        assert_eq!(Kind::of(Path::new("[kernel.kallsyms]")), Kind::Kallsyms);
        assert_eq!(Kind::of(Path::new("/usr/lib/libc.so.6")), Kind::Elf);
    }

    #[test]
    fn not_found_names_everything() {
        let id: BuildId = "abcdef".parse().unwrap();
        let s = SearchPaths::new().with_buildid_dir("/nonexistent-cache");
        let err = s
            .locate(Path::new("/nonexistent/prog"), Some(&id))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/prog"), "{msg}");
        assert!(msg.contains("abcdef"), "{msg}");
        assert!(
            msg.contains("/nonexistent-cache/.build-id/ab/cdef/elf (missing)"),
            "{msg}"
        );
        assert_eq!(err.tried.len(), 2);
    }

    #[test]
    fn pseudo_names_are_not_paths() {
        let err = SearchPaths::new()
            .locate(Path::new("[vdso]"), None)
            .unwrap_err();
        assert!(err.tried.is_empty());
        assert!(err.to_string().contains("nowhere to look"));
    }
}
