//! Address spaces: the mappings MMAP/MMAP2 records made, each valid over a span of the record
//! sequence, as perf's `maps` holds them (tools/perf/util/maps.c).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::Instant;

/// A build id of up to 20 bytes (GNU build ids are 20; perf stores at most 20).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildIdBytes {
    bytes: [u8; 20],
    len: u8,
}

impl BuildIdBytes {
    /// The first 20 bytes of `id`.
    pub fn new(id: &[u8]) -> Self {
        let len = id.len().min(20);
        let mut bytes = [0; 20];
        bytes[..len].copy_from_slice(&id[..len]);
        BuildIdBytes {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Lower-case hex, as perf prints build ids and names them in the build-id cache.
impl fmt::Display for BuildIdBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_bytes()
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for BuildIdBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildIdBytes({self})")
    }
}

/// Device and inode of a mapped file (MMAP2 without a build id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    pub maj: u32,
    pub min: u32,
    pub ino: u64,
    pub ino_generation: u64,
}

/// One mapping: `[start, start + len)` maps the file from offset `pgoff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Map {
    pub start: u64,
    pub len: u64,
    pub pgoff: u64,
    pub filename: Arc<str>,
    /// MMAP2 only.
    pub prot: Option<u32>,
    pub flags: Option<u32>,
    pub inode: Option<Inode>,
    /// From the MMAP2 record, else from the BUILD_ID feature (by machine and filename).
    pub build_id: Option<BuildIdBytes>,
    /// The record's cpumode (`misc & 7`): 1 kernel, 2 user, 4 guest kernel, 5 guest user.
    pub cpumode: u16,
    /// Perf time of the record that made it (a map split by a later one keeps the original's).
    pub time: u64,
}

impl Map {
    /// One past the last address (saturating; a zero-length kernel map reaches the top).
    pub fn end(&self) -> u64 {
        if self.len == 0 && self.cpumode_is_kernel() {
            return u64::MAX;
        }
        self.start.saturating_add(self.len)
    }

    pub fn contains(&self, ip: u64) -> bool {
        ip >= self.start && ip < self.end()
    }

    /// Where `ip` is in the mapped file: `ip - start + pgoff`.
    pub fn file_offset(&self, ip: u64) -> u64 {
        ip.wrapping_sub(self.start).wrapping_add(self.pgoff)
    }

    pub fn cpumode_is_kernel(&self) -> bool {
        matches!(self.cpumode, 1 | 4)
    }

    /// Whether the map is executable (MMAP records carry no prot; perf records only
    /// executable mappings in them).
    pub fn is_exec(&self) -> bool {
        self.prot.is_none_or(|p| p & 4 != 0)
    }
}

/// A map and the part of the record sequence in which it was live.
#[derive(Clone, Debug)]
struct Entry {
    map: Arc<Map>,
    from: usize,
    until: usize,
}

impl Entry {
    /// Made by a change already applied at `at`, and not replaced by one applied.
    fn live_at(&self, at: Instant) -> bool {
        self.from < at.0 && at.0 <= self.until
    }
}

/// One address space: a process's user space, or a machine's kernel space.
#[derive(Clone, Debug, Default)]
pub struct AddressSpace {
    /// Sorted by start address.
    entries: Vec<Entry>,
    /// `max_end[i]`: the largest end among `entries[..=i]`, to stop a backwards scan early.
    max_end: Vec<u64>,
    /// While building: start address → index of the live entry there.
    live: BTreeMap<u64, usize>,
}

impl AddressSpace {
    /// Adds `map` at sequence number `seq`. Live maps it overlaps end there; the parts of them
    /// outside it live on as new maps, as perf's `maps__fixup_overlappings` splits them.
    pub(crate) fn insert(&mut self, map: Arc<Map>, seq: usize) {
        let (start, end) = (map.start, map.end());
        let overlapping: Vec<(u64, usize)> = self
            .live
            .range(..end.max(start.saturating_add(1)))
            .rev()
            .map(|(&s, &i)| (s, i))
            // Live maps are disjoint, so their ends ascend with their starts.
            .take_while(|&(_, i)| self.entries[i].map.end() > start)
            .collect();
        for (s, i) in overlapping {
            self.live.remove(&s);
            self.entries[i].until = seq;
            let old = self.entries[i].map.clone();
            if old.start < start {
                let mut left = (*old).clone();
                left.len = start - old.start;
                self.push_live(Arc::new(left), seq);
            }
            if old.end() > end {
                let mut right = (*old).clone();
                right.start = end;
                right.len = old.end() - end;
                right.pgoff = old.pgoff.wrapping_add(end - old.start);
                self.push_live(Arc::new(right), seq);
            }
        }
        self.push_live(map, seq);
    }

    fn push_live(&mut self, map: Arc<Map>, seq: usize) {
        self.live.insert(map.start, self.entries.len());
        self.entries.push(Entry {
            map,
            from: seq,
            until: usize::MAX,
        });
    }

    /// The maps live now, for a child process to inherit at `seq`.
    pub(crate) fn clone_live(&self, seq: usize) -> AddressSpace {
        let mut child = AddressSpace::default();
        for &i in self.live.values() {
            child.push_live(self.entries[i].map.clone(), seq);
        }
        child
    }

    /// Sorts for queries once building is done.
    pub(crate) fn finish(&mut self) {
        self.live.clear();
        self.entries.sort_by_key(|e| (e.map.start, e.from));
        let mut max = 0;
        self.max_end = self
            .entries
            .iter()
            .map(|e| {
                max = max.max(e.map.end());
                max
            })
            .collect();
    }

    /// The map containing `ip` at `at`.
    pub fn find(&self, ip: u64, at: Instant) -> Option<&Map> {
        let upto = self.entries.partition_point(|e| e.map.start <= ip);
        for i in (0..upto).rev() {
            if self.max_end[i] <= ip {
                break;
            }
            let e = &self.entries[i];
            if e.live_at(at) && e.map.contains(ip) {
                return Some(&e.map);
            }
        }
        None
    }

    /// Every map that was ever live here, by start address.
    pub fn maps(&self) -> impl Iterator<Item = &Map> {
        self.entries.iter().map(|e| &*e.map)
    }

    /// The maps live at `at`, by start address.
    pub fn maps_at(&self, at: Instant) -> impl Iterator<Item = &Map> {
        self.entries
            .iter()
            .filter(move |e| e.live_at(at))
            .map(|e| &*e.map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(start: u64, len: u64, pgoff: u64, name: &str) -> Arc<Map> {
        Arc::new(Map {
            start,
            len,
            pgoff,
            filename: name.into(),
            prot: Some(5),
            flags: None,
            inode: None,
            build_id: None,
            cpumode: 2,
            time: 0,
        })
    }

    fn name(space: &AddressSpace, ip: u64, at: usize) -> Option<(String, u64)> {
        space
            .find(ip, Instant(at))
            .map(|m| (m.filename.to_string(), m.file_offset(ip)))
    }

    #[test]
    fn overlapping_maps_split_what_they_cover() {
        let mut s = AddressSpace::default();
        s.insert(map(0x1000, 0x3000, 0x10000, "a"), 0);
        s.insert(map(0x2000, 0x1000, 0, "b"), 1);
        s.finish();
        // Before b: a everywhere.
        assert_eq!(name(&s, 0x2800, 1), Some(("a".into(), 0x11800)));
        // After b: a's left and right parts keep their file offsets; b in the middle.
        assert_eq!(name(&s, 0x1800, 2), Some(("a".into(), 0x10800)));
        assert_eq!(name(&s, 0x2800, 2), Some(("b".into(), 0x800)));
        assert_eq!(name(&s, 0x3800, 2), Some(("a".into(), 0x12800)));
        assert_eq!(s.find(0x3800, Instant(2)).unwrap().start, 0x3000);
        assert_eq!(name(&s, 0x4000, 2), None);
        assert_eq!(name(&s, 0x1000, 0), None, "nothing before the first change");
        assert_eq!(s.maps_at(Instant(2)).count(), 3);
        assert_eq!(s.maps().count(), 4);
    }

    #[test]
    fn a_child_inherits_the_live_maps() {
        let mut parent = AddressSpace::default();
        parent.insert(map(0x1000, 0x1000, 0, "a"), 0);
        parent.insert(map(0x1800, 0x1000, 0, "b"), 1);
        let mut child = parent.clone_live(2);
        child.insert(map(0x1000, 0x100, 0, "c"), 3);
        parent.finish();
        child.finish();
        assert_eq!(name(&child, 0x1000, 2), None, "not before the fork");
        assert_eq!(name(&child, 0x1200, 3), Some(("a".into(), 0x200)));
        assert_eq!(name(&child, 0x1900, 3), Some(("b".into(), 0x100)));
        assert_eq!(name(&child, 0x1000, 4), Some(("c".into(), 0)));
        assert_eq!(name(&parent, 0x1000, 4), Some(("a".into(), 0)));
    }
}
