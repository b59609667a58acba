//! An [`Index`] aggregated to source lines and functions through each binary's line table.
//!
//! A line is what the line table says for an address: the innermost inline frame's file and
//! line, which is what `perf script -F srcline` prints. Addresses without a binary or a line
//! are summed in [`Unresolved`], never dropped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::debuginfo::{Binary, BinaryCache};

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
pub fn aggregate(index: &Index, binaries: &BinaryCache, naming: Naming) -> LineReport {
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
    let mut lines: BTreeMap<LineKey, LineCounts> = BTreeMap::new();
    let mut functions: BTreeMap<(String, String), FunctionCounts> = BTreeMap::new();
    for (key, mut addrs) in by_binary {
        addrs.sort_unstable_by_key(|a| a.0);
        let path = index.paths.get(key).map_or("", |p| &**p).to_owned();
        let build_id = match &key.id {
            BinaryId::BuildId(id) => Some(*id),
            BinaryId::Path(_) => None,
        };
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
                });
                continue;
            }
        };
        report.binaries.push(BinaryReport {
            path: path.clone(),
            build_id: build_id.map(|b| b.to_string()),
            found: true,
            detail: binary.path().display().to_string(),
        });
        let renames = match naming {
            Naming::Dwarf => Renames::default(),
            Naming::Perf => Renames::of(&binary),
        };
        let line_of = line_keys(index, key, &binary, &addrs, &renames);
        aggregate_binary(
            index,
            key,
            &binary,
            &path,
            &addrs,
            &line_of,
            &mut lines,
            &mut functions,
            &mut report.unresolved,
        );
    }
    report.lines = lines.into_values().collect();
    report.functions = functions.into_values().collect();
    report
}

/// The line of each counted offset, from the line-table rows of the ranges the offsets span.
fn line_keys(
    index: &Index,
    key: &BinaryKey,
    binary: &Binary,
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
        .filter_map(|&(off, _)| Some((binary.file_offset_to_vaddr(off)?, off)))
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
    binary: &Binary,
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
        if let Some(vaddr) = binary.file_offset_to_vaddr(off) {
            if let Some((sym, at)) = binary.symbol_at(vaddr) {
                let f = functions
                    .entry((path.to_owned(), sym.name.clone()))
                    .or_insert_with(|| FunctionCounts {
                        binary: path.to_owned(),
                        name: sym.name.clone(),
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
