//! `debuginfo` against real binaries: a small C program built with gcc at test time, checked
//! against binutils (`addr2line`, `readelf`, `nm`, `objcopy`). Skips, saying why, without gcc.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ptlens::debuginfo::{
    Binary, BinaryCache, BuildId, Error, Frame, Origin, Rejection, SearchPaths,
};

const HELPER_H: &str = r#"
static inline __attribute__((always_inline)) int square(int x)
{
    volatile int y = x;
    return y * x;
}
"#;

const MAIN_C: &str = r#"
#include "helper.h"
int compute(int n);
int main(int argc, char **argv)
{
    int s = 0;
    for (int i = 0; i < argc * 10; i++)
        s += square(i) + compute(i);
    return s & 0xff;
}
"#;

const OTHER_C: &str = r#"
#include "helper.h"
__attribute__((noinline)) int compute(int n)
{
    if (n & 1)
        return square(n + 1);
    return n / 3 + VARIANT;
}
"#;

/// A temp dir holding `prog`, built from the sources above with `-g -O1`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Builds the program, or `None` (having said why) when gcc is not there.
    fn new() -> Option<Fixture> {
        if Command::new("gcc").arg("--version").output().is_err() {
            eprintln!("skipping: gcc is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("helper.h", HELPER_H),
            ("main.c", MAIN_C),
            ("other.c", OTHER_C),
        ] {
            fs::write(dir.path().join(name), text).unwrap();
        }
        let f = Fixture { dir };
        f.build("prog", 0);
        Some(f)
    }

    /// Builds a variant of the program (a different constant, hence a different build-id).
    fn build(&self, name: &str, variant: u32) -> PathBuf {
        self.build_with(name, variant, &[])
    }

    /// Builds a variant with extra compiler flags.
    fn build_with(&self, name: &str, variant: u32, flags: &[&str]) -> PathBuf {
        let out = self.path(name);
        run(Command::new("gcc")
            .current_dir(self.dir.path())
            .args(["-g", "-O1", "-Wl,--build-id=sha1"])
            .arg(format!("-DVARIANT={variant}"))
            .args(flags)
            .args(["main.c", "other.c", "-o"])
            .arg(&out));
        out
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn prog(&self) -> PathBuf {
        self.path("prog")
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The build-id as `readelf -n` prints it.
fn readelf_build_id(path: &Path) -> BuildId {
    let out = run(Command::new("readelf").arg("-n").arg(path));
    let hex = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("readelf shows a build-id");
    hex.trim().parse().unwrap()
}

/// Function symbols (`T`/`t`) and their addresses as `nm` prints them.
fn nm_functions(path: &Path) -> Vec<(String, u64)> {
    run(Command::new("nm").arg(path))
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (addr, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
            matches!(kind, "T" | "t")
                .then(|| (name.to_owned(), u64::from_str_radix(addr, 16).unwrap()))
        })
        .collect()
}

fn symbol_address(bin: &Binary, name: &str) -> u64 {
    bin.symbols()
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no symbol {name}"))
        .address
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `(function, file basename, line)` per frame, innermost first, as addr2line spells them.
fn frame_keys(frames: &[Frame]) -> Vec<(String, String, Option<u32>)> {
    frames
        .iter()
        .map(|f| {
            (
                f.function.clone().unwrap_or_else(|| "??".into()),
                f.file.as_deref().map(basename).unwrap_or("??").to_owned(),
                f.line,
            )
        })
        .collect()
}

/// `addr2line -a -f -i -e BIN ADDR…`, parsed into the same keys per address.
fn binutils_frames(bin: &Path, addrs: &[u64]) -> Vec<Vec<(String, String, Option<u32>)>> {
    let out = run(Command::new("addr2line")
        .args(["-a", "-f", "-i", "-e"])
        .arg(bin)
        .args(addrs.iter().map(|a| format!("{a:#x}"))));
    let mut result: Vec<Vec<_>> = Vec::new();
    let mut lines = out.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("0x") {
            result.push(Vec::new());
            continue;
        }
        let function = line.to_owned();
        let location = lines.next().unwrap();
        // "file:line (discriminator n)", or "??:0" / "??:?" when unknown.
        let location = location.split(" (").next().unwrap();
        let (file, line) = location.rsplit_once(':').unwrap();
        let line = line.parse().ok().filter(|&l| l != 0);
        result
            .last_mut()
            .unwrap()
            .push((function, basename(file).to_owned(), line));
    }
    result
}

#[test]
fn build_id_agrees_with_readelf() {
    let Some(f) = Fixture::new() else { return };
    let want = readelf_build_id(&f.prog());
    assert_eq!(want.as_bytes().len(), 20);
    assert_eq!(BuildId::from_elf_file(&f.prog()).unwrap(), Some(want));
    let bin = Binary::open(&f.prog()).unwrap();
    assert_eq!(bin.build_id(), Some(&want));
}

#[test]
fn symbols_agree_with_nm() {
    let Some(f) = Fixture::new() else { return };
    let bin = Binary::open(&f.prog()).unwrap();
    let nm = nm_functions(&f.prog());
    for name in ["main", "compute"] {
        let (_, addr) = nm.iter().find(|(n, _)| n == name).unwrap();
        let (sym, offset) = bin.symbol_at(*addr).unwrap();
        assert_eq!((sym.name.as_str(), offset), (name, 0));
        assert!(sym.size > 0);
        let (sym, offset) = bin.symbol_at(addr + 1).unwrap();
        assert_eq!((sym.name.as_str(), offset), (name, 1));
    }
    assert!(bin
        .symbols()
        .windows(2)
        .all(|w| w[0].address < w[1].address));
    assert!(bin.symbol_at(0).is_none());
}

#[test]
fn segments_and_code_bytes() {
    let Some(f) = Fixture::new() else { return };
    let bin = Binary::open(&f.prog()).unwrap();
    let main = symbol_address(&bin, "main");
    let offset = bin.vaddr_to_file_offset(main).unwrap();
    assert_eq!(bin.file_offset_to_vaddr(offset), Some(main));
    let file = fs::read(f.prog()).unwrap();
    let code = bin.code_at(main).unwrap();
    assert_eq!(code[..16], file[offset as usize..offset as usize + 16]);
    assert!(bin
        .executable_segments()
        .any(|s| s.vaddr <= main && main < s.vaddr + s.mem_size));
    // Addresses outside every executable segment have no code.
    assert!(bin.code_at(0).is_none());
    assert!(bin.code_at(u64::MAX).is_none());
}

#[test]
fn frames_agree_with_binutils_addr2line() {
    let Some(f) = Fixture::new() else { return };
    let bin = Binary::open(&f.prog()).unwrap();
    let mut addrs = Vec::new();
    for name in ["main", "compute"] {
        let sym = bin
            .symbols()
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .clone();
        // Every line-table row start in the function, plus an address inside a row.
        for row in bin.line_rows(sym.address..sym.end()).unwrap() {
            if row.start >= sym.address && row.start < sym.end() {
                addrs.push(row.start);
                if row.end - row.start > 1 {
                    addrs.push(row.start + 1);
                }
            }
        }
    }
    assert!(addrs.len() >= 6, "too few rows: {addrs:x?}");
    let theirs = binutils_frames(&f.prog(), &addrs);
    assert_eq!(theirs.len(), addrs.len());
    let mut inlined = 0;
    for (addr, theirs) in addrs.iter().zip(theirs) {
        let ours = frame_keys(&bin.frames(*addr).unwrap());
        assert_eq!(ours, theirs, "at {addr:#x}");
        assert!(ours
            .iter()
            .all(|(func, file, line)| func != "??" && file != "??" && line.is_some()));
        inlined += usize::from(ours.len() > 1);
    }
    assert!(inlined > 0, "no inlined address among {addrs:x?}");
}

#[test]
fn inline_chain_through_the_header() {
    let Some(f) = Fixture::new() else { return };
    let bin = Binary::open(&f.prog()).unwrap();
    let compute = bin
        .symbols()
        .iter()
        .find(|s| s.name == "compute")
        .unwrap()
        .clone();
    let rows = bin.line_rows(compute.address..compute.end()).unwrap();
    assert!(rows.windows(2).all(|w| w[0].start <= w[1].start));
    let files: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.file.as_deref())
        .map(basename)
        .collect();
    assert!(
        files.contains(&"other.c") && files.contains(&"helper.h"),
        "{files:?}"
    );
    let inlined = rows
        .iter()
        .find(|r| r.file.as_deref().map(basename) == Some("helper.h"))
        .unwrap();
    let frames = bin.frames(inlined.start).unwrap();
    let keys = frame_keys(&frames);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0].0, "square");
    assert_eq!(keys[0].1, "helper.h");
    assert_eq!(keys[1].0, "compute");
    assert_eq!(keys[1].1, "other.c");
    // The call site: `return square(n + 1);` is line 6 of other.c.
    assert_eq!(keys[1].2, Some(6));
    // The line table gives the innermost location, as the first frame does.
    let row = bin.line_at(inlined.start).unwrap().unwrap();
    assert_eq!(
        (row.file.as_deref().map(basename), row.line),
        (Some("helper.h"), frames[0].line)
    );
    // Rows of one query share one allocation per file.
    let helper: Vec<&Arc<str>> = rows
        .iter()
        .filter_map(|r| r.file.as_ref())
        .filter(|f| basename(f) == "helper.h")
        .collect();
    assert!(helper.windows(2).all(|w| Arc::ptr_eq(w[0], w[1])));
}

#[test]
fn build_id_cache_file_and_directory_forms() {
    let Some(f) = Fixture::new() else { return };
    let id = readelf_build_id(&f.prog());
    let hex = id.to_string();
    let recorded = Path::new("/nonexistent/bin/prog");

    // Old layout: the link is the file.
    let old = f.path("old-cache");
    fs::create_dir_all(old.join(".build-id").join(&hex[..2])).unwrap();
    let link = old.join(".build-id").join(&hex[..2]).join(&hex[2..]);
    fs::copy(f.prog(), &link).unwrap();
    let found = SearchPaths::new()
        .with_buildid_dir(&old)
        .locate(recorded, Some(&id))
        .unwrap();
    assert_eq!(found.path, link);
    assert_eq!(found.origin, Origin::BuildIdCache(old.clone()));

    // Current layout: a directory holding `elf` (or `vdso` for `[vdso]`).
    let new = f.path("new-cache");
    let dir = new.join(".build-id").join(&hex[..2]).join(&hex[2..]);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(f.prog(), dir.join("elf")).unwrap();
    fs::copy(f.prog(), dir.join("vdso")).unwrap();
    let search = SearchPaths::new()
        .with_buildid_dir(f.path("empty-cache"))
        .with_buildid_dir(&new);
    let found = search.locate(recorded, Some(&id)).unwrap();
    assert_eq!(found.path, dir.join("elf"));
    assert_eq!(found.build_id, Some(id));
    let vdso = search.locate(Path::new("[vdso]"), Some(&id)).unwrap();
    assert_eq!(vdso.path, dir.join("vdso"));

    // The cache loads it, and hands out the same binary twice, also across threads.
    let cache = BinaryCache::new(search);
    let a = cache.get(recorded, Some(&id)).unwrap();
    let b = std::thread::scope(|s| {
        s.spawn(|| cache.get(recorded, Some(&id)).unwrap())
            .join()
            .unwrap()
    });
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!a.frames(symbol_address(&a, "main")).unwrap().is_empty());
}

#[test]
fn symfs_is_searched_under_its_root() {
    let Some(f) = Fixture::new() else { return };
    let id = readelf_build_id(&f.prog());
    let root = f.path("symfs");
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::copy(f.prog(), root.join("usr/bin/prog")).unwrap();
    let search = SearchPaths::new().with_symfs(&root);
    let found = search
        .locate(Path::new("/usr/bin/prog"), Some(&id))
        .unwrap();
    assert_eq!(found.path, root.join("usr/bin/prog"));
    assert_eq!(found.origin, Origin::Symfs);
    // Without a build-id the file is taken as it is.
    let found = search.locate(Path::new("/usr/bin/prog"), None).unwrap();
    assert_eq!(found.build_id, Some(id));
}

#[test]
fn build_id_mismatch_at_the_recorded_path_is_refused() {
    let Some(f) = Fixture::new() else { return };
    let id = readelf_build_id(&f.prog());
    let other = f.build("prog2", 1);
    let other_id = readelf_build_id(&other);
    assert_ne!(id, other_id);
    let cache_dir = f.path("cache");
    let search = SearchPaths::new().with_buildid_dir(&cache_dir);
    let err = search.locate(&other, Some(&id)).unwrap_err();
    assert_eq!(err.recorded_path, other);
    let last = err.tried.last().unwrap();
    assert_eq!(last.path, other);
    assert_eq!(last.rejection, Rejection::BuildIdMismatch(other_id));
    let msg = err.to_string();
    assert!(msg.contains(&other.display().to_string()), "{msg}");
    assert!(msg.contains(&id.to_string()), "{msg}");
    assert!(msg.contains("build-id mismatch"), "{msg}");
    assert!(msg.contains(".build-id"), "{msg}");
    // The cache reports it by name, as an error.
    let cache = BinaryCache::new(search);
    match cache.get(&other, Some(&id)) {
        Err(Error::NotFound(nf)) => assert_eq!(nf.recorded_path, other),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // The matching id is accepted at the same path.
    assert_eq!(
        cache.get(&other, Some(&other_id)).unwrap().build_id(),
        Some(&other_id)
    );
}

/// `objcopy --only-keep-debug` into `debug`, then a copy with everything stripped at `stripped`.
fn split_debug(prog: &Path, stripped: &Path, debug: &Path, add_link: bool) {
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(prog)
        .arg(debug));
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(prog)
        .arg(stripped));
    if add_link {
        run(Command::new("objcopy")
            .current_dir(debug.parent().unwrap())
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(stripped));
    }
}

#[test]
fn debuglink_finds_the_debug_file_and_checks_its_crc() {
    let Some(f) = Fixture::new() else { return };
    let id = readelf_build_id(&f.prog());
    let bin_dir = f.path("root/bin");
    fs::create_dir_all(bin_dir.join(".debug")).unwrap();
    let stripped = bin_dir.join("prog");
    let debug = bin_dir.join(".debug/prog.debug");
    split_debug(&f.prog(), &stripped, &debug, true);

    // Stripped alone: no symbols, no lines, no panic.
    let bare = Binary::open(&stripped).unwrap();
    assert!(bare.symbols().iter().all(|s| s.name != "compute"));
    assert!(bare.frames(0x1000).unwrap().is_empty());

    let search = SearchPaths::new().with_debug_dir(f.path("no-global-debug"));
    let cache = BinaryCache::new(search.clone());
    let bin = cache.get(&stripped, Some(&id)).unwrap();
    assert_eq!(bin.path(), stripped);
    assert_eq!(bin.debug_path(), Some(debug.as_path()));
    // Symbols come from the debug file's table, code from the stripped binary.
    let compute = symbol_address(&bin, "compute");
    assert!(bin.code_at(compute).is_some());
    let reference = Binary::open(&f.prog()).unwrap();
    assert_eq!(
        bin.frames(compute).unwrap(),
        reference.frames(compute).unwrap()
    );

    // A debug file whose CRC disagrees is refused; the binary still loads, without lines.
    let mut bytes = fs::read(&debug).unwrap();
    bytes.push(0);
    fs::write(&debug, bytes).unwrap();
    let located = search.locate(&stripped, Some(&id)).unwrap();
    let err = search
        .locate_debug_file(
            &stripped,
            &located,
            Some(&ptlens::debuginfo::DebugLink {
                name: "prog.debug".into(),
                crc: 0,
            }),
        )
        .unwrap_err();
    assert!(err
        .tried
        .iter()
        .any(|t| t.path == debug
            && matches!(t.rejection, Rejection::CrcMismatch { expected: 0, .. })));
    let bin = Binary::load(&search, &stripped, &located).unwrap();
    assert_eq!(bin.debug_path(), None);
    assert!(bin.frames(compute).unwrap().is_empty());
    assert!(bin.line_rows(0..u64::MAX).unwrap().is_empty());
}

#[test]
fn debug_file_by_build_id_in_the_global_debug_dir() {
    let Some(f) = Fixture::new() else { return };
    let id = readelf_build_id(&f.prog());
    let hex = id.to_string();
    let global = f.path("usr-lib-debug");
    let by_id = global.join(".build-id").join(&hex[..2]);
    fs::create_dir_all(&by_id).unwrap();
    let debug = by_id.join(format!("{}.debug", &hex[2..]));
    let stripped = f.path("stripped");
    split_debug(&f.prog(), &stripped, &debug, false);
    let search = SearchPaths::new().with_debug_dir(&global);
    let bin = BinaryCache::new(search).get(&stripped, Some(&id)).unwrap();
    assert_eq!(bin.debug_path(), Some(debug.as_path()));
    let main = symbol_address(&bin, "main");
    assert_eq!(
        bin.frames(main).unwrap()[0].function.as_deref(),
        Some("main")
    );
}

#[test]
fn not_elf_and_empty_files_are_errors_naming_the_file() {
    let Some(f) = Fixture::new() else { return };
    let text = f.path("main.c");
    let err = Binary::open(&text).unwrap_err();
    assert!(matches!(err, Error::NotElf { .. }), "{err:?}");
    assert!(err.to_string().contains("main.c"), "{err}");
    let empty = f.path("empty");
    fs::write(&empty, b"").unwrap();
    assert!(Binary::open(&empty)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let missing = f.path("missing");
    assert!(matches!(Binary::open(&missing), Err(Error::Io { .. })));
    assert!(BuildId::from_elf_file(&text).is_err());
}

#[test]
fn compressed_debug_sections_read_the_same() {
    let Some(f) = Fixture::new() else { return };
    let compressed = f.build_with("prog-gz", 0, &["-gz=zlib"]);
    let sections = run(Command::new("readelf").arg("-S").arg("-W").arg(&compressed));
    let plain = Binary::open(&f.prog()).unwrap();
    let packed = Binary::open(&compressed).unwrap();
    let compute = symbol_address(&plain, "compute");
    assert_eq!(symbol_address(&packed, "compute"), compute);
    let frames = plain.frames(compute).unwrap();
    assert!(!frames.is_empty());
    assert_eq!(packed.frames(compute).unwrap(), frames);
    let rows = |b: &Binary| b.line_rows(compute..compute + 64).unwrap();
    assert_eq!(rows(&packed), rows(&plain));
    // Only meaningful when the toolchain did compress (flag C on .debug_info).
    if !sections
        .lines()
        .any(|l| l.contains(".debug_info") && l.contains(" C "))
    {
        eprintln!("note: gcc -gz left .debug_info uncompressed here");
    }
}

#[test]
fn kallsyms_copy_in_the_cache_is_found_without_elf_checks() {
    let Some(f) = Fixture::new() else { return };
    let id: BuildId = "00112233445566778899aabbccddeeff00112233".parse().unwrap();
    let dir = f.path("cache/.build-id/00/112233445566778899aabbccddeeff00112233");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("kallsyms"), "ffffffff81000000 T _text\n").unwrap();
    let search = SearchPaths::new().with_buildid_dir(f.path("cache"));
    let found = search
        .locate(Path::new("[kernel.kallsyms]"), Some(&id))
        .unwrap();
    assert_eq!(found.path, dir.join("kallsyms"));
    // Loading it as a binary is a clear error, not a panic.
    let err = BinaryCache::new(search)
        .get(Path::new("[kernel.kallsyms]"), Some(&id))
        .unwrap_err();
    assert!(matches!(err, Error::NotElf { .. }), "{err:?}");
}

#[test]
fn one_binary_answers_queries_from_several_threads() {
    let Some(f) = Fixture::new() else { return };
    let bin = Arc::new(Binary::open(&f.prog()).unwrap());
    let compute = bin
        .symbols()
        .iter()
        .find(|s| s.name == "compute")
        .unwrap()
        .clone();
    let expected = bin.line_rows(compute.address..compute.end()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for addr in compute.address..compute.end() {
                    let frames = bin.frames(addr).unwrap();
                    assert!(frames.last().unwrap().function.as_deref() == Some("compute"));
                }
                assert_eq!(
                    bin.line_rows(compute.address..compute.end()).unwrap(),
                    expected
                );
            });
        }
    });
}
