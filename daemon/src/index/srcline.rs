//! perf's file names for source lines, where they differ from the DWARF's.
//!
//! perf's srcline comes from binutils (`addr2line`, or libbfd). binutils 2.40 starts each
//! line-table sequence of a DWARF 5 unit with the file name of entry 0 (the primary source),
//! while the file register is 1 as the standard says; rows before the sequence's first
//! `DW_LNS_set_file` are thus named by entry 0 even where entry 1 is another file (a header or
//! an `#include`d `.c` holding an out-of-line function: glibc's `handle_amd` from
//! `dl-cacheinfo.h` is printed as `dl-get-cpu-features.c`). gcc usually makes entry 1 a copy
//! of entry 0, so only such units differ. [`Naming::Perf`] reproduces that, to compare with
//! `perf script -F srcline`; the default names what the DWARF says.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use object::{Object, ObjectSection};

use crate::debuginfo::Binary;

/// How source files are named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Naming {
    /// As the line table says (what a reader wants to open).
    #[default]
    Dwarf,
    /// As `perf script -F srcline` (binutils) prints them.
    Perf,
}

/// Address ranges (ELF virtual addresses, sorted) that binutils names by another file.
#[derive(Debug, Default)]
pub(crate) struct Renames {
    ranges: Vec<(u64, u64, Arc<str>)>,
}

impl Renames {
    /// The file binutils names for `vaddr`, when it differs from the line table's.
    pub fn at(&self, vaddr: u64) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|r| r.0 <= vaddr);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (vaddr < r.1).then_some(&r.2)
    }

    /// Reads `binary`'s line programs; nothing (no renames) when its DWARF cannot be read.
    pub fn of(binary: &Binary) -> Renames {
        let path = binary.debug_path().unwrap_or(binary.path());
        read(path).unwrap_or_default()
    }
}

type Slice<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

fn attr_text(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    value: gimli::AttributeValue<Slice<'_>>,
) -> Option<String> {
    let s = dwarf.attr_string(unit, value).ok()?;
    Some(s.to_string_lossy().into_owned())
}

fn read(path: &Path) -> Option<Renames> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, ()> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    })
    .ok()?;
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let mut out = Renames::default();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let h = program.header();
        if h.version() < 5 {
            continue;
        }
        let Some(f0) = h.file(0) else {
            continue;
        };
        let name = |f: &gimli::FileEntry<Slice<'_>>| attr_text(&dwarf, &unit, f.path_name());
        if h.file(1)
            .is_some_and(|f1| name(f0) == name(f1) && f0.directory_index() == f1.directory_index())
        {
            continue;
        }
        // The name as addr2line joins it: the unit's directory, the file's, the file.
        let dir = |i: u64| {
            h.directory(i)
                .and_then(|d| attr_text(&dwarf, &unit, d))
                .unwrap_or_default()
        };
        let mut cu_file = std::path::PathBuf::from(dir(0));
        if f0.directory_index() != 0 {
            cu_file.push(dir(f0.directory_index()));
        }
        cu_file.push(name(f0).unwrap_or_default());
        let cu_file: Arc<str> = Arc::from(cu_file.to_string_lossy().as_ref());
        unit_renames(h, &cu_file, &mut out.ranges);
    }
    out.ranges.sort_by_key(|r| (r.0, r.1));
    Some(out)
}

/// Appends the ranges of `h`'s rows that come before their sequence's first `set_file`.
/// Walks the instructions, not gimli's rows, because rows do not say whether the file was
/// set; addresses follow the standard's state machine (one operation per instruction, x86).
fn unit_renames(
    h: &gimli::LineProgramHeader<Slice<'_>>,
    cu_file: &Arc<str>,
    out: &mut Vec<(u64, u64, Arc<str>)>,
) {
    use gimli::LineInstruction as I;
    let min_len = u64::from(h.minimum_instruction_length());
    let line_range = h.line_range();
    let base = h.opcode_base();
    if line_range == 0 {
        return;
    }
    let mut instructions = h.instructions();
    let mut addr = 0u64;
    let mut file_set = false;
    let mut open: Option<u64> = None;
    let row = |addr: u64, file_set: bool, open: &mut Option<u64>, out: &mut Vec<_>| {
        if let Some(start) = open.take() {
            if addr > start {
                out.push((start, addr, cu_file.clone()));
            }
        }
        if !file_set {
            *open = Some(addr);
        }
    };
    while let Ok(Some(ins)) = instructions.next_instruction(h) {
        match ins {
            I::Special(op) => {
                let adjusted = op.saturating_sub(base) / line_range;
                addr = addr.wrapping_add(u64::from(adjusted).wrapping_mul(min_len));
                row(addr, file_set, &mut open, out);
            }
            I::Copy => row(addr, file_set, &mut open, out),
            I::AdvancePc(n) => addr = addr.wrapping_add(n.wrapping_mul(min_len)),
            I::ConstAddPc => {
                let adjusted = 255u8.saturating_sub(base) / line_range;
                addr = addr.wrapping_add(u64::from(adjusted).wrapping_mul(min_len));
            }
            I::FixedAddPc(n) => addr = addr.wrapping_add(u64::from(n)),
            I::SetAddress(a) => addr = a,
            I::SetFile(_) => file_set = true,
            I::EndSequence => {
                row(addr, true, &mut open, out);
                addr = 0;
                file_set = false;
            }
            _ => {}
        }
    }
}
