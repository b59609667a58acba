//! Intel PT address filters as perf records them (AUXTRACE_INFO, after priv[16]), parsed, and
//! applied as perf 6.1's decoder applies them: not as address ranges fixed per queue, but at
//! each TIP.PGD, through the current thread's maps ([`RecordedFilter`], the flow decoder's
//! [`PgdFilter`]).
//!
//! The recorded text is what `perf record --filter` resolved: entries such as
//! `filter 0x1136/0x20@/path/to/bin` (a file offset and size within that binary) or, without
//! `@`, kernel addresses; entries are separated by commas and/or spaces. The grammar follows
//! perf 6.1's bare filter parser: an action (`filter`, `start`, `stop`, `tracestop`), an address
//! (a C integer: `0x` hex, leading-`0` octal, or decimal), an optional `/size`, an optional
//! `@file` (ending at a space or comma). perf writes `tracestop` back as `stop` with a size;
//! both mean a TraceStop range here.

use std::fmt;

use crate::pt::flow::{Context, PgdFilter};

use super::image::RecordingImage;

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

/// perf's `kernel_start` on x86_64: the only addresses above 2^63 are the kernel's.
const KERNEL_START: u64 = 1 << 63;

/// perf 6.1's verdict on a TIP.PGD's branch target (`intel_pt_match_pgd_ip`), the target being at
/// `offset` of `file` (a kernel address, with `file` `None`): it left the traced region when it
/// is in a `stop` range, or when there are `filter`/`start` entries and it is in none of their
/// ranges. Entries match by exact file name; a kernel entry only a kernel address.
pub fn pgd_leaves(entries: &[FilterEntry], file: Option<&str>, offset: u64) -> bool {
    let starts = |e: &FilterEntry| matches!(e.action, FilterAction::Filter | FilterAction::Start);
    let have_filter = entries.iter().any(starts);
    let (mut hit_filter, mut hit_stop) = (false, false);
    for e in entries {
        if e.path.as_deref() != file {
            continue;
        }
        if offset.checked_sub(e.offset).is_none_or(|d| d >= e.size) {
            continue;
        }
        if starts(e) {
            hit_filter = true;
        } else {
            hit_stop = true;
        }
    }
    hit_stop || (have_filter && !hit_filter)
}

/// The recorded filter applied as perf applies it (its `pgd_ip` callback): at each TIP.PGD the
/// branch target is looked up in the process and at the moment the decoder's [`Context`] names
/// (the queue's current thread, the sideband applied so far: the same maps code is read
/// through), turned into a file offset and judged by [`pgd_leaves`]. A user address no map
/// covers does not leave (perf cannot look it up either).
pub struct RecordedFilter<'i> {
    entries: Vec<FilterEntry>,
    image: &'i RecordingImage<'i>,
}

impl<'i> RecordedFilter<'i> {
    /// `entries` as [`parse_filter`] gives them, resolved through `image`'s sideband.
    pub fn new(entries: Vec<FilterEntry>, image: &'i RecordingImage<'i>) -> Self {
        RecordedFilter { entries, image }
    }

    pub fn entries(&self) -> &[FilterEntry] {
        &self.entries
    }
}

impl PgdFilter for RecordedFilter<'_> {
    fn leaves(&self, ctx: &Context, ip: u64) -> bool {
        if ip >= KERNEL_START {
            return pgd_leaves(&self.entries, None, ip);
        }
        match self.image.map_for(ctx, ip) {
            Some(map) => pgd_leaves(&self.entries, Some(&map.filename), map.file_offset(ip)),
            None => false,
        }
    }
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
    fn pgd_verdicts_as_perf() {
        let entries = parse_filter(
            "filter 0x1136/0x20@/bin/prog,filter 0x1200/0x10@/bin/prog,\
             tracestop 0x2000/0x10@/lib/libc.so.6,filter 0xffffffff81000000/0x1000",
        )
        .unwrap();
        let leaves = |file, offset| pgd_leaves(&entries, file, offset);
        // Inside either range of the program: still traced.
        assert!(!leaves(Some("/bin/prog"), 0x1136));
        assert!(!leaves(Some("/bin/prog"), 0x1155));
        assert!(!leaves(Some("/bin/prog"), 0x120f));
        // Just past a range, another file, another name for the file: out.
        assert!(leaves(Some("/bin/prog"), 0x1156));
        assert!(leaves(Some("/bin/prog"), 0x1210));
        assert!(leaves(Some("/lib/libc.so.6"), 0x1140));
        assert!(leaves(Some("prog"), 0x1140));
        // A stop range stops; a kernel range matches kernel addresses only.
        assert!(leaves(Some("/lib/libc.so.6"), 0x2008));
        assert!(!leaves(None, 0xffffffff81000010));
        assert!(leaves(None, 0xffffffff81001000));
        // Only stop ranges: everything else stays traced.
        let stops = parse_filter("stop 0x2000/0x10@/lib/libc.so.6").unwrap();
        assert!(!pgd_leaves(&stops, Some("/bin/prog"), 0x1140));
        assert!(pgd_leaves(&stops, Some("/lib/libc.so.6"), 0x200f));
        // `start` counts as a filter (it has no size, so nothing is inside it).
        let start = parse_filter("start 0x1136@/bin/prog").unwrap();
        assert!(pgd_leaves(&start, Some("/bin/prog"), 0x1136));
        assert!(!pgd_leaves(&[], Some("/bin/prog"), 0x1136));
        // No overflow at the top of the address space.
        let top = parse_filter("filter 0xffffffffffffff00/0x100").unwrap();
        assert!(!pgd_leaves(&top, None, u64::MAX));
    }
}
