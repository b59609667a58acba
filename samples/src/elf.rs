//! What the bulk generator needs from a 64-bit little-endian ELF file: the entry point, the executable
//! segments (for MMAP2), the executable sections (where code may be walked) and function starts (from
//! `.symtab`, `.dynsym` and the `.eh_frame_hdr` search table, which lists every FDE's initial location
//! even in a stripped binary).

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{0}: not a 64-bit little-endian x86-64 ELF file")]
    NotElf(String),
    #[error("{name}: malformed ELF: {what}")]
    Malformed { name: String, what: &'static str },
    #[error("{0}: has no executable section")]
    NoCode(String),
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// An `SHF_EXECINSTR` section with file contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

impl Section {
    pub fn contains(&self, vaddr: u64) -> bool {
        (self.addr..self.addr + self.size).contains(&vaddr)
    }
}

/// The code layout of an ELF file; addresses are the file's virtual addresses.
#[derive(Clone, Debug)]
pub struct CodeImage {
    pub entry: u64,
    /// `ET_DYN`: loaded at a base address chosen at run time.
    pub position_independent: bool,
    /// Executable `PT_LOAD` segments.
    pub exec_segments: Vec<Segment>,
    /// Executable sections, sorted by address.
    pub exec_sections: Vec<Section>,
    /// Function start addresses inside the executable sections, sorted, without duplicates.
    pub function_starts: Vec<u64>,
}

const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const SHT_DYNSYM: u32 = 11;
const SHF_EXECINSTR: u64 = 4;
const STT_FUNC: u8 = 2;

struct Reader<'a> {
    bytes: &'a [u8],
    name: &'a str,
}

impl Reader<'_> {
    fn malformed(&self, what: &'static str) -> ElfError {
        ElfError::Malformed {
            name: self.name.to_string(),
            what,
        }
    }

    fn slice(&self, at: u64, len: u64, what: &'static str) -> Result<&[u8], ElfError> {
        let end = at.checked_add(len).ok_or_else(|| self.malformed(what))?;
        self.bytes
            .get(at as usize..end as usize)
            .ok_or_else(|| self.malformed(what))
    }

    fn u16(&self, at: u64, what: &'static str) -> Result<u16, ElfError> {
        Ok(u16::from_le_bytes(
            self.slice(at, 2, what)?.try_into().unwrap(),
        ))
    }

    fn u32(&self, at: u64, what: &'static str) -> Result<u32, ElfError> {
        Ok(u32::from_le_bytes(
            self.slice(at, 4, what)?.try_into().unwrap(),
        ))
    }

    fn u64(&self, at: u64, what: &'static str) -> Result<u64, ElfError> {
        Ok(u64::from_le_bytes(
            self.slice(at, 8, what)?.try_into().unwrap(),
        ))
    }
}

struct SectionHeader {
    /// Offset of the name in the section-name string table.
    name_at: u32,
    name: String,
    type_: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    entsize: u64,
}

/// Reads the code layout of the ELF file `bytes` (`name` is for errors).
pub fn parse(bytes: &[u8], name: &str) -> Result<CodeImage, ElfError> {
    let r = Reader { bytes, name };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfError::NotElf(name.to_string()));
    }
    if r.u16(18, "e_machine")? != EM_X86_64 {
        return Err(ElfError::NotElf(name.to_string()));
    }
    let e_type = r.u16(16, "e_type")?;
    let entry = r.u64(24, "e_entry")?;
    let phoff = r.u64(32, "e_phoff")?;
    let shoff = r.u64(40, "e_shoff")?;
    let phentsize = u64::from(r.u16(54, "e_phentsize")?);
    let phnum = u64::from(r.u16(56, "e_phnum")?);
    let shentsize = u64::from(r.u16(58, "e_shentsize")?);
    let shnum = u64::from(r.u16(60, "e_shnum")?);
    let shstrndx = u64::from(r.u16(62, "e_shstrndx")?);

    let mut exec_segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if r.u32(ph, "program header")? != PT_LOAD || r.u32(ph + 4, "p_flags")? & PF_X == 0 {
            continue;
        }
        exec_segments.push(Segment {
            offset: r.u64(ph + 8, "p_offset")?,
            vaddr: r.u64(ph + 16, "p_vaddr")?,
            filesz: r.u64(ph + 32, "p_filesz")?,
            memsz: r.u64(ph + 40, "p_memsz")?,
        });
    }

    let mut headers = Vec::new();
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        headers.push(SectionHeader {
            name_at: r.u32(sh, "sh_name")?,
            name: String::new(),
            type_: r.u32(sh + 4, "sh_type")?,
            flags: r.u64(sh + 8, "sh_flags")?,
            addr: r.u64(sh + 16, "sh_addr")?,
            offset: r.u64(sh + 24, "sh_offset")?,
            size: r.u64(sh + 32, "sh_size")?,
            entsize: r.u64(sh + 56, "sh_entsize")?,
        });
    }
    let shstr = headers
        .get(shstrndx as usize)
        .map(|h| (h.offset, h.size))
        .ok_or_else(|| r.malformed("e_shstrndx"))?;
    let names = r.slice(shstr.0, shstr.1, "section names")?;
    for h in &mut headers {
        h.name = c_string(names, h.name_at as usize);
    }

    let mut exec_sections: Vec<Section> = headers
        .iter()
        .filter(|h| h.flags & SHF_EXECINSTR != 0 && h.type_ != SHT_NOBITS && h.size > 0)
        .map(|h| Section {
            name: h.name.clone(),
            addr: h.addr,
            offset: h.offset,
            size: h.size,
        })
        .collect();
    for s in &exec_sections {
        r.slice(s.offset, s.size, "executable section beyond the file")?;
    }
    exec_sections.sort_by_key(|s| s.addr);
    if exec_sections.is_empty() {
        return Err(ElfError::NoCode(name.to_string()));
    }

    let mut starts = vec![entry];
    for h in headers
        .iter()
        .filter(|h| matches!(h.type_, SHT_SYMTAB | SHT_DYNSYM) && h.entsize >= 24)
    {
        for i in 0..h.size / h.entsize {
            let sym = h.offset + i * h.entsize;
            let info = r.slice(sym + 4, 1, "st_info")?[0];
            let shndx = r.u16(sym + 6, "st_shndx")?;
            let value = r.u64(sym + 8, "st_value")?;
            if info & 0xf == STT_FUNC && shndx != 0 && value != 0 {
                starts.push(value);
            }
        }
    }
    if let Some(h) = headers.iter().find(|h| h.name == ".eh_frame_hdr") {
        let table = r.slice(h.offset, h.size, ".eh_frame_hdr")?;
        starts.extend(eh_frame_hdr_locations(table, h.addr));
    }
    starts.retain(|&a| exec_sections.iter().any(|s| s.contains(a)));
    starts.sort_unstable();
    starts.dedup();

    Ok(CodeImage {
        entry,
        position_independent: e_type == ET_DYN,
        exec_segments,
        exec_sections,
        function_starts: starts,
    })
}

/// The initial locations in an `.eh_frame_hdr` binary-search table at virtual address `addr`, when it
/// uses the encodings every toolchain writes (version 1, a udata4 count, datarel sdata4 entries);
/// nothing otherwise.
fn eh_frame_hdr_locations(hdr: &[u8], addr: u64) -> Vec<u64> {
    const DW_EH_PE_UDATA4: u8 = 0x03;
    const DW_EH_PE_SDATA4: u8 = 0x0b;
    const DW_EH_PE_PCREL: u8 = 0x10;
    const DW_EH_PE_DATAREL: u8 = 0x30;
    if hdr.len() < 12 || hdr[0] != 1 {
        return Vec::new();
    }
    let (ptr_enc, count_enc, table_enc) = (hdr[1], hdr[2], hdr[3]);
    if ptr_enc != (DW_EH_PE_PCREL | DW_EH_PE_SDATA4)
        || count_enc != DW_EH_PE_UDATA4
        || table_enc != (DW_EH_PE_DATAREL | DW_EH_PE_SDATA4)
    {
        return Vec::new();
    }
    let count = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    hdr[12..]
        .chunks_exact(8)
        .take(count)
        .map(|e| {
            let rel = i32::from_le_bytes(e[..4].try_into().unwrap());
            addr.wrapping_add(rel as i64 as u64)
        })
        .collect()
}

fn c_string(table: &[u8], at: usize) -> String {
    let tail = table.get(at..).unwrap_or(&[]);
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_test_binary_has_code_and_functions() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let image = parse(&bytes, "test").unwrap();
        assert!(image.exec_sections.iter().any(|s| s.name == ".text"));
        assert!(!image.exec_segments.is_empty());
        assert!(
            image.function_starts.len() > 100,
            "{}",
            image.function_starts.len()
        );
        assert!(image.function_starts.contains(&image.entry));
        assert!(image.function_starts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn rejects_non_elf() {
        assert!(matches!(
            parse(b"#!/bin/sh\n", "x"),
            Err(ElfError::NotElf(_))
        ));
        let mut bad = vec![0u8; 64];
        bad[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bad[18] = EM_X86_64 as u8;
        bad[40] = 0xff; // e_shoff far beyond the file
        bad[60] = 1;
        assert!(matches!(parse(&bad, "x"), Err(ElfError::Malformed { .. })));
    }
}
