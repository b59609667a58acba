//! Kernel addresses: kallsyms parsing, kcore and vmlinux code through the recording image's
//! kernel reader, and a recording whose kernel binaries are absent.

#[path = "support/kernel_map.rs"]
mod kernel_map;
#[path = "perf_support.rs"]
mod perf_support;

use std::path::Path;
use std::process::Command;

use kernel_map::kernel_map;
use ptlens::debuginfo::{Kallsyms, Kcore, SearchPaths};
use ptlens::decode::{kernel_symbol_address, vmlinux_address, KernelCode, KERNEL_NAME};
use ptlens::sideband::Map;

#[test]
fn kallsyms_text() {
    let k = Kallsyms::parse(
        "ffffffffa0000000 T _text\n\
         ffffffffa0000000 T _stext\n\
         ffffffffa0000040 t do_thing\n\
         ffffffffa0001000 d data\n\
         ffffffffc0100000 t mod_init\t[snd]\n",
    );
    assert_eq!(k.address_of("_text"), Some(0xffffffffa0000000));
    let (s, off) = k.symbol_at(0xffffffffa0000050).unwrap();
    assert_eq!(
        (&*s.symbol.name, off, s.module.as_deref()),
        ("do_thing", 0x10, None)
    );
    let (s, _) = k.symbol_at(0xffffffffc0100010).unwrap();
    assert_eq!(s.module.as_deref(), Some("snd"));
    // Past the last symbol's page: nothing.
    assert!(k.symbol_at(0xffffffffc0102000).is_none());
}

#[test]
fn kallsyms_live() {
    let Ok(k) = Kallsyms::open(Path::new("/proc/kallsyms")) else {
        eprintln!("skipped: /proc/kallsyms is not readable here");
        return;
    };
    assert!(!k.symbols().is_empty());
    if k.is_zeroed() {
        // kptr_restrict hides addresses from unprivileged readers: nothing resolves.
        eprintln!(
            "/proc/kallsyms addresses are zeroed (no privilege): checked that nothing resolves"
        );
        assert!(k.address_of("_text").is_none());
        return;
    }
    let text = k.address_of("_text").expect("_text in /proc/kallsyms");
    assert!(text >= 1 << 63, "kernel text in the upper half: {text:#x}");
    assert!(k.symbol_at(text).is_some());
}

/// A little-endian ELF64 core file with PT_LOAD segments `(vaddr, bytes)`.
fn elf_core(segments: &[(u64, &[u8])]) -> Vec<u8> {
    let phoff = 64u64;
    let data_start = phoff + 56 * segments.len() as u64;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // entry
    out.extend_from_slice(&phoff.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    out.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    out.extend_from_slice(&(segments.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let mut offset = data_start;
    for (vaddr, bytes) in segments {
        out.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        out.extend_from_slice(&7u32.to_le_bytes()); // RWX
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&vaddr.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // paddr
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&4096u64.to_le_bytes());
        offset += bytes.len() as u64;
    }
    for (_, bytes) in segments {
        out.extend_from_slice(bytes);
    }
    out
}

#[test]
fn kcore_segments_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let text = 0xffffffff9a000000u64;
    let code: Vec<u8> = (0..=255u8).collect();
    let core = elf_core(&[(text, &code), (0xffffffffc0000000, &[0xc3; 16])]);
    std::fs::write(dir.path().join("kcore"), &core).unwrap();

    let kcore = Kcore::open(&dir.path().join("kcore")).unwrap();
    assert_eq!(kcore.segments().len(), 2);
    assert_eq!(kcore.code_at(text + 16).unwrap()[..2], [16, 17]);
    assert!(kcore.code_at(text + 256).is_none());

    // Through the image's kernel reader: kcore holds run-time addresses, no relocation.
    let search = SearchPaths::new().with_kcore_dir(dir.path());
    let kernel = KernelCode::new();
    let map = kernel_map(text, 0x100000);
    let mut buf = [0u8; 8];
    assert_eq!(kernel.read(&search, &map, text + 250, &mut buf), Ok(6));
    assert_eq!(buf[..6], [250, 251, 252, 253, 254, 255]);
    assert_eq!(kernel.read(&search, &map, text + 0x2000, &mut buf), Ok(0));

    // A kcore cut short or not an ELF core: an error, never a panic.
    std::fs::write(dir.path().join("short"), &core[..100]).unwrap();
    assert!(Kcore::open(&dir.path().join("short")).is_err());
    std::fs::write(dir.path().join("text"), b"hello").unwrap();
    assert!(Kcore::open(&dir.path().join("text")).is_err());
}

#[test]
fn no_kernel_source_is_named_missing() {
    let search = SearchPaths::new();
    let kernel = KernelCode::new();
    let mut buf = [0u8; 16];
    let map = kernel_map(0xffffffff81000000, 0);
    assert_eq!(
        kernel.read(&search, &map, 0xffffffff81000010, &mut buf),
        Err(KERNEL_NAME)
    );
}

/// Links a tiny "vmlinux": `_text` at a kernel address, a few known bytes after it.
fn build_vmlinux(dir: &Path) -> Option<std::path::PathBuf> {
    let asm = dir.join("k.s");
    std::fs::write(
        &asm,
        ".section .text\n.globl _text\n_text:\n nop\n.globl start_kernel\n.type start_kernel, @function\nstart_kernel:\n \
         .byte 0x48, 0x31, 0xc0\n ret\n.size start_kernel, 4\n .fill 64, 1, 0xcc\n",
    )
    .unwrap();
    let script = dir.join("k.ld");
    std::fs::write(
        &script,
        "SECTIONS { . = 0xffffffff81000000; .text : { *(.text) } }\n",
    )
    .unwrap();
    let out = dir.join("vmlinux");
    let status = Command::new("gcc")
        .args(["-nostdlib", "-static", "-Wl,--build-id", "-o"])
        .arg(&out)
        .arg("-T")
        .arg(&script)
        .arg(&asm)
        .status()
        .ok()?;
    status.success().then_some(out)
}

#[test]
fn vmlinux_relocated_by_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let Some(vmlinux) = build_vmlinux(dir.path()) else {
        eprintln!("skipped: gcc could not link a test vmlinux");
        return;
    };
    // The linker script starts the image at 0xffffffff81000000; `_text` follows the
    // build-id note there.
    let link_text = ptlens::debuginfo::vmlinux_text(&vmlinux).unwrap().unwrap();
    assert!((0xffffffff81000000..0xffffffff81001000).contains(&link_text));
    // KASLR moved the kernel: perf records the run-time _text as the map's pgoff.
    let run_text = 0xffffffffb9600000u64;
    let map = kernel_map(run_text, 0x1000);
    assert_eq!(
        vmlinux_address(&map, Some(link_text), run_text + 1),
        link_text + 1
    );
    // The index names kernel code by the map's file offset (the run-time address when, as
    // perf records it, `start` is `pgoff`); the report relocates it as the reader does, also
    // for a map starting elsewhere.
    let shifted = Map {
        start: run_text - 0x1000,
        len: 0x3000,
        ..kernel_map(run_text, 0x1000)
    };
    for m in [&map, &shifted] {
        let ip = run_text + 1;
        assert_eq!(
            kernel_symbol_address(m, Some(link_text), m.file_offset(ip)),
            vmlinux_address(m, Some(link_text), ip)
        );
    }
    assert_eq!(
        kernel_symbol_address(&shifted, Some(link_text), shifted.file_offset(run_text + 1)),
        link_text + 1
    );
    // No _text known, or pgoff 0: taken as unrelocated.
    assert_eq!(vmlinux_address(&map, None, run_text + 1), run_text + 1);

    let search = SearchPaths::new().with_vmlinux(&vmlinux);
    let kernel = KernelCode::new();
    let mut buf = [0u8; 5];
    assert_eq!(kernel.read(&search, &map, run_text + 1, &mut buf), Ok(5));
    assert_eq!(buf, [0x48, 0x31, 0xc0, 0xc3, 0xcc]);
    // Past the map's end: nothing, even though the file has bytes there.
    let small = kernel_map(run_text, 2);
    assert_eq!(kernel.read(&search, &small, run_text + 1, &mut buf), Ok(1));
    // Symbols come from the vmlinux itself, at link-time addresses.
    let binary = ptlens::debuginfo::Binary::open(&vmlinux).unwrap();
    let (sym, off) = binary.symbol_at(link_text + 2).unwrap();
    assert_eq!((&*sym.name, off), ("start_kernel", 1));
}

/// The Skylake recording traced kernel code, but neither a vmlinux nor kcore came with it.
#[test]
fn skylake_kernel_is_reported_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_ptlens"))
        .args(["lines", "--format", "json"])
        .arg(perf_support::skylake())
        // An empty build-id cache, so no local ~/.debug copy can stand in.
        .arg("--buildid-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .env("PERF_BUILDID_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kernel = json["binaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["path"] == KERNEL_NAME)
        .expect("the kernel is named among the binaries");
    assert_eq!(kernel["found"], false);
    assert_eq!(kernel["kernel_source"], "missing");
    // Decoding reaches kernel code (the trace starts in it) and fails to read it there: the
    // kernel is reported, but since no kernel instruction could be decoded there are no
    // instructions to count as unresolved. Only the trace-end branch from a kernel address,
    // which the decoder never placed in a block, is counted, under no mapping.
    assert!(kernel["detail"]
        .as_str()
        .unwrap()
        .contains("code reads failed"));
    let unresolved = &json["unresolved"];
    assert_eq!(json["lines"].as_array().map(Vec::len), Some(0));
    let taken = unresolved["no_mapping"]["taken"].as_u64().unwrap()
        + unresolved["binary_not_found"]["taken"].as_u64().unwrap();
    assert!(
        taken >= 1,
        "the kernel branch is counted unresolved: {unresolved}"
    );
}
