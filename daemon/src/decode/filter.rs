//! Intel PT address filters as perf records them (AUXTRACE_INFO, after priv[16]), parsed and
//! resolved to the virtual address ranges the flow decoder's [`AddrFilter`] takes.
//!
//! The recorded text is what `perf record --filter` resolved: entries such as
//! `filter 0x1136/0x20@/path/to/bin` (a file offset and size within that binary) or, without
//! `@`, kernel addresses; entries are separated by commas and/or spaces. The grammar follows
//! perf 6.1's bare filter parser: an action (`filter`, `start`, `stop`, `tracestop`), an address
//! (a C integer: `0x` hex, leading-`0` octal, or decimal), an optional `/size`, an optional
//! `@file` (ending at a space or comma). perf writes `tracestop` back as `stop` with a size;
//! both mean a TraceStop range here.

use std::fmt;

use crate::pt::flow::{AddrFilter, AddrRange, AddrRangeKind};
use crate::sideband::Map;

/// What a filter entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    /// Trace only inside the range.
    Filter,
    /// Start tracing at an address.
    Start,
    /// Stop tracing at an address.
    Stop,
    /// Stop tracing on entering the range (`tracestop`, or `stop` with a size).
    TraceStop,
}

/// One entry of a recorded filter string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterEntry {
    pub action: FilterAction,
    /// The file offset within `path`, or the kernel address when there is no path.
    pub offset: u64,
    /// The range's size in bytes; 0 when the entry has none (`start`/`stop` at an address).
    pub size: u64,
    /// The binary the offset is in; `None` for kernel addresses.
    pub path: Option<String>,
}

/// Why a filter string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterParseError {
    /// Byte position in the filter string.
    pub at: usize,
    pub reason: String,
}

impl fmt::Display for FilterParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad address filter at byte {}: {}", self.at, self.reason)
    }
}

impl std::error::Error for FilterParseError {}

struct Cursor<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> Cursor<'t> {
    fn rest(&self) -> &'t str {
        &self.text[self.pos..]
    }

    fn skip(&mut self, set: &[char]) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches(set).len();
    }

    /// A token ending at any of `delims` (or the end); never empty.
    fn token(&mut self, delims: &[char], what: &str) -> Result<&'t str, FilterParseError> {
        let rest = self.rest();
        let n = rest.find(delims).unwrap_or(rest.len());
        if n == 0 {
            return Err(self.error(format!("expected {what}")));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    /// A C integer (`strtoull` base 0): `0x` hex, leading `0` octal, else decimal.
    fn number(&mut self, what: &str) -> Result<u64, FilterParseError> {
        let rest = self.rest();
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            let symbol = rest.split([' ', '/', '@', ',']).next().unwrap_or("");
            return Err(self.error(format!(
                "expected {what} as a number, found {symbol:?} (symbols must be resolved)"
            )));
        }
        let (radix, skip) = if rest.starts_with("0x") || rest.starts_with("0X") {
            (16, 2)
        } else if rest.starts_with('0') {
            (8, 0)
        } else {
            (10, 0)
        };
        let digits = &rest[skip..];
        let n = digits
            .find(|c: char| !c.is_digit(radix))
            .unwrap_or(digits.len());
        if n == 0 {
            return Err(self.error(format!("expected hex digits in {what}")));
        }
        let value = u64::from_str_radix(&digits[..n], radix)
            .map_err(|_| self.error(format!("{what} out of range")))?;
        self.pos += skip + n;
        Ok(value)
    }

    fn error(&self, reason: String) -> FilterParseError {
        FilterParseError {
            at: self.pos,
            reason,
        }
    }
}

/// Parses a recorded filter string (trailing NUL padding allowed). An empty string has no
/// entries.
pub fn parse_filter(text: &str) -> Result<Vec<FilterEntry>, FilterParseError> {
    let text = text.split('\0').next().unwrap_or("");
    let mut cur = Cursor { text, pos: 0 };
    let mut entries = Vec::new();
    cur.skip(&[' ', ',']);
    while !cur.rest().is_empty() {
        let start = cur.pos;
        let word = cur.token(&[' '], "an action")?;
        let mut action = match word {
            "filter" => FilterAction::Filter,
            "start" => FilterAction::Start,
            "stop" => FilterAction::Stop,
            "tracestop" => FilterAction::TraceStop,
            other => {
                return Err(FilterParseError {
                    at: start,
                    reason: format!("unknown action {other:?}"),
                })
            }
        };
        cur.skip(&[' ']);
        let offset = cur.number("the address")?;
        cur.skip(&[' ']);
        let mut size = 0;
        if let Some(rest) = cur.rest().strip_prefix('/') {
            cur.pos = text.len() - rest.len();
            cur.skip(&[' ']);
            size = cur.number("the size")?;
            if action == FilterAction::Stop {
                action = FilterAction::TraceStop;
            }
            cur.skip(&[' ']);
        }
        let mut path = None;
        if let Some(rest) = cur.rest().strip_prefix('@') {
            cur.pos = text.len() - rest.len();
            cur.skip(&[' ']);
            path = Some(cur.token(&[' ', ','], "a file name after '@'")?.to_string());
        }
        entries.push(FilterEntry {
            action,
            offset,
            size,
            path,
        });
        cur.skip(&[' ', ',']);
    }
    Ok(entries)
}

/// Where file `offset` is in a mapping of `len` bytes at `start` mapping the file from `pgoff`:
/// `start + (offset - pgoff)`, when the mapping covers it.
pub fn mapped_address(start: u64, len: u64, pgoff: u64, offset: u64) -> Option<u64> {
    let delta = offset.checked_sub(pgoff)?;
    (delta < len).then(|| start.checked_add(delta)).flatten()
}

/// The address range (first, last inclusive) of `entry`: kernel addresses as given, file
/// offsets where the earliest-made of `maps` with the entry's file name covering the offset put
/// them. `None` for entries with no size, or a file no map covers.
pub fn resolve_entry<'m>(
    entry: &FilterEntry,
    maps: impl IntoIterator<Item = &'m Map>,
) -> Option<(u64, u64)> {
    if entry.size == 0 {
        return None;
    }
    let start = match &entry.path {
        None => entry.offset,
        Some(path) => {
            maps.into_iter()
                .filter(|m| &*m.filename == path.as_str())
                .filter_map(|m| {
                    mapped_address(m.start, m.len, m.pgoff, entry.offset).map(|a| (m.time, a))
                })
                .min_by_key(|&(time, _)| time)?
                .1
        }
    };
    Some((start, start.checked_add(entry.size - 1)?))
}

/// The flow decoder's filter for `entries`, resolved over `maps`. Only ranges are modelled
/// (Intel PT's FilterEn and TraceStop ranges): `start`/`stop` at a single address, entries no
/// map resolves, and entries beyond the 4 range registers are left out.
pub fn address_filter<'m>(
    entries: &[FilterEntry],
    maps: impl IntoIterator<Item = &'m Map> + Clone,
) -> AddrFilter {
    let mut filter = AddrFilter::default();
    let ranges = entries.iter().filter_map(|e| {
        let kind = match e.action {
            FilterAction::Filter => AddrRangeKind::Filter,
            FilterAction::TraceStop => AddrRangeKind::Stop,
            FilterAction::Start | FilterAction::Stop => return None,
        };
        let (start, end) = resolve_entry(e, maps.clone())?;
        Some(AddrRange { kind, start, end })
    });
    for (slot, range) in filter.ranges.iter_mut().zip(ranges) {
        *slot = range;
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: FilterAction, offset: u64, size: u64, path: Option<&str>) -> FilterEntry {
        FilterEntry {
            action,
            offset,
            size,
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn parses_perf_recorded_filters() {
        assert_eq!(
            parse_filter("filter 0x1136/0x20@/path/to/bin\0\0\0").unwrap(),
            [entry(
                FilterAction::Filter,
                0x1136,
                0x20,
                Some("/path/to/bin")
            )]
        );
        assert_eq!(
            parse_filter("filter 0x1136/0x20@/a/b,stop 0x2000/0x10@/lib/libc.so.6").unwrap(),
            [
                entry(FilterAction::Filter, 0x1136, 0x20, Some("/a/b")),
                entry(
                    FilterAction::TraceStop,
                    0x2000,
                    0x10,
                    Some("/lib/libc.so.6")
                ),
            ]
        );
        assert_eq!(
            parse_filter(" tracestop 0xffffffff81000000/0x100 , filter 4096 / 16 @ /x ").unwrap(),
            [
                entry(FilterAction::TraceStop, 0xffffffff81000000, 0x100, None),
                entry(FilterAction::Filter, 4096, 16, Some("/x")),
            ]
        );
        assert_eq!(
            parse_filter("start 0x400000@/bin/true stop 010").unwrap(),
            [
                entry(FilterAction::Start, 0x400000, 0, Some("/bin/true")),
                entry(FilterAction::Stop, 8, 0, None),
            ]
        );
        assert_eq!(parse_filter("").unwrap(), []);
        assert_eq!(parse_filter("\0\0").unwrap(), []);
    }

    #[test]
    fn malformed_filters_are_errors() {
        for bad in [
            "filt 0x10/0x10",
            "filter",
            "filter main",
            "filter 0x10/",
            "filter 0x10/0xzz",
            "filter 0x10/0x10@",
            "filter 0x10/0x10@,",
            "filter 0x",
            "filter 0x10000000000000000/1",
            "filter 0x10zz",
            "filter 0x10/0x10 @ /bin/x junk",
        ] {
            let err = parse_filter(bad).unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
        let err = parse_filter("filter 0x10/0x10,bogus 1").unwrap_err();
        assert_eq!(err.at, 17);
        assert!(err.reason.contains("bogus"), "{err}");
    }

    #[test]
    fn mapped_address_arithmetic() {
        assert_eq!(mapped_address(0x5000, 0x2000, 0x1000, 0x1136), Some(0x5136));
        assert_eq!(mapped_address(0x5000, 0x2000, 0x1000, 0x2fff), Some(0x6fff));
        assert_eq!(mapped_address(0x5000, 0x2000, 0x1000, 0x3000), None);
        assert_eq!(mapped_address(0x5000, 0x2000, 0x1000, 0xfff), None);
        assert_eq!(mapped_address(u64::MAX, 0x10, 0, 1), None);
    }

    fn map(start: u64, len: u64, pgoff: u64, name: &str, time: u64) -> Map {
        Map {
            start,
            len,
            pgoff,
            filename: name.into(),
            prot: Some(5),
            flags: None,
            inode: None,
            build_id: None,
            cpumode: 2,
            time,
        }
    }

    #[test]
    fn resolves_over_maps() {
        let maps = [
            map(0x7f00_0000_0000, 0x1000, 0, "/bin/prog", 1),
            map(0x5555_5555_5000, 0x2000, 0x1000, "/bin/prog", 2),
            map(0x7f10_0000_1000, 0x9000, 0x1000, "/lib/libc.so.6", 3),
            // The same file mapped again later: the first map wins.
            map(0x6000_0000_1000, 0x2000, 0x1000, "/bin/prog", 9),
        ];
        let entries = parse_filter(
            "filter 0x1136/0x20@/bin/prog,tracestop 0x2000/0x10@/lib/libc.so.6,\
             filter 0xffffffff81000000/0x1000,filter 0x1/0x1@/not/mapped,start 0x10@/bin/prog",
        )
        .unwrap();
        assert_eq!(
            resolve_entry(&entries[0], &maps),
            Some((0x5555_5555_5136, 0x5555_5555_5155))
        );
        let filter = address_filter(&entries, &maps);
        assert_eq!(
            filter.ranges,
            [
                AddrRange {
                    kind: AddrRangeKind::Filter,
                    start: 0x5555_5555_5136,
                    end: 0x5555_5555_5155,
                },
                AddrRange {
                    kind: AddrRangeKind::Stop,
                    start: 0x7f10_0000_2000,
                    end: 0x7f10_0000_200f,
                },
                AddrRange {
                    kind: AddrRangeKind::Filter,
                    start: 0xffff_ffff_8100_0000,
                    end: 0xffff_ffff_8100_0fff,
                },
                AddrRange::default(),
            ]
        );
        assert!(filter.allows(0x5555_5555_5140) && !filter.allows(0x5555_5555_5156));
        assert_eq!(address_filter(&[], &maps), AddrFilter::default());
    }
}
