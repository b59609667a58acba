//! Opening a recording (file, directory or pipe) and walking its records.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::Mmap;

use super::attr::{sample_type, EventAttr, ATTR_SIZE_VER0};
use super::bytes::{align8, Bytes};
use super::error::{Error, ErrorKind, Result};
use super::features::{feature, Features, FileHeader, Section, FILE_HEADER_SIZE};
use super::record::{
    parse_body, record_type, Auxtrace, Record, RecordBody, RecordHeader, Sample, SampleId, Source,
};

/// The bytes of one file: mapped when it is a regular file, read into memory otherwise.
enum Storage {
    Mapped(Mmap),
    Buffered(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Buffered(vec) => vec,
        }
    }

    fn open(path: &Path) -> Result<Storage> {
        let io = |e| Error::new(0, ErrorKind::Io(e)).in_file(path);
        if path.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin().lock().read_to_end(&mut buf).map_err(io)?;
            return Ok(Storage::Buffered(buf));
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() || meta.len() == 0 {
            // A FIFO or device cannot be mapped, and an empty file need not be.
            let mut buf = Vec::new();
            (&file).read_to_end(&mut buf).map_err(io)?;
            return Ok(Storage::Buffered(buf));
        }
        // SAFETY: the map is read-only and only ever read as `&[u8]`. It stays valid as long as
        // no one truncates or rewrites the file while we read it; perf.data files are finished
        // when perf exits, and perf itself reads them through mmap under the same assumption.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Storage::Mapped(map))
    }
}

struct DataFile {
    path: PathBuf,
    storage: Storage,
}

/// An opened perf.data recording: a file, a `perf.data/` directory (`data` plus `data.N`), or a
/// pipe-mode stream (`-` is stdin). Parse it with [`PerfData::recording`].
pub struct PerfData {
    path: PathBuf,
    files: Vec<DataFile>,
    /// Per file, the records decompressed from its COMPRESSED records (empty when it has none).
    decompressed: OnceLock<Vec<Vec<u8>>>,
}

impl PerfData {
    pub fn open(path: impl AsRef<Path>) -> Result<PerfData> {
        let path = path.as_ref();
        let mut files = Vec::new();
        if path.is_dir() {
            // `perf record --threads` (DIR_FORMAT): `data` holds the header and the main
            // records, `data.N` the records of each writer thread.
            let main = path.join("data");
            files.push(DataFile {
                storage: Storage::open(&main)?,
                path: main,
            });
            let io = |e| Error::new(0, ErrorKind::Io(e)).in_file(path);
            let mut numbered = Vec::new();
            for entry in std::fs::read_dir(path).map_err(io)? {
                let entry = entry.map_err(io)?;
                let name = entry.file_name();
                let n = name.to_str().and_then(|n| n.strip_prefix("data."));
                if let Some(n) = n.and_then(|n| n.parse::<u32>().ok()) {
                    numbered.push((n, entry.path()));
                }
            }
            numbered.sort();
            for (_, p) in numbered {
                files.push(DataFile {
                    storage: Storage::open(&p)?,
                    path: p,
                });
            }
        } else {
            files.push(DataFile {
                storage: Storage::open(path)?,
                path: path.to_path_buf(),
            });
        }
        Ok(PerfData {
            path: path.to_path_buf(),
            files,
            decompressed: OnceLock::new(),
        })
    }

    /// A recording held in memory (tests, or bytes that came from elsewhere); `path` names it in
    /// errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> PerfData {
        let path = path.into();
        PerfData {
            files: vec![DataFile {
                path: path.clone(),
                storage: Storage::Buffered(bytes),
            }],
            path,
            decompressed: OnceLock::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a record's [`Source`] refers to.
    pub fn file_path(&self, source: Source) -> &Path {
        let (Source::File(i) | Source::Decompressed(i)) = source;
        &self.files[i].path
    }

    /// Whether the main file is memory-mapped (so AUXTRACE payloads are slices of the mapping).
    pub fn is_mapped(&self) -> bool {
        matches!(self.files[0].storage, Storage::Mapped(_))
    }

    /// Parses the header, attrs and features, and prepares the record streams.
    pub fn recording(&self) -> Result<Recording<'_>> {
        Recording::parse(self).map_err(|e| e.in_file(&self.files[0].path))
    }
}

/// A record stream: a file's data section, a `data.N` file, or decompressed records.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    source: Source,
    bytes: Bytes<'a>,
    pos: usize,
    /// How long the header says the stream is; when the file holds less, that is an error.
    expected_len: u64,
}

/// A parsed recording: header, attrs with their ids, features, and access to the records.
pub struct Recording<'a> {
    pub data: &'a PerfData,
    pub header: FileHeader,
    pub attrs: Vec<EventAttr<'a>>,
    pub features: Features<'a>,
    /// Problems that do not stop reading records (e.g. a feature table cut off by truncation).
    pub warnings: Vec<Error>,
    streams: Vec<Cursor<'a>>,
    decompressed: Vec<Option<Bytes<'a>>>,
    id_to_attr: HashMap<u64, usize>,
}

impl<'a> Recording<'a> {
    fn parse(data: &'a PerfData) -> Result<Self> {
        let main = data.files[0].storage.bytes();
        let header = FileHeader::parse(main)?;
        let file = Bytes::new(main, 0, header.endian);
        let mut warnings = Vec::new();
        let mut attrs = Vec::new();
        let mut features = Features::default();
        let mut streams = Vec::new();

        if header.pipe {
            streams.push(Cursor {
                source: Source::File(0),
                bytes: file.tail(header.data.offset as usize),
                pos: 0,
                expected_len: 0,
            });
        } else {
            attrs = parse_attrs(&header, &file)?;
            match Features::parse_table(&header, &file) {
                Ok(f) => features = f,
                Err(e) => warnings.push(e.in_file(&data.files[0].path)),
            }
            // Clip the data section to the file: the record walk reports where it was cut.
            let start = (header.data.offset as usize).min(main.len());
            if start < FILE_HEADER_SIZE as usize && header.data.size > 0 {
                return Err(Error::invalid(
                    40,
                    "file header",
                    "data section overlaps the header",
                ));
            }
            let len = header.data.size.min((main.len() - start) as u64) as usize;
            streams.push(Cursor {
                source: Source::File(0),
                bytes: file.sub(start, len, "data section")?,
                pos: 0,
                expected_len: header.data.size,
            });
        }
        for (i, extra) in data.files.iter().enumerate().skip(1) {
            streams.push(Cursor {
                source: Source::File(i),
                bytes: Bytes::new(extra.storage.bytes(), 0, header.endian),
                pos: 0,
                expected_len: 0,
            });
        }

        // One pass over the record headers: pipe-mode attrs and features, and compressed data.
        let mut compressed: Vec<Vec<&'a [u8]>> = vec![Vec::new(); data.files.len()];
        for raw in RawRecords::new(streams.clone()) {
            let Ok(raw) = raw else { break };
            let Source::File(i) = raw.source else {
                continue;
            };
            match raw.header.type_ {
                record_type::COMPRESSED => compressed[i].push(raw.raw.tail(8).data),
                record_type::HEADER_ATTR
                | record_type::HEADER_FEATURE
                | record_type::HEADER_BUILD_ID
                    if header.pipe =>
                {
                    match parse_body(&raw.raw, &raw.header, raw.payload)? {
                        RecordBody::HeaderAttr(attr) => attrs.push(attr),
                        RecordBody::HeaderFeature { feature, data } => {
                            features.sections.push((feature as u32, data))
                        }
                        RecordBody::HeaderBuildId(id) => features.build_id_records.push(id),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let decompressed = if compressed.iter().any(|c| !c.is_empty()) {
            let out = data.decompressed.get_or_init(|| {
                compressed
                    .iter()
                    .map(|parts| decompress(parts).unwrap_or_default())
                    .collect()
            });
            // Decompress again only to report an error (rare): keeps the OnceLock infallible.
            for (i, parts) in compressed.iter().enumerate() {
                if !parts.is_empty() && out[i].is_empty() {
                    if let Err(e) = decompress(parts) {
                        return Err(
                            Error::new(0, ErrorKind::Decompress(e)).in_file(&data.files[i].path)
                        );
                    }
                }
            }
            out.iter()
                .map(|v| (!v.is_empty()).then(|| Bytes::new(v, 0, header.endian)))
                .collect()
        } else {
            vec![None; data.files.len()]
        };

        let mut id_to_attr = HashMap::new();
        for (i, attr) in attrs.iter().enumerate() {
            for &id in &attr.ids {
                id_to_attr.entry(id).or_insert(i);
            }
        }
        Ok(Recording {
            data,
            header,
            attrs,
            features,
            warnings,
            streams,
            decompressed,
            id_to_attr,
        })
    }

    /// Every record in file order (directory: `data`, then `data.0`, `data.1`, ...). The records
    /// decompressed from a file's COMPRESSED records follow its first COMPRESSED record (the
    /// zstd stream is one, so its records cannot be placed more precisely without decoding it
    /// in step). After an error the iterator ends.
    pub fn records(&self) -> Records<'_, 'a> {
        Records {
            recording: self,
            raw: RawRecords::new(self.streams.clone()),
            inserted: vec![false; self.decompressed.len()],
        }
    }

    /// The attr a sample id belongs to.
    pub fn attr_of_id(&self, id: u64) -> Option<usize> {
        self.id_to_attr.get(&id).copied()
    }

    /// The Intel PT attr: the one whose type is AUXTRACE_INFO's `pmu_type`.
    pub fn attr_by_type(&self, type_: u32) -> Option<usize> {
        self.attrs.iter().position(|a| a.type_ == type_)
    }

    /// Every AUXTRACE buffer, grouped by queue in file order: from the AUXTRACE index when the
    /// file has one, else by one walk over the records.
    pub fn aux_queues(&self) -> Result<AuxQueues<'a>> {
        let mut queues = AuxQueues::default();
        let path = &self.data.files[0].path;
        let index = if self.data.files.len() == 1 && !self.header.pipe {
            self.features
                .auxtrace_index()
                .map_err(|e| e.in_file(path))?
        } else {
            None
        };
        if let Some(index) = index {
            let file = Bytes::new(self.data.files[0].storage.bytes(), 0, self.header.endian);
            for entry in index {
                let cursor = Cursor {
                    source: Source::File(0),
                    bytes: file,
                    pos: usize::try_from(entry.file_offset).unwrap_or(usize::MAX),
                    expected_len: 0,
                };
                let raw = RawRecords::new(vec![cursor])
                    .next()
                    .unwrap_or_else(|| {
                        Err(Error::truncated(
                            entry.file_offset,
                            "AUXTRACE record",
                            48,
                            0,
                        ))
                    })
                    .map_err(|e| e.in_file(path))?;
                queues.push(raw.into_auxtrace().map_err(|e| e.in_file(path))?);
            }
        } else {
            for raw in RawRecords::new(self.streams.clone()) {
                let raw = raw.map_err(|e| e.in_file(path))?;
                if raw.header.type_ == record_type::AUXTRACE {
                    queues.push(raw.into_auxtrace().map_err(|e| e.in_file(path))?);
                }
            }
        }
        Ok(queues)
    }

    /// Finds the attr a record belongs to and parses its sample id, as perf does: one attr is
    /// that attr; otherwise the id (IDENTIFIER, or ID where the first attr puts it) decides.
    fn resolve(&self, raw: &RawRecord<'a>, body: RecordBody<'a>) -> Result<Record<'a>> {
        let (header, bytes) = (&raw.header, &raw.raw);
        let first = self.attrs.first();
        let is_sample = header.type_ == record_type::SAMPLE;
        let kernel = header.type_ < record_type::USER_TYPE_START;
        let mut attr = None;
        if kernel && !self.attrs.is_empty() {
            if self.attrs.len() == 1 {
                attr = Some(0);
            } else if let Some(first) = first {
                let st = first.sample_type;
                let id_at = if is_sample {
                    if st & sample_type::IDENTIFIER != 0 {
                        Some(8)
                    } else if st & sample_type::ID != 0 {
                        let before = [sample_type::IP, sample_type::TID, sample_type::TIME]
                            .iter()
                            .chain(&[sample_type::ADDR])
                            .filter(|&&b| st & b != 0)
                            .count();
                        Some(8 + 8 * before)
                    } else {
                        None
                    }
                } else if !first.sample_id_all() {
                    None
                } else if st & sample_type::IDENTIFIER != 0 {
                    bytes.len().checked_sub(8)
                } else if st & sample_type::ID != 0 {
                    let after = [sample_type::STREAM_ID, sample_type::CPU]
                        .iter()
                        .filter(|&&b| st & b != 0)
                        .count();
                    bytes.len().checked_sub(8 * (after + 1))
                } else {
                    None
                };
                attr = match id_at {
                    Some(at) if at >= RecordHeader::SIZE => match bytes.u64(at, "sample id") {
                        // Synthesized records have id 0; perf gives them the first event.
                        Ok(0) => Some(0),
                        Ok(id) => self.attr_of_id(id),
                        Err(_) => None,
                    },
                    // Without ids perf takes the first event.
                    _ => Some(0),
                };
            }
        }
        let mut sample_id = SampleId::default();
        let mut body = body;
        if let Some(a) = attr.map(|i| &self.attrs[i]) {
            if is_sample {
                let (sample, id) = Sample::parse(bytes, a.sample_type)?;
                sample_id = id;
                body = RecordBody::Sample(sample);
            } else if kernel && a.sample_id_all() {
                sample_id = SampleId::parse_trailer(bytes, a.sample_type)?;
            }
        }
        Ok(Record {
            source: raw.source,
            offset: raw.raw.offset,
            header: raw.header,
            raw: raw.raw,
            sample_id,
            attr,
            body,
        })
    }
}

fn parse_attrs<'a>(header: &FileHeader, file: &Bytes<'a>) -> Result<Vec<EventAttr<'a>>> {
    if header.attrs.size == 0 {
        return Ok(Vec::new());
    }
    let entry_size = header.attr_size;
    if entry_size < (ATTR_SIZE_VER0 + 16) as u64 || header.attrs.size % entry_size != 0 {
        return Err(Error::invalid(
            16,
            "file header",
            format!(
                "attr size {entry_size} does not divide attrs section of {} bytes",
                header.attrs.size
            ),
        ));
    }
    let section = header.attrs.bytes(file, "attrs section")?;
    let entry_size = entry_size as usize;
    let mut attrs = Vec::new();
    for i in 0..section.len() / entry_size {
        let entry = section.sub(i * entry_size, entry_size, "attr")?;
        let ids_section = Section {
            offset: entry.u64(entry_size - 16, "attr ids")?,
            size: entry.u64(entry_size - 8, "attr ids")?,
        };
        // Bounded by the file: `bytes` fails before anything is allocated for a bogus size.
        let ids = ids_section.bytes(file, "attr ids")?;
        let ids = (0..ids.len() / 8)
            .map(|k| ids.u64(8 * k, "attr ids"))
            .collect::<Result<_>>()?;
        attrs.push(EventAttr::parse(
            entry.sub(0, entry_size - 16, "attr")?,
            ids,
        )?);
    }
    Ok(attrs)
}

/// Decompresses one file's zstd stream. perf compresses all of a file's records with one zstd
/// stream that it flushes after each COMPRESSED record but never ends, so the payloads are
/// concatenated and an empty last block is appended to let the decoder finish the frame.
fn decompress(parts: &[&[u8]]) -> std::result::Result<Vec<u8>, String> {
    use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut input = Vec::with_capacity(total + 7);
    for p in parts {
        input.extend_from_slice(p);
    }
    // Last_Block = 1, Raw, size 0; then room for a checksum if the frame declares one.
    input.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0]);
    let mut src = &input[..];
    let mut decoder = FrameDecoder::new();
    decoder.init(&mut src).map_err(|e| e.to_string())?;
    decoder
        .decode_blocks(&mut src, BlockDecodingStrategy::All)
        .map_err(|e| e.to_string())?;
    decoder.collect().ok_or_else(|| "no output".to_string())
}

/// A record's bytes before decoding: what the header walk yields.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawRecord<'a> {
    source: Source,
    header: RecordHeader,
    raw: Bytes<'a>,
    /// Data stored after the record (AUXTRACE payload, pipe tracing data).
    payload: Bytes<'a>,
}

impl<'a> RawRecord<'a> {
    fn into_auxtrace(self) -> Result<AuxBuffer<'a>> {
        match parse_body(&self.raw, &self.header, self.payload)? {
            RecordBody::Auxtrace(auxtrace) => Ok(AuxBuffer {
                source: self.source,
                record_offset: self.raw.offset,
                auxtrace,
            }),
            _ => Err(Error::invalid(
                self.raw.offset,
                "AUXTRACE index",
                format!(
                    "entry points at a {} record",
                    record_type::name(self.header.type_).unwrap_or("unknown")
                ),
            )),
        }
    }
}

/// Walks record headers over a stack of streams; the top one is read first.
struct RawRecords<'a> {
    stack: Vec<Cursor<'a>>,
    error: Option<Error>,
    done: bool,
}

impl<'a> RawRecords<'a> {
    fn new(mut streams: Vec<Cursor<'a>>) -> Self {
        streams.reverse();
        RawRecords {
            stack: streams,
            error: None,
            done: false,
        }
    }

    fn step(&mut self) -> Option<Result<RawRecord<'a>>> {
        loop {
            let cur = self.stack.last_mut()?;
            if cur.pos >= cur.bytes.len() {
                let held = cur.bytes.len() as u64;
                if held < cur.expected_len {
                    let at = cur.bytes.offset + held;
                    return Some(Err(Error::truncated(
                        at,
                        "data section",
                        cur.expected_len - held,
                        0,
                    )));
                }
                self.stack.pop();
                continue;
            }
            let rest = cur.bytes.tail(cur.pos);
            return Some(Self::read(rest).map(|(raw, consumed, error)| {
                cur.pos = if error.is_some() {
                    usize::MAX
                } else {
                    cur.pos + consumed
                };
                self.error = error;
                RawRecord {
                    source: cur.source,
                    ..raw
                }
            }));
        }
    }

    /// Reads the record at the start of `rest`: the record, the bytes it occupies, and the error
    /// to report after it when its payload is cut off.
    fn read(rest: Bytes<'a>) -> Result<(RawRecord<'a>, usize, Option<Error>)> {
        let header = RecordHeader::parse(&rest)?;
        let what = record_type::name(header.type_).unwrap_or("record");
        let size = header.size as usize;
        if size < RecordHeader::SIZE {
            return Err(Error::invalid(
                rest.offset,
                what,
                format!("record size {size} < 8"),
            ));
        }
        let raw = rest.sub(0, size, what)?;
        let payload_len = match header.type_ {
            record_type::AUXTRACE => raw.u64(8, what)?,
            record_type::HEADER_TRACING_DATA => align8(raw.u32(8, what)? as u64),
            _ => 0,
        };
        let after = rest.tail(size);
        let held = (after.len() as u64).min(payload_len) as usize;
        let payload = after.sub(0, held, what)?;
        let error = if (held as u64) < payload_len {
            Some(Error::truncated(
                payload.offset,
                if header.type_ == record_type::AUXTRACE {
                    "AUXTRACE payload"
                } else {
                    what
                },
                payload_len,
                held as u64,
            ))
        } else {
            None
        };
        Ok((
            RawRecord {
                source: Source::File(0),
                header,
                raw,
                payload,
            },
            size + held,
            error,
        ))
    }
}

impl<'a> Iterator for RawRecords<'a> {
    type Item = Result<RawRecord<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.error.take() {
            self.done = true;
            return Some(Err(e));
        }
        let item = self.step();
        if matches!(item, Some(Err(_)) | None) {
            self.done = true;
        }
        item
    }
}

/// The records of a [`Recording`]; see [`Recording::records`].
pub struct Records<'r, 'a> {
    recording: &'r Recording<'a>,
    raw: RawRecords<'a>,
    inserted: Vec<bool>,
}

impl<'a> Iterator for Records<'_, 'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.recording.data;
        let raw = match self.raw.next()? {
            Ok(raw) => raw,
            Err(e) => return Some(Err(e.in_file(&data.files[0].path))),
        };
        let path = data.file_path(raw.source);
        if let (record_type::COMPRESSED, Source::File(i)) = (raw.header.type_, raw.source) {
            if let (false, Some(bytes)) = (self.inserted[i], self.recording.decompressed[i]) {
                self.inserted[i] = true;
                self.raw.stack.push(Cursor {
                    source: Source::Decompressed(i),
                    bytes,
                    pos: 0,
                    expected_len: 0,
                });
            }
        }
        let record = parse_body(&raw.raw, &raw.header, raw.payload)
            .and_then(|body| self.recording.resolve(&raw, body))
            .map_err(|e| e.in_file(path));
        if record.is_err() {
            self.raw.done = true;
        }
        Some(record)
    }
}

/// One AUXTRACE buffer: where its record is, and its payload (a slice of the mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuxBuffer<'a> {
    pub source: Source,
    pub record_offset: u64,
    pub auxtrace: Auxtrace<'a>,
}

/// One AUX queue: a CPU's (per-CPU recording) or a thread's buffers, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuxQueue<'a> {
    pub idx: u32,
    pub buffers: Vec<AuxBuffer<'a>>,
}

impl AuxQueue<'_> {
    /// The CPU of the queue's first buffer (`u32::MAX` = -1 in per-thread recordings).
    pub fn cpu(&self) -> Option<u32> {
        self.buffers.first().map(|b| b.auxtrace.cpu)
    }

    pub fn tid(&self) -> Option<u32> {
        self.buffers.first().map(|b| b.auxtrace.tid)
    }

    /// Bytes of trace in the queue (the payload sizes, padding included).
    pub fn size(&self) -> u64 {
        self.buffers.iter().map(|b| b.auxtrace.size).sum()
    }
}

/// The AUX queues of a recording, ordered by queue number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuxQueues<'a> {
    pub queues: Vec<AuxQueue<'a>>,
}

impl<'a> AuxQueues<'a> {
    fn push(&mut self, buffer: AuxBuffer<'a>) {
        let idx = buffer.auxtrace.idx;
        let at = match self.queues.binary_search_by_key(&idx, |q| q.idx) {
            Ok(at) => at,
            Err(at) => {
                self.queues.insert(
                    at,
                    AuxQueue {
                        idx,
                        buffers: Vec::new(),
                    },
                );
                at
            }
        };
        self.queues[at].buffers.push(buffer);
    }

    pub fn get(&self, idx: u32) -> Option<&AuxQueue<'a>> {
        self.queues.iter().find(|q| q.idx == idx)
    }
}

/// Whether a feature is present (file mode: the header bitmap; pipe mode: a HEADER_FEATURE).
impl Recording<'_> {
    pub fn has_feature(&self, f: u32) -> bool {
        self.header.has_feature(f) || self.features.get(f).is_some()
    }

    pub fn is_compressed(&self) -> bool {
        self.has_feature(feature::COMPRESSED) || self.decompressed.iter().any(|d| d.is_some())
    }
}
