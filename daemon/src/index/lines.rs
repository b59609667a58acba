//! An [`Index`] aggregated to source lines and functions through each binary's line table.
//!
//! A line is what the line table says for an address: the innermost inline frame's file and
//! line, which is what `perf script -F srcline` prints. Addresses without a binary or a line
//! are summed in [`Unresolved`], never dropped.
//!
//! Kernel code (perf's `[kernel.kallsyms]_text` map, counted at run-time addresses) is resolved
//! as perf resolves it: through a vmlinux relocated by the map's `pgoff` (symbols and lines),
//! else a kallsyms table (symbols only: its counts have no line), else it is a binary not found.
//! Module maps are ordinary files here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::debuginfo::{Binary, BinaryCache, BuildId, Kallsyms};
use crate::decode::{
    find_kallsyms, find_vmlinux, is_kernel_map, kernel_symbol_address, KERNEL_NAME,
};
use crate::sideband::Map;

use super::srcline::{Naming, Renames};
use super::{BinaryId, BinaryKey, Counts, Index};

/// Counts of one source line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LineCounts {
    /// The file as the DWARF names it (directory joined).
    #[serde(serialize_with = "as_str")]
    pub file: Arc<str>,
    pub line: u32,
    /// Times control entered the line (as gcov counts): from another line, or by a taken
    /// branch (a trace start included) to an address in it.
    pub executions: u64,
    pub instructions: u64,
    /// Branch instructions executed.
    pub branches: u64,
    /// perf branch samples with their source in the line.
    pub taken: u64,
    /// Conditional branches that fell through.
    pub not_taken: u64,
}

/// Counts of one function (the symbol holding the code).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FunctionCounts {
    pub binary: String,
    pub name: String,
    /// Executions of its first instruction.
    pub calls: u64,
    pub instructions: u64,
    pub branches: u64,
    pub taken: u64,
    pub not_taken: u64,
}

/// A binary the index counted, and whether its debug info was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BinaryReport {
    /// The path the recording names.
    pub path: String,
    /// Hex, when the recording has one.
    pub build_id: Option<String>,
    /// Whether the binary was found (as perf finds it).
    pub found: bool,
    /// Where it was found, or why not.
    pub detail: String,
    /// For the kernel: what its symbols came from (`None` for any other binary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_source: Option<KernelSource>,
}

/// What resolved kernel code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelSource {
    /// A vmlinux: functions and lines.
    Vmlinux,
    /// A kallsyms table: functions only; the counts have no line.
    Kallsyms,
    /// Nothing: counted as in a binary not found.
    Missing,
}

/// Counts that could not be given a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UnresolvedCounts {
    pub instructions: u64,
    pub branches: u64,
    pub taken: u64,
    pub not_taken: u64,
}

impl UnresolvedCounts {
    fn add(&mut self, c: &Counts) {
        self.instructions += c.instructions;
        self.branches += c.branches;
        self.taken += c.taken;
        self.not_taken += c.not_taken();
    }
}

/// Why counts have no line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Unresolved {
    /// Code in no mapping of the recording (or not decodable again).
    pub no_mapping: UnresolvedCounts,
    /// Code in a binary that was not found.
    pub binary_not_found: UnresolvedCounts,
    /// Code in a found binary whose line table has no line for it.
    pub no_line: UnresolvedCounts,
}

/// Per-line and per-function counts of an index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LineReport {
    pub binaries: Vec<BinaryReport>,
    /// Sorted by file, then line.
    pub lines: Vec<LineCounts>,
    /// Sorted by binary, then name.
    pub functions: Vec<FunctionCounts>,
    pub unresolved: Unresolved,
}

type LineKey = (Arc<str>, u32);

fn as_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// Aggregates `index` to lines, loading binaries through `binaries`, files named by `naming`.
/// Kernel code is taken as unrelocated: see [`aggregate_with_kernel`].
pub fn aggregate(index: &Index, binaries: &BinaryCache, naming: Naming) -> LineReport {
    aggregate_with_kernel(index, binaries, naming, &[])
}

/// Symbols (and lines) of one binary's counted offsets.
enum Symbols<'s> {
    Binary(&'s Binary),
    Kallsyms(&'s Kallsyms),
}

impl Symbols<'_> {
    /// The function holding `vaddr` and the offset into it.
    fn at(&self, vaddr: u64) -> Option<(&str, u64)> {
        match self {
            Symbols::Binary(b) => b.symbol_at(vaddr).map(|(s, at)| (&*s.name, at)),
            Symbols::Kallsyms(k) => k.symbol_at(vaddr).map(|(s, at)| (&*s.symbol.name, at)),
        }
    }

    /// The line tables, if the source has any.
    fn lines(&self) -> Option<&Binary> {
        match self {
            Symbols::Binary(b) => Some(b),
            Symbols::Kallsyms(_) => None,
        }
    }
}

/// How one binary's counted offsets are resolved: the address its symbols and lines use for
/// each offset, and those symbols.
struct Resolver<'r> {
    vaddr: &'r dyn Fn(u64) -> Option<u64>,
    symbols: Symbols<'r>,
}

/// A kernel symbol source, found once per report.
enum KernelSymbols {
    Vmlinux(crate::decode::Vmlinux),
    Kallsyms(crate::decode::FoundKallsyms),
    Missing(String),
}

fn find_kernel_symbols(binaries: &BinaryCache, build_id: Option<&BuildId>) -> KernelSymbols {
    let search = binaries.search_paths();
    if let Some(vmlinux) = find_vmlinux(search, build_id) {
        return KernelSymbols::Vmlinux(vmlinux);
    }
    match find_kallsyms(search, build_id) {
        Ok(found) => KernelSymbols::Kallsyms(found),
        Err(tried) => KernelSymbols::Missing(format!(
            "no vmlinux (--vmlinux, or one whose build-id matches) and no kallsyms: {tried}"
        )),
    }
}

/// The kernel map a binary of the index stands for, if it is the kernel: the recording's map of
/// that name, else (no maps given) one taken as unrelocated.
fn kernel_map(path: &str, kernel_maps: &[Map]) -> Option<Map> {
    if let Some(map) = kernel_maps
        .iter()
        .find(|m| is_kernel_map(m) && &*m.filename == path)
    {
        return Some(map.clone());
    }
    let is_kernel = path.starts_with(KERNEL_NAME) || path.starts_with("[guest.kernel");
    is_kernel.then(|| Map {
        start: 0,
        len: 0,
        pgoff: 0,
        filename: Arc::from(path),
        prot: None,
        flags: None,
        inode: None,
        build_id: None,
        cpumode: 1,
        time: 0,
    })
}

/// Aggregates `index` to lines as [`aggregate`] does, resolving kernel code through
/// `kernel_maps` (the recording's kernel maps, as the sideband has them: their `pgoff` is the
/// run-time `_text` a vmlinux or kallsyms table is relocated by). The kernel's sources are the
/// cache's search paths: `--vmlinux`, a build-id matched vmlinux at perf's paths, then
/// `--kallsyms`, the recording's `kcore_dir/kallsyms`, a build-id cache copy.
pub fn aggregate_with_kernel(
    index: &Index,
    binaries: &BinaryCache,
    naming: Naming,
    kernel_maps: &[Map],
) -> LineReport {
    let mut report = LineReport::default();
    report.unresolved.no_mapping.instructions = index.unmapped.instructions;
    report.unresolved.no_mapping.taken = index.unmapped.taken;

    // Per binary, its counted offsets in order.
    let mut by_binary: BTreeMap<&BinaryKey, Vec<(u64, &Counts)>> = BTreeMap::new();
    for (addr, c) in &index.counts {
        by_binary
            .entry(&addr.binary)
            .or_default()
            .push((addr.offset, c));
    }
    let mut out = Out::default();
    let mut kernel: Option<KernelSymbols> = None;
    for (key, mut addrs) in by_binary {
        addrs.sort_unstable_by_key(|a| a.0);
        let path = index.paths.get(key).map_or("", |p| &**p).to_owned();
        let build_id = match &key.id {
            BinaryId::BuildId(id) => Some(*id),
            BinaryId::Path(_) => None,
        };
        if let Some(map) = kernel_map(&path, kernel_maps) {
            let source =
                kernel.get_or_insert_with(|| find_kernel_symbols(binaries, build_id.as_ref()));
            let (kernel_source, found, detail, text, symbols) = match source {
                KernelSymbols::Vmlinux(v) => (
                    KernelSource::Vmlinux,
                    true,
                    format!("vmlinux {}", v.binary.path().display()),
                    v.text,
                    Some(Symbols::Binary(&v.binary)),
                ),
                KernelSymbols::Kallsyms(k) => (
                    KernelSource::Kallsyms,
                    true,
                    format!("kallsyms {} (functions only, no lines)", k.path.display()),
                    k.table.address_of("_text"),
                    Some(Symbols::Kallsyms(&k.table)),
                ),
                KernelSymbols::Missing(why) => {
                    (KernelSource::Missing, false, why.clone(), None, None)
                }
            };
            report.binaries.push(BinaryReport {
                path: KERNEL_NAME.to_owned(),
                build_id: build_id.map(|b| b.to_string()),
                found,
                detail,
                kernel_source: Some(kernel_source),
            });
            let Some(symbols) = symbols else {
                for (_, c) in &addrs {
                    report.unresolved.binary_not_found.add(c);
                }
                continue;
            };
            let vaddr = |off: u64| Some(kernel_symbol_address(&map, text, off));
            let resolver = Resolver {
                vaddr: &vaddr,
                symbols,
            };
            out.add(
                index,
                key,
                &resolver,
                KERNEL_NAME,
                &addrs,
                naming,
                &mut report.unresolved,
            );
            continue;
        }
        let binary = match binaries.get(Path::new(&path), build_id.as_ref()) {
            Ok(b) => b,
            Err(e) => {
                for (_, c) in &addrs {
                    report.unresolved.binary_not_found.add(c);
                }
                report.binaries.push(BinaryReport {
                    path,
                    build_id: build_id.map(|b| b.to_string()),
                    found: false,
                    detail: e.to_string(),
                    kernel_source: None,
                });
                continue;
            }
        };
        report.binaries.push(BinaryReport {
            path: path.clone(),
            build_id: build_id.map(|b| b.to_string()),
            found: true,
            detail: binary.path().display().to_string(),
            kernel_source: None,
        });
        let vaddr = |off: u64| binary.file_offset_to_vaddr(off);
        let resolver = Resolver {
            vaddr: &vaddr,
            symbols: Symbols::Binary(&binary),
        };
        out.add(
            index,
            key,
            &resolver,
            &path,
            &addrs,
            naming,
            &mut report.unresolved,
        );
    }
    report.lines = out.lines.into_values().collect();
    report.functions = out.functions.into_values().collect();
    report
}

/// Lines and functions being summed.
#[derive(Default)]
struct Out {
    lines: BTreeMap<LineKey, LineCounts>,
    functions: BTreeMap<(String, String), FunctionCounts>,
}

impl Out {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        index: &Index,
        key: &BinaryKey,
        resolver: &Resolver<'_>,
        name: &str,
        addrs: &[(u64, &Counts)],
        naming: Naming,
        unresolved: &mut Unresolved,
    ) {
        let line_of = match resolver.symbols.lines() {
            Some(binary) => {
                let renames = match naming {
                    Naming::Dwarf => Renames::default(),
                    Naming::Perf => Renames::of(binary),
                };
                line_keys(index, key, binary, resolver, addrs, &renames)
            }
            None => HashMap::new(),
        };
        aggregate_binary(
            index,
            key,
            resolver,
            name,
            addrs,
            &line_of,
            &mut self.lines,
            &mut self.functions,
            unresolved,
        );
    }
}

/// The line of each counted offset, from the line-table rows of the ranges the offsets span.
fn line_keys(
    index: &Index,
    key: &BinaryKey,
    binary: &Binary,
    resolver: &Resolver<'_>,
    addrs: &[(u64, &Counts)],
    renames: &Renames,
) -> HashMap<u64, LineKey> {
    let mut out = HashMap::new();
    let size = |off: u64| {
        index
            .shapes
            .get(&super::CodeAddr {
                binary: key.clone(),
                offset: off,
            })
            .map_or(1, |s| u64::from(s.size))
    };
    let vaddrs: Vec<(u64, u64)> = addrs
        .iter()
        .filter_map(|&(off, _)| Some(((resolver.vaddr)(off)?, off)))
        .collect();
    // One line-table query per cluster of nearby code, not one per address.
    let mut i = 0;
    while i < vaddrs.len() {
        let mut j = i + 1;
        while j < vaddrs.len() && vaddrs[j].0.saturating_sub(vaddrs[j - 1].0) <= 4096 {
            j += 1;
        }
        let start = vaddrs[i].0;
        let end = vaddrs[j - 1].0.saturating_add(size(vaddrs[j - 1].1));
        if let Ok(rows) = binary.line_rows(start..end) {
            let mut r = 0;
            for &(vaddr, off) in &vaddrs[i..j] {
                while r < rows.len() && rows[r].end <= vaddr {
                    r += 1;
                }
                let Some(row) = rows.get(r).filter(|row| row.start <= vaddr) else {
                    continue;
                };
                if let (Some(file), Some(line)) = (&row.file, row.line) {
                    if line > 0 {
                        let file = renames.at(vaddr).unwrap_or(file);
                        out.insert(off, (file.clone(), line));
                    }
                }
            }
        }
        i = j;
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn aggregate_binary(
    index: &Index,
    key: &BinaryKey,
    resolver: &Resolver<'_>,
    path: &str,
    addrs: &[(u64, &Counts)],
    line_of: &HashMap<u64, LineKey>,
    lines: &mut BTreeMap<LineKey, LineCounts>,
    functions: &mut BTreeMap<(String, String), FunctionCounts>,
    unresolved: &mut Unresolved,
) {
    // The instruction each offset falls through from, to tell whether falling into an
    // instruction entered its line.
    let mut pred: HashMap<u64, u64> = HashMap::new();
    for &(off, _) in addrs {
        let code = super::CodeAddr {
            binary: key.clone(),
            offset: off,
        };
        if let Some(shape) = index.shapes.get(&code) {
            pred.insert(off.saturating_add(u64::from(shape.size)), off);
        }
    }
    for &(off, c) in addrs {
        if let Some(vaddr) = (resolver.vaddr)(off) {
            if let Some((sym, at)) = resolver.symbols.at(vaddr) {
                let f = functions
                    .entry((path.to_owned(), sym.to_owned()))
                    .or_insert_with(|| FunctionCounts {
                        binary: path.to_owned(),
                        name: sym.to_owned(),
                        ..FunctionCounts::default()
                    });
                if at == 0 {
                    f.calls += c.instructions;
                }
                f.instructions += c.instructions;
                f.branches += c.branches;
                f.taken += c.taken;
                f.not_taken += c.not_taken();
            }
        }
        let Some(line_key) = line_of.get(&off) else {
            unresolved.no_line.add(c);
            continue;
        };
        let fell_in = c.instructions.saturating_sub(c.entries);
        let from_elsewhere = match pred.get(&off) {
            Some(p) => line_of.get(p) != Some(line_key),
            None => true,
        };
        let l = lines.entry(line_key.clone()).or_insert_with(|| LineCounts {
            file: line_key.0.clone(),
            line: line_key.1,
            ..LineCounts::default()
        });
        l.executions += c.entries + if from_elsewhere { fell_in } else { 0 };
        l.instructions += c.instructions;
        l.branches += c.branches;
        l.taken += c.taken;
        l.not_taken += c.not_taken();
    }
}
