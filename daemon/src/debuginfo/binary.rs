//! A loaded binary: its segments, code bytes and symbols from `object`, and its lines and inline
//! chains from `addr2line` over the DWARF of the binary or of its separate debug file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SegmentFlags, SymbolKind};

use super::build_id::{self, BuildId};
use super::locate::{self, Located, SearchPaths};
use super::{map_file, Error};

/// DWARF sections are copied out of the mapping (and decompressed when compressed) into shared
/// buffers, so the parsed DWARF owns its data and `Binary` needs no self-reference.
type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// A `PT_LOAD` segment of an ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of its first byte (`p_vaddr`).
    pub vaddr: u64,
    /// Size in memory (`p_memsz`).
    pub mem_size: u64,
    /// Offset of its first byte in the file (`p_offset`).
    pub file_offset: u64,
    /// Bytes backed by the file (`p_filesz`); the rest of `mem_size` is zero-filled.
    pub file_size: u64,
    /// Whether it is mapped executable (`PF_X`).
    pub executable: bool,
}

impl Segment {
    /// The virtual address of file offset `offset`, if the segment's file bytes hold it.
    pub fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        let delta = offset.checked_sub(self.file_offset)?;
        (delta < self.file_size).then(|| self.vaddr.wrapping_add(delta))
    }

    /// The file offset of virtual address `vaddr`, if the segment's file bytes hold it.
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        let delta = vaddr.checked_sub(self.vaddr)?;
        (delta < self.file_size).then(|| self.file_offset + delta)
    }
}

/// A function symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The name as the symbol table spells it (not demangled).
    pub name: String,
    /// Its virtual address.
    pub address: u64,
    /// Its size. A symbol with no size in the table extends to the next symbol, or to the end of
    /// the page after its own for the last one (perf's `symbols__fixup_end`).
    pub size: u64,
}

impl Symbol {
    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.address.saturating_add(self.size)
    }
}

/// One function of an inline chain at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The function's name (not demangled), if the DWARF gives one.
    pub function: Option<String>,
    /// The source file of this frame's location (for an inlined frame: where it is in the inlined
    /// function; for its caller: the call site).
    pub file: Option<String>,
    /// The line, if known (0 is reported as `None`).
    pub line: Option<u32>,
    /// The column, if known.
    pub column: Option<u32>,
}

/// A row of a line table: the addresses `start..end` come from this source location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRow {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The source file; rows of one query share one allocation per file.
    pub file: Option<Arc<str>>,
    /// The line, if known.
    pub line: Option<u32>,
    /// The column, if known.
    pub column: Option<u32>,
}

/// The separate file that holds the DWARF of a stripped binary.
struct DebugFile {
    path: PathBuf,
    map: Mmap,
}

/// An ELF binary, memory-mapped, with its separate debug file when it has one.
///
/// `Send + Sync`: share it as `Arc<Binary>`. Segments and symbols are read when it is loaded; DWARF
/// is parsed on the first line or frame query, and queries on one binary take turns on it.
pub struct Binary {
    path: PathBuf,
    build_id: Option<BuildId>,
    map: Mmap,
    debug: Option<DebugFile>,
    segments: Vec<Segment>,
    symbols: Vec<Symbol>,
    // addr2line's context caches with `OnceCell`s, so it is `Send` but not `Sync`: a mutex makes
    // the binary shareable. Bulk line queries go through `line_rows`, which takes the lock once.
    dwarf: OnceLock<Result<Mutex<addr2line::Context<Reader>>, Error>>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Binary>();
};

impl fmt::Debug for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binary")
            .field("path", &self.path)
            .field("debug_path", &self.debug_path())
            .field("build_id", &self.build_id)
            .field("segments", &self.segments)
            .field("symbols", &self.symbols.len())
            .finish_non_exhaustive()
    }
}

impl Binary {
    /// Opens the ELF file at `path` on its own: its DWARF is whatever it holds itself.
    pub fn open(path: &Path) -> Result<Binary, Error> {
        Binary::with_debug_file(path, None)
    }

    /// Opens the ELF file at `path`, with the DWARF (and, if `path` has no symbol table, the
    /// symbols) of the separate debug file `debug_path`.
    pub fn with_debug_file(path: &Path, debug_path: Option<&Path>) -> Result<Binary, Error> {
        let debug = match debug_path {
            Some(p) => Some(DebugFile {
                path: p.to_owned(),
                map: map_file(p)?,
            }),
            None => None,
        };
        Binary::from_parts(path, map_file(path)?, debug)
    }

    /// Loads a binary that `search` located for `recorded_path`; when it has no DWARF of its own,
    /// finds its separate debug file through `search`. A missing debug file is not an error: lines
    /// and frames are then empty.
    pub fn load(
        search: &SearchPaths,
        recorded_path: &Path,
        located: &Located,
    ) -> Result<Binary, Error> {
        let path = &located.path;
        let map = map_file(path)?;
        let file = object::File::parse(&*map).map_err(|e| Error::not_elf(path, e))?;
        let mut debug = None;
        if !locate::has_dwarf(&file) {
            let link = locate::debuglink(&file);
            match search.locate_debug_file(recorded_path, located, link.as_ref()) {
                Ok(found) => match map_file(&found.path) {
                    Ok(map) => {
                        debug = Some(DebugFile {
                            path: found.path,
                            map,
                        })
                    }
                    Err(e) => tracing::warn!("{e}; using {} without it", path.display()),
                },
                Err(not_found) => {
                    tracing::debug!("no separate debug file: {not_found}")
                }
            }
        }
        drop(file);
        Binary::from_parts(path, map, debug)
    }

    fn from_parts(path: &Path, map: Mmap, debug: Option<DebugFile>) -> Result<Binary, Error> {
        let file = object::File::parse(&*map).map_err(|e| Error::not_elf(path, e))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(Error::not_elf(path, format!("{:?} object", file.format())));
        }
        let build_id = build_id::from_object(&file).map_err(|e| Error::not_elf(path, e))?;
        let segments = read_segments(&file);
        let debug_file = match &debug {
            Some(d) => Some(object::File::parse(&*d.map).map_err(|e| Error::not_elf(&d.path, e))?),
            None => None,
        };
        let symbols = read_symbols(&file, debug_file.as_ref());
        drop((file, debug_file));
        Ok(Binary {
            path: path.to_owned(),
            build_id,
            map,
            debug,
            segments,
            symbols,
            dwarf: OnceLock::new(),
        })
    }

    /// The file the code and segments come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The separate debug file, if one is used.
    pub fn debug_path(&self) -> Option<&Path> {
        self.debug.as_ref().map(|d| d.path.as_path())
    }

    /// The build-id of the binary, if it has one.
    pub fn build_id(&self) -> Option<&BuildId> {
        self.build_id.as_ref()
    }

    /// Its `PT_LOAD` segments, in program-header order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Its executable `PT_LOAD` segments.
    pub fn executable_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.executable)
    }

    /// The virtual address at file offset `offset` (preferring executable segments, where code is),
    /// or `None` when no segment maps that offset.
    pub fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.segments_code_first()
            .find_map(|s| s.file_offset_to_vaddr(offset))
    }

    /// The file offset of virtual address `vaddr`, or `None` when no segment's file bytes hold it.
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments_code_first()
            .find_map(|s| s.vaddr_to_file_offset(vaddr))
    }

    fn segments_code_first(&self) -> impl Iterator<Item = &Segment> {
        self.executable_segments()
            .chain(self.segments.iter().filter(|s| !s.executable))
    }

    /// The code bytes from `vaddr` to the end of the executable segment holding it, or `None` when
    /// `vaddr` is in no executable segment's file bytes.
    pub fn code_at(&self, vaddr: u64) -> Option<&[u8]> {
        self.executable_segments().find_map(|s| {
            let start = s.vaddr_to_file_offset(vaddr)?;
            let end = s.file_offset.checked_add(s.file_size)?;
            self.map
                .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
        })
    }

    /// Its function symbols, sorted by address, one per address (chosen as perf chooses).
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// The symbol holding `vaddr` and the offset of `vaddr` in it.
    pub fn symbol_at(&self, vaddr: u64) -> Option<(&Symbol, u64)> {
        let i = self.symbols.partition_point(|s| s.address <= vaddr);
        let sym = self.symbols.get(i.checked_sub(1)?)?;
        (vaddr < sym.end()).then(|| (sym, vaddr - sym.address))
    }

    /// The file holding the DWARF: the debug file, or the binary itself.
    fn dwarf_source(&self) -> (&Path, &[u8]) {
        match &self.debug {
            Some(d) => (&d.path, &d.map),
            None => (&self.path, &self.map),
        }
    }

    fn dwarf_error(&self, e: impl fmt::Display) -> Error {
        Error::Dwarf {
            path: self.dwarf_source().0.to_owned(),
            reason: e.to_string(),
        }
    }

    fn context(&self) -> Result<MutexGuard<'_, addr2line::Context<Reader>>, Error> {
        let ctx = self
            .dwarf
            .get_or_init(|| self.load_dwarf().map(Mutex::new))
            .as_ref()
            .map_err(Clone::clone)?;
        // A panic while holding the lock cannot leave the context half-updated in a way that
        // matters (its caches fill once), so a poisoned lock is used as it is.
        Ok(ctx.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn load_dwarf(&self) -> Result<addr2line::Context<Reader>, Error> {
        let (path, data) = self.dwarf_source();
        let file = object::File::parse(data).map_err(|e| Error::not_elf(path, e))?;
        let endian = if file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, Error> {
            let data = match file.section_by_name(id.name()) {
                Some(section) => section
                    .uncompressed_data()
                    .map_err(|e| self.dwarf_error(format!("{}: {e}", id.name())))?,
                None => Cow::Borrowed(&[][..]),
            };
            Ok(Reader::new(Arc::from(&*data), endian))
        })?;
        addr2line::Context::from_dwarf(dwarf).map_err(|e| self.dwarf_error(e))
    }

    /// The inline chain at `vaddr`, innermost function first (as `addr2line -f -i` prints it);
    /// empty when the DWARF says nothing about `vaddr` (or there is no DWARF).
    pub fn frames(&self, vaddr: u64) -> Result<Vec<Frame>, Error> {
        let ctx = self.context()?;
        let mut iter = ctx
            .find_frames(vaddr)
            .skip_all_loads()
            .map_err(|e| self.dwarf_error(e))?;
        let mut frames = Vec::new();
        while let Some(frame) = iter.next().map_err(|e| self.dwarf_error(e))? {
            let function = match &frame.function {
                Some(name) => Some(
                    name.raw_name()
                        .map_err(|e| self.dwarf_error(e))?
                        .into_owned(),
                ),
                None => None,
            };
            let location = frame.location.as_ref();
            frames.push(Frame {
                function,
                file: location.and_then(|l| l.file).map(str::to_owned),
                line: location.and_then(|l| l.line),
                column: location.and_then(|l| l.column),
            });
        }
        Ok(frames)
    }

    /// The line-table row holding `vaddr`, if any.
    pub fn line_at(&self, vaddr: u64) -> Result<Option<LineRow>, Error> {
        Ok(self
            .line_rows(vaddr..vaddr.saturating_add(1))?
            .into_iter()
            .find(|r| r.start <= vaddr && vaddr < r.end))
    }

    /// The line-table rows overlapping `range`, sorted by address, so that per-address counts can be
    /// summed per line with one walk instead of one lookup per address. A row may start before
    /// `range.start` or end after `range.end`; addresses in no row have no line.
    pub fn line_rows(&self, range: Range<u64>) -> Result<Vec<LineRow>, Error> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = self.context()?;
        let mut files: HashMap<&str, Arc<str>> = HashMap::new();
        let mut rows = Vec::new();
        for (start, len, loc) in ctx
            .find_location_range(range.start, range.end)
            .map_err(|e| self.dwarf_error(e))?
        {
            let file = loc
                .file
                .map(|f| files.entry(f).or_insert_with(|| Arc::from(f)).clone());
            rows.push(LineRow {
                start,
                end: start.saturating_add(len),
                file,
                line: loc.line,
                column: loc.column,
            });
        }
        rows.sort_by_key(|r| (r.start, r.end));
        Ok(rows)
    }
}

fn read_segments(file: &object::File<'_>) -> Vec<Segment> {
    file.segments()
        .map(|seg| {
            let (file_offset, file_size) = seg.file_range();
            let p_flags = match seg.flags() {
                SegmentFlags::Elf { p_flags } => p_flags,
                _ => 0,
            };
            Segment {
                vaddr: seg.address(),
                mem_size: seg.size(),
                file_offset,
                file_size,
                executable: p_flags & object::elf::PF_X != 0,
            }
        })
        .collect()
}

/// A symbol as read, before one is chosen per address.
struct RawSymbol {
    name: String,
    address: u64,
    size: u64,
    weak: bool,
    global: bool,
}

/// Function symbols from `.symtab` (the binary's, else the debug file's), else `.dynsym`.
fn read_symbols(file: &object::File<'_>, debug: Option<&object::File<'_>>) -> Vec<Symbol> {
    let mut raw = collect_functions(file.symbols());
    if raw.is_empty() {
        if let Some(debug) = debug {
            raw = collect_functions(debug.symbols());
        }
    }
    if raw.is_empty() {
        raw = collect_functions(file.dynamic_symbols());
    }
    choose_and_size(raw)
}

fn collect_functions<'data: 'file, 'file, S>(symbols: impl Iterator<Item = S>) -> Vec<RawSymbol>
where
    S: ObjectSymbol<'data>,
{
    symbols
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| {
            let name = s.name().ok().filter(|n| !n.is_empty())?;
            Some(RawSymbol {
                name: name.to_owned(),
                address: s.address(),
                size: s.size(),
                weak: s.is_weak(),
                global: s.is_global() && !s.is_weak(),
            })
        })
        .collect()
}

/// Whether `a` is a better name for an address than `b` (perf's `choose_best_symbol`).
fn better(a: &RawSymbol, b: &RawSymbol) -> bool {
    let underscores = |s: &RawSymbol| s.name.bytes().take_while(|&c| c == b'_').count();
    let key = |s: &RawSymbol| {
        (
            s.size != 0,
            !s.weak,
            s.global,
            std::cmp::Reverse(underscores(s)),
            s.name.len(),
        )
    };
    // The name itself breaks the last ties, so the choice does not depend on table order.
    (key(a), std::cmp::Reverse(&a.name)) > (key(b), std::cmp::Reverse(&b.name))
}

/// One symbol per address, sorted, with zero sizes fixed up as perf does.
fn choose_and_size(mut raw: Vec<RawSymbol>) -> Vec<Symbol> {
    raw.sort_by_key(|s| s.address);
    let mut chosen: Vec<RawSymbol> = Vec::with_capacity(raw.len());
    for sym in raw {
        match chosen.last_mut() {
            Some(last) if last.address == sym.address => {
                if better(&sym, last) {
                    *last = sym;
                }
            }
            _ => chosen.push(sym),
        }
    }
    let next_starts: Vec<Option<u64>> = chosen
        .iter()
        .skip(1)
        .map(|s| Some(s.address))
        .chain([None])
        .collect();
    chosen
        .into_iter()
        .zip(next_starts)
        .map(|(s, next)| {
            let size = match (s.size, next) {
                (0, Some(next)) => next - s.address,
                (0, None) => (s.address.div_ceil(4096) * 4096 + 4096).saturating_sub(s.address),
                (size, _) => size,
            };
            Symbol {
                name: s.name,
                address: s.address,
                size,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, address: u64, size: u64, weak: bool, global: bool) -> RawSymbol {
        RawSymbol {
            name: name.to_owned(),
            address,
            size,
            weak,
            global,
        }
    }

    #[test]
    fn one_symbol_per_address_as_perf_chooses() {
        let syms = choose_and_size(vec![
            raw("__libc_malloc", 0x100, 0x10, false, true),
            raw("malloc", 0x100, 0x10, false, true),
            raw("weak_one", 0x200, 0x10, true, false),
            raw("local_one", 0x200, 0x10, false, false),
            raw("sized", 0x300, 0x10, false, false),
            raw("unsized", 0x300, 0, false, true),
        ]);
        let names: Vec<_> = syms.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["malloc", "local_one", "sized"]);
    }

    #[test]
    fn zero_sizes_reach_the_next_symbol() {
        let syms = choose_and_size(vec![
            raw("a", 0x1000, 0, false, true),
            raw("b", 0x1040, 0, false, true),
        ]);
        assert_eq!(syms[0].size, 0x40);
        assert_eq!(syms[1].end(), 0x3000);
    }

    #[test]
    fn segment_offsets() {
        let s = Segment {
            vaddr: 0x401000,
            mem_size: 0x2000,
            file_offset: 0x1000,
            file_size: 0x1800,
            executable: true,
        };
        assert_eq!(s.file_offset_to_vaddr(0x1010), Some(0x401010));
        assert_eq!(s.file_offset_to_vaddr(0x2800), None);
        assert_eq!(s.file_offset_to_vaddr(0xfff), None);
        assert_eq!(s.vaddr_to_file_offset(0x402000), Some(0x2000));
        assert_eq!(s.vaddr_to_file_offset(0x402800), None);
    }
}
