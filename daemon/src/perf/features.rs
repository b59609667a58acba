//! The file header and the header features (tools/perf/util/header.{h,c}).

use super::bytes::{Bytes, Endian};
use super::error::{Error, ErrorKind, Result};
use super::record::{misc, RecordHeader};

/// Feature numbers (`HEADER_*` in tools/perf/util/header.h).
pub mod feature {
    pub const TRACING_DATA: u32 = 1;
    pub const BUILD_ID: u32 = 2;
    pub const HOSTNAME: u32 = 3;
    pub const OSRELEASE: u32 = 4;
    pub const VERSION: u32 = 5;
    pub const ARCH: u32 = 6;
    pub const NRCPUS: u32 = 7;
    pub const CPUDESC: u32 = 8;
    pub const CPUID: u32 = 9;
    pub const TOTAL_MEM: u32 = 10;
    pub const CMDLINE: u32 = 11;
    pub const EVENT_DESC: u32 = 12;
    pub const PMU_MAPPINGS: u32 = 16;
    pub const AUXTRACE: u32 = 18;
    pub const DIR_FORMAT: u32 = 24;
    pub const COMPRESSED: u32 = 27;
}

/// `PERFILE2` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PERFILE2");
/// The file-mode header size; a pipe starts with a 16-byte one (magic, size).
pub const FILE_HEADER_SIZE: u64 = 104;
pub const PIPE_HEADER_SIZE: u64 = 16;

/// `{offset, size}` of a part of the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub offset: u64,
    pub size: u64,
}

impl Section {
    fn parse(b: &Bytes<'_>, at: usize, what: &'static str) -> Result<Self> {
        Ok(Section {
            offset: b.u64(at, what)?,
            size: b.u64(at + 8, what)?,
        })
    }

    /// The section's bytes, or an error if the file does not hold all of them.
    pub fn bytes<'a>(&self, file: &Bytes<'a>, what: &'static str) -> Result<Bytes<'a>> {
        let (start, len) = (usize::try_from(self.offset), usize::try_from(self.size));
        match (start, len) {
            (Ok(start), Ok(len)) if start <= file.len() => file.sub(start, len, what),
            _ => Err(Error::truncated(self.offset, what, self.size, 0)),
        }
    }
}

/// The start of a perf.data file: its byte order and, in file mode, the section table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub endian: Endian,
    /// Pipe mode (`perf record -o -`): no sections; attrs and features arrive as records.
    pub pipe: bool,
    pub size: u64,
    pub attr_size: u64,
    pub attrs: Section,
    pub data: Section,
    pub event_types: Section,
    /// The feature bitmap (256 bits).
    pub features: [u64; 4],
}

impl FileHeader {
    pub fn parse(file: &[u8]) -> Result<Self> {
        if file.is_empty() {
            return Err(Error::new(0, ErrorKind::Empty));
        }
        let magic: [u8; 8] = match file.get(..8) {
            Some(m) => m.try_into().expect("8 bytes"),
            None => {
                return Err(Error::truncated(0, "file header", 8, file.len() as u64));
            }
        };
        let endian = match u64::from_le_bytes(magic) {
            MAGIC => Endian::Little,
            m if m.swap_bytes() == MAGIC => Endian::Big,
            _ => return Err(Error::new(0, ErrorKind::BadMagic(magic.to_vec()))),
        };
        let b = Bytes::new(file, 0, endian);
        let size = b.u64(8, "file header")?;
        if size == PIPE_HEADER_SIZE {
            return Ok(FileHeader {
                endian,
                pipe: true,
                size,
                attr_size: 0,
                attrs: Section::default(),
                data: Section {
                    offset: PIPE_HEADER_SIZE,
                    size: (file.len() as u64).saturating_sub(PIPE_HEADER_SIZE),
                },
                event_types: Section::default(),
                features: [0; 4],
            });
        }
        if size < FILE_HEADER_SIZE {
            return Err(Error::invalid(
                8,
                "file header",
                format!("header size {size} < 104"),
            ));
        }
        b.slice(0, FILE_HEADER_SIZE as usize, "file header")?;
        let mut features = [0; 4];
        for (i, word) in features.iter_mut().enumerate() {
            *word = b.u64(72 + 8 * i, "file header")?;
        }
        Ok(FileHeader {
            endian,
            pipe: false,
            size,
            attr_size: b.u64(16, "file header")?,
            attrs: Section::parse(&b, 24, "file header")?,
            data: Section::parse(&b, 40, "file header")?,
            event_types: Section::parse(&b, 56, "file header")?,
            features,
        })
    }

    pub fn has_feature(&self, feature: u32) -> bool {
        feature < 256 && self.features[feature as usize / 64] >> (feature % 64) & 1 != 0
    }
}

/// The header features: each one's bytes, found in the feature table (file mode) or in
/// HEADER_FEATURE records (pipe mode).
#[derive(Clone, Debug, Default)]
pub struct Features<'a> {
    pub sections: Vec<(u32, Bytes<'a>)>,
    /// Pipe mode: build ids that came as HEADER_BUILD_ID records.
    pub(crate) build_id_records: Vec<BuildId<'a>>,
}

impl<'a> Features<'a> {
    /// Reads the feature table that follows the data section.
    pub fn parse_table(header: &FileHeader, file: &Bytes<'a>) -> Result<Self> {
        let table_start = header.data.offset.saturating_add(header.data.size);
        let count = header.features.iter().map(|w| w.count_ones()).sum::<u32>() as usize;
        let table = Section {
            offset: table_start,
            size: 16 * count as u64,
        }
        .bytes(file, "feature table")?;
        let mut sections = Vec::with_capacity(count);
        let mut n = 0;
        for feature in 0..256u32 {
            if !header.has_feature(feature) {
                continue;
            }
            let section = Section::parse(&table, 16 * n, "feature table")?;
            n += 1;
            // A feature that points outside the file is dropped, as perf does, not fatal: the
            // records may still be readable.
            if let Ok(bytes) = section.bytes(file, "feature section") {
                sections.push((feature, bytes));
            }
        }
        Ok(Features {
            sections,
            build_id_records: Vec::new(),
        })
    }

    pub fn get(&self, feature: u32) -> Option<Bytes<'a>> {
        self.sections
            .iter()
            .find(|(f, _)| *f == feature)
            .map(|(_, b)| *b)
    }

    /// A string feature (HOSTNAME, OSRELEASE, ARCH, CPUDESC, CPUID, VERSION...).
    pub fn string(&self, feature: u32) -> Result<Option<String>> {
        self.get(feature)
            .map(|b| read_string(&b, 0).map(|(s, _)| s))
            .transpose()
    }

    pub fn build_ids(&self) -> Result<Vec<BuildId<'a>>> {
        let mut out = self.build_id_records.clone();
        if let Some(mut b) = self.get(feature::BUILD_ID) {
            while b.len() >= RecordHeader::SIZE {
                let header = RecordHeader::parse(&b)?;
                let size = header.size as usize;
                if size < RecordHeader::SIZE {
                    return Err(Error::invalid(
                        b.offset,
                        "build id entry",
                        format!("size {size}"),
                    ));
                }
                out.push(BuildId::parse(b.sub(0, size, "build id entry")?)?);
                b = b.tail(size);
            }
        }
        Ok(out)
    }

    /// The AUXTRACE index: the file offset and size of every AUXTRACE record.
    pub fn auxtrace_index(&self) -> Result<Option<Vec<AuxtraceIndexEntry>>> {
        let Some(b) = self.get(feature::AUXTRACE) else {
            return Ok(None);
        };
        let nr = b.u64(0, "AUXTRACE index")?;
        if nr > (b.len() as u64 - 8) / 16 {
            return Err(Error::invalid(
                b.offset,
                "AUXTRACE index",
                format!("{nr} entries do not fit in {} bytes", b.len()),
            ));
        }
        (0..nr as usize)
            .map(|i| {
                Ok(AuxtraceIndexEntry {
                    file_offset: b.u64(8 + 16 * i, "AUXTRACE index")?,
                    size: b.u64(16 + 16 * i, "AUXTRACE index")?,
                })
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    pub fn nr_cpus(&self) -> Result<Option<NrCpus>> {
        self.get(feature::NRCPUS)
            .map(|b| {
                Ok(NrCpus {
                    available: b.u32(0, "NRCPUS")?,
                    online: b.u32(4, "NRCPUS")?,
                })
            })
            .transpose()
    }

    pub fn pmu_mappings(&self) -> Result<Vec<PmuMapping>> {
        let Some(b) = self.get(feature::PMU_MAPPINGS) else {
            return Ok(Vec::new());
        };
        let nr = b.u32(0, "PMU_MAPPINGS")?;
        let mut at = 4;
        let mut out = Vec::new();
        for _ in 0..nr {
            let type_ = b.u32(at, "PMU_MAPPINGS")?;
            let (name, next) = read_string(&b, at + 4)?;
            out.push(PmuMapping { type_, name });
            at = next;
        }
        Ok(out)
    }

    pub fn dir_format(&self) -> Result<Option<u64>> {
        self.get(feature::DIR_FORMAT)
            .map(|b| b.u64(0, "DIR_FORMAT"))
            .transpose()
    }

    pub fn compressed(&self) -> Result<Option<Compression>> {
        self.get(feature::COMPRESSED)
            .map(|b| {
                let f = |i: usize| b.u32(4 * i, "COMPRESSED");
                Ok(Compression {
                    version: f(0)?,
                    type_: f(1)?,
                    level: f(2)?,
                    ratio: f(3)?,
                    mmap_len: f(4)?,
                })
            })
            .transpose()
    }
}

/// perf's header string: u32 length, then that many bytes (NUL-terminated, padded). Returns the
/// string and the offset after it.
fn read_string(b: &Bytes<'_>, at: usize) -> Result<(String, usize)> {
    let len = b.u32(at, "header string")? as usize;
    let bytes = b.sub(at + 4, len, "header string")?;
    Ok((
        String::from_utf8_lossy(bytes.cstr(0)).into_owned(),
        at + 4 + len,
    ))
}

/// One BUILD_ID entry: the build id of a file a process (or a guest, by cpumode) mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildId<'a> {
    /// -1 for the host; a guest's entries carry the VM's pid.
    pub pid: i32,
    /// `misc & 7`: 1 kernel, 2 user, 4 guest kernel, 5 guest user.
    pub cpumode: u16,
    pub id: &'a [u8],
    pub filename: &'a [u8],
}

impl<'a> BuildId<'a> {
    /// Parses `struct perf_record_header_build_id` (header, pid, 24-byte id area, filename).
    pub fn parse(b: Bytes<'a>) -> Result<Self> {
        let header = RecordHeader::parse(&b)?;
        let len = if header.misc & misc::BUILD_ID_SIZE != 0 {
            (b.u8(32, "build id entry")? as usize).min(20)
        } else {
            20
        };
        Ok(BuildId {
            pid: b.i32(8, "build id entry")?,
            cpumode: header.cpumode(),
            id: b.slice(12, len, "build id entry")?,
            filename: b.slice(36, 0, "build id entry").map(|_| b.cstr(36))?,
        })
    }

    pub fn is_guest(&self) -> bool {
        matches!(self.cpumode, misc::GUEST_KERNEL | misc::GUEST_USER)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuxtraceIndexEntry {
    pub file_offset: u64,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NrCpus {
    pub available: u32,
    pub online: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PmuMapping {
    pub type_: u32,
    pub name: String,
}

/// The COMPRESSED feature: how `perf record -z` compressed records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    pub version: u32,
    /// 1 = zstd.
    pub type_: u32,
    pub level: u32,
    pub ratio: u32,
    pub mmap_len: u32,
}
