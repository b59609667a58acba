//! Kernel code in the line report: an index counted at run-time kernel addresses (KASLR moved
//! the kernel), aggregated through a vmlinux (lines and functions, checked against binutils'
//! `addr2line -f` at the relocated addresses), a kallsyms table (functions only), or nothing.
//!
//! The committed samples trace user code only, so the index is built through the builder's
//! public API with the addresses a decode of a kernel trace would count.

#[path = "support/kernel_map.rs"]
mod kernel_map;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ptlens::debuginfo::{BinaryCache, BuildId, SearchPaths};
use ptlens::decode::KERNEL_NAME;
use ptlens::index::{
    aggregate_with_kernel, BinaryId, BinaryKey, CodeAddr, Index, IndexBuilder, InsnShape,
    KernelSource, LineReport, Naming,
};
use ptlens::sideband::Map;

/// Where KASLR put `_text` at run time (the kernel map's `pgoff`).
const RUN_TEXT: u64 = 0xffffffffb9600000;

/// perf's kernel map: `[kernel.kallsyms]_text`, `pgoff` the run-time `_text`.
fn kernel_map() -> Map {
    kernel_map::kernel_map(RUN_TEXT, 0x1000000)
}

/// A vmlinux stand-in with DWARF: two functions (one called from a loop), `_text` at the
/// link-time base, linked as the kernel is (no PIC, kernel code model).
fn build_vmlinux(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("k.c");
    std::fs::write(
        &src,
        "static int __attribute__((noinline)) add(int a, int b)\n{\n\treturn a + b;\n}\n\n\
         int start_kernel(int n)\n{\n\tint s = 0;\n\tfor (int i = 0; i < n; i++)\n\
         \t\ts = add(s, i);\n\treturn s;\n}\n",
    )
    .unwrap();
    let script = dir.join("k.ld");
    std::fs::write(
        &script,
        "SECTIONS { . = 0xffffffff81000000; _text = .; .text : { *(.text*) } }\n",
    )
    .unwrap();
    let out = dir.join("vmlinux");
    let status = Command::new("gcc")
        .args([
            "-g",
            "-O1",
            "-fno-pic",
            "-mcmodel=kernel",
            "-ffreestanding",
            "-fno-asynchronous-unwind-tables",
            "-nostdlib",
            "-static",
            "-Wl,--build-id",
            "-o",
        ])
        .arg(&out)
        .arg("-T")
        .arg(&script)
        .arg(&src)
        .status()
        .ok()?;
    status.success().then_some(out)
}

/// The instructions of the stand-in as `objdump -d` lists them: (link-time address, size).
fn instructions(vmlinux: &Path) -> Option<Vec<(u64, u8)>> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(vmlinux)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let addrs: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.split_once(":\t")?;
            (!rest.trim().is_empty()).then_some(())?;
            u64::from_str_radix(addr.trim(), 16).ok()
        })
        .collect();
    // The last one is a `ret` (one byte); the others end where the next begins.
    let mut insns: Vec<(u64, u8)> = addrs
        .windows(2)
        .map(|w| (w[0], u8::try_from(w[1] - w[0]).unwrap()))
        .collect();
    insns.push((*addrs.last()?, 1));
    Some(insns)
}

/// `addr2line -f -e VMLINUX` at each address: (function, file, line).
fn addr2line(vmlinux: &Path, addrs: &[u64]) -> Option<Vec<(String, String, u32)>> {
    let out = Command::new("addr2line")
        .arg("-f")
        .arg("-e")
        .arg(vmlinux)
        .args(addrs.iter().map(|a| format!("{a:#x}")))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|pair| {
            // `FILE:LINE` or `FILE:LINE (discriminator N)`.
            let location = pair[1].split(" (").next()?;
            let (file, line) = location.rsplit_once(':')?;
            Some((pair[0].to_owned(), file.to_owned(), line.parse().ok()?))
        })
        .collect()
}

fn kernel_key(id: BinaryId) -> BinaryKey {
    BinaryKey { machine_pid: 0, id }
}

/// An index of kernel code: the instruction at run-time address `ip` executed `times(i)`
/// times (its own block each time, entered by a branch), jcc shapes where objdump says so.
fn kernel_index(key: &BinaryKey, insns: &[(u64, u8)]) -> Index {
    let mut builder = IndexBuilder::new();
    for (i, &(ip, size)) in insns.iter().enumerate() {
        let at = CodeAddr {
            binary: key.clone(),
            offset: kernel_map().file_offset(ip),
        };
        let shape = InsnShape { size, branch: None };
        for _ in 0..=i {
            builder.count_block((1, 1), &at, &[(0, shape)]);
        }
        builder.count_entry((1, 1), &at);
        if i % 3 == 0 {
            builder.count_taken((1, 1), Some(&at), false, None);
        }
    }
    let mut index = builder.finish();
    index
        .paths
        .insert(key.clone(), Arc::from("[kernel.kallsyms]_text"));
    index
}

fn run_time(link_text: u64, vaddr: u64) -> u64 {
    vaddr - link_text + RUN_TEXT
}

/// Per (file, line) and per function, the instructions counted.
type Expected = (BTreeMap<(String, u32), u64>, BTreeMap<String, u64>);

fn report_counts(report: &LineReport) -> Expected {
    let lines = report
        .lines
        .iter()
        .map(|l| ((l.file.to_string(), l.line), l.instructions))
        .collect();
    let functions = report
        .functions
        .iter()
        .map(|f| {
            assert_eq!(f.binary, KERNEL_NAME);
            (f.name.clone(), f.instructions)
        })
        .collect();
    (lines, functions)
}

struct StandIn {
    _dir: tempfile::TempDir,
    vmlinux: PathBuf,
    link_text: u64,
    /// Link-time address and size of each instruction.
    insns: Vec<(u64, u8)>,
}

fn stand_in() -> Option<StandIn> {
    let dir = tempfile::tempdir().unwrap();
    let Some(vmlinux) = build_vmlinux(dir.path()) else {
        eprintln!("skipped: gcc could not link a test vmlinux");
        return None;
    };
    let Some(insns) = instructions(&vmlinux) else {
        eprintln!("skipped: objdump is not available");
        return None;
    };
    let link_text = ptlens::debuginfo::vmlinux_text(&vmlinux).unwrap().unwrap();
    Some(StandIn {
        _dir: dir,
        vmlinux,
        link_text,
        insns,
    })
}

impl StandIn {
    fn run_time_insns(&self) -> Vec<(u64, u8)> {
        self.insns
            .iter()
            .map(|&(a, s)| (run_time(self.link_text, a), s))
            .collect()
    }

    /// What binutils says of the link-time addresses, weighted as `kernel_index` counts.
    fn expected(&self) -> Option<Expected> {
        let addrs: Vec<u64> = self.insns.iter().map(|i| i.0).collect();
        let Some(frames) = addr2line(&self.vmlinux, &addrs) else {
            eprintln!("skipped: addr2line is not available");
            return None;
        };
        let mut lines = BTreeMap::new();
        let mut functions = BTreeMap::new();
        for (i, (function, file, line)) in frames.into_iter().enumerate() {
            let times = i as u64 + 1;
            *lines.entry((file, line)).or_default() += times;
            *functions.entry(function).or_default() += times;
        }
        Some((lines, functions))
    }
}

fn check_vmlinux_report(s: &StandIn, report: &LineReport, index: &Index) {
    let Some(expected) = s.expected() else {
        return;
    };
    assert_eq!(report_counts(report), expected);
    assert!(expected.0.len() >= 5, "several lines: {expected:?}");
    assert_eq!(report.binaries.len(), 1);
    let b = &report.binaries[0];
    assert_eq!(b.path, KERNEL_NAME);
    assert!(b.found);
    assert_eq!(b.kernel_source, Some(KernelSource::Vmlinux));
    assert!(b.detail.contains("vmlinux"), "{}", b.detail);
    // Every count has its line, and the branch samples are there too.
    let u = &report.unresolved;
    assert_eq!(u.no_line.instructions + u.binary_not_found.instructions, 0);
    let taken: u64 = report.lines.iter().map(|l| l.taken).sum();
    assert_eq!(taken, index.totals().taken);
    // A function's first instruction counts its calls: the i-th instruction ran i + 1 times.
    let binary = ptlens::debuginfo::Binary::open(&s.vmlinux).unwrap();
    for f in &report.functions {
        let first = s
            .insns
            .iter()
            .position(|i| {
                binary
                    .symbol_at(i.0)
                    .is_some_and(|(sym, at)| sym.name == f.name && at == 0)
            })
            .unwrap();
        assert_eq!(f.calls, first as u64 + 1, "{}", f.name);
    }
}

#[test]
fn vmlinux_given_gives_addr2line_lines_and_functions() {
    let Some(s) = stand_in() else { return };
    let key = kernel_key(BinaryId::Path(Arc::from("[kernel.kallsyms]_text")));
    let index = kernel_index(&key, &s.run_time_insns());
    let binaries = BinaryCache::new(SearchPaths::new().with_vmlinux(&s.vmlinux));
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    check_vmlinux_report(&s, &report, &index);
}

#[test]
fn vmlinux_found_by_build_id() {
    let Some(s) = stand_in() else { return };
    let id = BuildId::from_elf_file(&s.vmlinux).unwrap().unwrap();
    // perf's standard path /boot/vmlinux, under --symfs.
    let symfs = tempfile::tempdir().unwrap();
    std::fs::create_dir(symfs.path().join("boot")).unwrap();
    std::fs::copy(&s.vmlinux, symfs.path().join("boot/vmlinux")).unwrap();
    let key = kernel_key(BinaryId::BuildId(id));
    let index = kernel_index(&key, &s.run_time_insns());
    let binaries = BinaryCache::new(SearchPaths::new().with_symfs(symfs.path()));
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    check_vmlinux_report(&s, &report, &index);
    assert_eq!(report.binaries[0].build_id, Some(id.to_string()));

    // Or added to a build-id cache (`perf buildid-cache -a`), kept there as `elf`.
    let cache = tempfile::tempdir().unwrap();
    let hex = id.to_string();
    let entry = cache
        .path()
        .join(".build-id")
        .join(&hex[..2])
        .join(&hex[2..]);
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::copy(&s.vmlinux, entry.join("elf")).unwrap();
    let cached = BinaryCache::new(SearchPaths::new().with_buildid_dir(cache.path()));
    let report = aggregate_with_kernel(&index, &cached, Naming::Dwarf, &[kernel_map()]);
    check_vmlinux_report(&s, &report, &index);

    // Another kernel's build-id: the file is not taken, and nothing else resolves it.
    let other = kernel_key(BinaryId::BuildId(BuildId::new(&[7; 20]).unwrap()));
    let index = kernel_index(&other, &s.run_time_insns());
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    assert_eq!(
        report.binaries[0].kernel_source,
        Some(KernelSource::Missing)
    );
    assert!(report.lines.is_empty());
}

/// A kallsyms text of another boot (its own KASLR slide) with the stand-in's functions: perf
/// relocates it by its `_text` against the map's.
fn kallsyms_text(s: &StandIn, boot_text: u64) -> String {
    let binary = ptlens::debuginfo::Binary::open(&s.vmlinux).unwrap();
    let mut text = format!("{boot_text:016x} T _text\n");
    for name in ["add", "start_kernel"] {
        let sym = s
            .insns
            .iter()
            .find_map(|i| binary.symbol_at(i.0).filter(|(sym, _)| sym.name == name))
            .unwrap()
            .0;
        let at = sym.address - s.link_text + boot_text;
        text.push_str(&format!("{at:016x} t {name}\n"));
    }
    text.push_str(&format!("{:016x} D some_data\n", boot_text + 0x100000));
    text
}

fn check_kallsyms_report(report: &LineReport, index: &Index, path: &Path, s: &StandIn) {
    // Functions by kallsyms name, as addr2line names them; no lines.
    let (_, functions) = s.expected().unwrap_or_default();
    let (lines, ours) = report_counts(report);
    assert!(lines.is_empty());
    if !functions.is_empty() {
        assert_eq!(ours, functions);
    }
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        [&"add".to_owned(), &"start_kernel".to_owned()]
    );
    let total = index.totals();
    let u = &report.unresolved;
    assert_eq!(u.no_line.instructions, total.instructions);
    assert_eq!(u.no_line.taken, total.taken);
    assert_eq!(u.binary_not_found.instructions, 0);
    let b = &report.binaries[0];
    assert!(b.found);
    assert_eq!(b.kernel_source, Some(KernelSource::Kallsyms));
    assert!(b.detail.contains(&*path.to_string_lossy()), "{}", b.detail);
}

#[test]
fn kallsyms_gives_functions_only() {
    let Some(s) = stand_in() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = kernel_key(BinaryId::Path(Arc::from("[kernel.kallsyms]_text")));
    let index = kernel_index(&key, &s.run_time_insns());

    // --kallsyms FILE.
    let file = dir.path().join("kallsyms");
    std::fs::write(&file, kallsyms_text(&s, 0xffffffff90000000)).unwrap();
    let binaries = BinaryCache::new(SearchPaths::new().with_kallsyms(&file));
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    check_kallsyms_report(&report, &index, &file, &s);

    // The recording's kcore_dir/kallsyms (perf record --kcore), same boot as the trace.
    let kcore_dir = dir.path().join("kcore_dir");
    std::fs::create_dir(&kcore_dir).unwrap();
    let file = kcore_dir.join("kallsyms");
    std::fs::write(&file, kallsyms_text(&s, RUN_TEXT)).unwrap();
    let binaries = BinaryCache::new(SearchPaths::new().with_kcore_dir(&kcore_dir));
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    check_kallsyms_report(&report, &index, &file, &s);

    // perf's own copy in the build-id cache, for a kernel known by build-id.
    let id = BuildId::new(&[0x5e; 20]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hex = id.to_string();
    let entry = cache
        .path()
        .join(".build-id")
        .join(&hex[..2])
        .join(&hex[2..]);
    std::fs::create_dir_all(&entry).unwrap();
    let file = entry.join("kallsyms");
    std::fs::write(&file, kallsyms_text(&s, 0xffffffff88000000)).unwrap();
    let index = kernel_index(&kernel_key(BinaryId::BuildId(id)), &s.run_time_insns());
    let binaries = BinaryCache::new(SearchPaths::new().with_buildid_dir(cache.path()));
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    check_kallsyms_report(&report, &index, &file, &s);

    // Addresses hidden as zeros resolve nothing: the kernel is missing.
    std::fs::write(
        kcore_dir.join("kallsyms"),
        "0000000000000000 T _text\n0000000000000000 t add\n",
    )
    .unwrap();
    let binaries = BinaryCache::new(SearchPaths::new().with_kcore_dir(&kcore_dir));
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    assert_eq!(
        report.binaries[0].kernel_source,
        Some(KernelSource::Missing)
    );
    assert!(report.binaries[0].detail.contains("zeros"));
}

#[test]
fn no_kernel_source_counts_unresolved() {
    // Addresses as any kernel trace has them; no file is needed.
    let insns: Vec<(u64, u8)> = (0..20u64).map(|i| (RUN_TEXT + 0x40 + i * 3, 3)).collect();
    let key = kernel_key(BinaryId::Path(Arc::from("[kernel.kallsyms]_text")));
    let index = kernel_index(&key, &insns);
    let binaries = BinaryCache::new(SearchPaths::new());
    let report = aggregate_with_kernel(&index, &binaries, Naming::Dwarf, &[kernel_map()]);
    assert!(report.lines.is_empty() && report.functions.is_empty());
    let total = index.totals();
    let u = &report.unresolved;
    assert_eq!(u.binary_not_found.instructions, total.instructions);
    assert_eq!(u.binary_not_found.taken, total.taken);
    assert_eq!(u.no_line.instructions, 0);
    assert_eq!(report.binaries.len(), 1);
    let b = &report.binaries[0];
    assert_eq!((&*b.path, b.found), (KERNEL_NAME, false));
    assert_eq!(b.kernel_source, Some(KernelSource::Missing));
}
