//! The kernel's own sources of symbols and code, as perf reads them:
//!
//! - [`Kallsyms`]: the `/proc/kallsyms` text (a copy in the build-id cache, `--kallsyms FILE`, or
//!   `kcore_dir/kallsyms`): symbols only, at run-time addresses.
//! - [`Kcore`]: an ELF core file as `perf record --kcore` copies `/proc/kcore` to
//!   `perf.data/kcore_dir/kcore`: code bytes, its `PT_LOAD` segments at run-time addresses.
//! - [`vmlinux_text`]: a vmlinux is an ordinary [`super::Binary`]; what it needs beyond one is the
//!   relocation between its link-time `_text` and the run-time one perf records as the kernel map's
//!   `pgoff` (perf's `ref_reloc_sym`).

use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::binary::Symbol;
use super::{map_file, Error};

/// Page size used to end the last symbol, as perf's `symbols__fixup_end` does.
const PAGE: u64 = 4096;

/// A kernel symbol table in `/proc/kallsyms` format: `ADDRESS TYPE NAME [\t[MODULE]]` per line.
#[derive(Debug, Clone, Default)]
pub struct Kallsyms {
    /// Function (text) symbols, sorted by address, sizes filled in as perf fills them.
    symbols: Vec<KernelSymbol>,
    /// Whether every address was zero (`kptr_restrict` hides them from unprivileged readers).
    zeroed: bool,
    /// perf's relocation reference symbols (`_text`, `_stext`), kept apart because another
    /// symbol at the same address may be the one kept in `symbols`.
    refs: Vec<(String, u64)>,
}

/// A kallsyms function symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSymbol {
    /// Name and run-time address range.
    pub symbol: Symbol,
    /// The module it belongs to (`None` for the kernel image itself).
    pub module: Option<String>,
}

impl Kallsyms {
    /// Reads a kallsyms file.
    pub fn open(path: &Path) -> Result<Kallsyms, Error> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(Kallsyms::parse(&String::from_utf8_lossy(&text)))
    }

    /// Parses kallsyms text. Lines that do not parse are skipped, as perf's
    /// `kallsyms__parse` skips them: a damaged copy loses those symbols, not the rest.
    pub fn parse(text: &str) -> Kallsyms {
        let mut symbols = Vec::new();
        let mut refs = Vec::new();
        let mut any = false;
        let mut all_zero = true;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(address) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let Some(kind) = kind.chars().next().filter(|_| kind.len() == 1) else {
                continue;
            };
            any = true;
            all_zero &= address == 0;
            if matches!(name, "_text" | "_stext") {
                refs.push((name.to_owned(), address));
            }
            // perf keeps text symbols (`t`/`T`, and `w`/`W` weak ones) as functions.
            if !matches!(kind.to_ascii_lowercase(), 't' | 'w') {
                continue;
            }
            let module = fields
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned);
            symbols.push(KernelSymbol {
                symbol: Symbol {
                    name: name.to_owned(),
                    address,
                    size: 0,
                },
                module,
            });
        }
        // Stable: of symbols at one address the first listed stays first.
        symbols.sort_by_key(|s| s.symbol.address);
        symbols.dedup_by_key(|s| s.symbol.address);
        // kallsyms has no sizes: each symbol ends where the next begins, the last a page on.
        for i in 0..symbols.len() {
            let start = symbols[i].symbol.address;
            let end = match symbols.get(i + 1) {
                Some(next) => next.symbol.address,
                None => (start & !(PAGE - 1)).saturating_add(PAGE),
            };
            symbols[i].symbol.size = end.saturating_sub(start);
        }
        Kallsyms {
            symbols,
            zeroed: any && all_zero,
            refs,
        }
    }

    /// The function symbols, sorted by address.
    pub fn symbols(&self) -> &[KernelSymbol] {
        &self.symbols
    }

    /// Whether the addresses were all hidden as zero (read without privilege): such a table
    /// resolves nothing.
    pub fn is_zeroed(&self) -> bool {
        self.zeroed
    }

    /// The address of the first symbol named `name`, as perf looks up `_text` (its
    /// `ref_reloc_sym`).
    pub fn address_of(&self, name: &str) -> Option<u64> {
        if self.zeroed {
            return None;
        }
        let reference = self.refs.iter().find(|(n, _)| n == name).map(|r| r.1);
        reference.or_else(|| {
            let s = self.symbols.iter().find(|s| s.symbol.name == name)?;
            Some(s.symbol.address)
        })
    }

    /// The symbol holding run-time address `addr` and the offset into it.
    pub fn symbol_at(&self, addr: u64) -> Option<(&KernelSymbol, u64)> {
        if self.zeroed {
            return None;
        }
        let i = self.symbols.partition_point(|s| s.symbol.address <= addr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        (addr < s.symbol.end()).then(|| (s, addr - s.symbol.address))
    }
}

/// A `PT_LOAD` segment of a kcore file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KcoreSegment {
    /// Run-time address of its first byte.
    pub vaddr: u64,
    /// Bytes the file holds for it.
    pub file_size: u64,
    /// Where those bytes are in the file.
    pub file_offset: u64,
}

/// Kernel code bytes from an ELF core file (`/proc/kcore` as perf copies it).
pub struct Kcore {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Segments whose bytes the file holds, sorted by address.
    segments: Vec<KcoreSegment>,
}

impl std::fmt::Debug for Kcore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kcore")
            .field("path", &self.path)
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

impl Kcore {
    /// Opens and checks a kcore file: a 64-bit ELF whose program headers fit in it. Segments
    /// whose bytes run past the end of the file (a copy cut short) are kept up to the end.
    pub fn open(path: &Path) -> Result<Kcore, Error> {
        let map = map_file(path)?;
        let segments = Kcore::parse_segments(&map).map_err(|e| Error::not_elf(path, e))?;
        Ok(Kcore {
            path: path.to_owned(),
            map,
            segments,
        })
    }

    fn parse_segments(data: &[u8]) -> Result<Vec<KcoreSegment>, String> {
        let header = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| e.to_string())?;
        let endian = header.endian().map_err(|e| e.to_string())?;
        if header.e_type(endian) != elf::ET_CORE {
            return Err("not an ELF core file".to_owned());
        }
        let len = data.len() as u64;
        let mut segments: Vec<KcoreSegment> = header
            .program_headers(endian, data)
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|p| p.p_type(endian) == elf::PT_LOAD)
            .filter_map(|p| {
                let file_offset = p.p_offset(endian);
                let file_size = p.p_filesz(endian).min(len.saturating_sub(file_offset));
                (file_size > 0).then(|| KcoreSegment {
                    vaddr: p.p_vaddr(endian),
                    file_size,
                    file_offset,
                })
            })
            .collect();
        segments.sort_by_key(|s| s.vaddr);
        Ok(segments)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segments that hold bytes, by address.
    pub fn segments(&self) -> &[KcoreSegment] {
        &self.segments
    }

    /// The bytes from run-time address `addr` to the end of the segment holding it.
    pub fn code_at(&self, addr: u64) -> Option<&[u8]> {
        let i = self.segments.partition_point(|s| s.vaddr <= addr);
        let s = self.segments.get(i.checked_sub(1)?)?;
        let delta = addr - s.vaddr;
        if delta >= s.file_size {
            return None;
        }
        let start = usize::try_from(s.file_offset.checked_add(delta)?).ok()?;
        let end = usize::try_from(s.file_offset.checked_add(s.file_size)?).ok()?;
        self.map.get(start..end)
    }
}

/// The link-time address of a vmlinux's `_text` (or `_stext`, perf's fallback), from its
/// symbol table. With the run-time `_text` (the kernel map's `pgoff`), a run-time address `ip`
/// is at `ip - pgoff + vmlinux_text` in the file's virtual addresses.
pub fn vmlinux_text(path: &Path) -> Result<Option<u64>, Error> {
    use object::{Object, ObjectSymbol};
    let map = map_file(path)?;
    let file = object::File::parse(&*map).map_err(|e| Error::not_elf(path, e))?;
    for name in ["_text", "_stext"] {
        if let Some(s) = file.symbols().find(|s| s.name() == Ok(name)) {
            return Ok(Some(s.address()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_sizes_modules_and_types() {
        let k = Kallsyms::parse(
            "ffffffff81000000 T _text\n\
             ffffffff81000000 T startup_64\n\
             ffffffff81000100 t helper\n\
             ffffffff81000180 D some_data\n\
             ffffffff81000200 W weak_fn\n\
             garbage line\n\
             zz T bad_addr\n\
             ffffffffc0000000 t mod_fn\t[mymod]\n",
        );
        let names: Vec<_> = k.symbols().iter().map(|s| &*s.symbol.name).collect();
        assert_eq!(names, ["_text", "helper", "weak_fn", "mod_fn"]);
        assert_eq!(k.symbols()[0].symbol.size, 0x100);
        assert_eq!(k.symbols()[3].module.as_deref(), Some("mymod"));
        assert_eq!(k.symbols()[3].symbol.size, 0x1000);
        let (s, off) = k.symbol_at(0xffffffff81000150).unwrap();
        assert_eq!((&*s.symbol.name, off), ("helper", 0x50));
        assert_eq!(k.address_of("_text"), Some(0xffffffff81000000));
        assert!(!k.is_zeroed());
    }

    #[test]
    fn kallsyms_zeroed() {
        let k = Kallsyms::parse("0000000000000000 T _text\n0000000000000000 t x\n");
        assert!(k.is_zeroed());
        assert_eq!(k.symbol_at(0), None);
        assert_eq!(k.address_of("_text"), None);
    }

    #[test]
    fn kcore_rejects_garbage() {
        assert!(Kcore::parse_segments(b"not elf at all").is_err());
        assert!(Kcore::parse_segments(&[0x7f, b'E', b'L', b'F', 2, 1, 1]).is_err());
    }
}
