//! A perf.data writer (file mode, little-endian): header, attrs with ids, records, and the feature
//! sections perf needs to decode Intel PT (`tools/perf/util/header.c`, `include/uapi/linux/perf_event.h`;
//! layouts summarised in `shared/formats.md`).

use std::io::{self, Write};

/// Record types (`enum perf_event_type`, `enum perf_user_event_type`).
pub mod record_type {
    pub const EXIT: u32 = 4;
    pub const COMM: u32 = 3;
    pub const FORK: u32 = 7;
    pub const MMAP2: u32 = 10;
    pub const AUX: u32 = 11;
    pub const ITRACE_START: u32 = 12;
    pub const SWITCH_CPU_WIDE: u32 = 15;
    pub const FINISHED_ROUND: u32 = 68;
    pub const ID_INDEX: u32 = 69;
    pub const AUXTRACE_INFO: u32 = 70;
    pub const AUXTRACE: u32 = 71;
    pub const TIME_CONV: u32 = 79;
}

/// `perf_event_attr.sample_type` bits.
pub mod sample {
    pub const IP: u64 = 1 << 0;
    pub const TID: u64 = 1 << 1;
    pub const TIME: u64 = 1 << 2;
    pub const CPU: u64 = 1 << 7;
    pub const IDENTIFIER: u64 = 1 << 16;
}

/// `perf_event_attr` flag bits.
pub mod attr_flag {
    pub const DISABLED: u64 = 1 << 0;
    pub const INHERIT: u64 = 1 << 1;
    pub const EXCLUDE_KERNEL: u64 = 1 << 5;
    pub const EXCLUDE_HV: u64 = 1 << 6;
    pub const MMAP: u64 = 1 << 8;
    pub const COMM: u64 = 1 << 9;
    pub const ENABLE_ON_EXEC: u64 = 1 << 12;
    pub const TASK: u64 = 1 << 13;
    pub const SAMPLE_ID_ALL: u64 = 1 << 18;
    pub const EXCLUDE_GUEST: u64 = 1 << 20;
    pub const MMAP2: u64 = 1 << 23;
    pub const COMM_EXEC: u64 = 1 << 24;
    pub const CONTEXT_SWITCH: u64 = 1 << 26;
}

/// `header.misc` bits.
pub mod misc {
    pub const USER: u16 = 2;
    pub const COMM_EXEC: u16 = 1 << 13;
    pub const SWITCH_OUT: u16 = 1 << 13;
    pub const SWITCH_OUT_PREEMPT: u16 = 1 << 14;
    pub const BUILD_ID_SIZE: u16 = 1 << 15;
}

const FEAT_BUILD_ID: usize = 2;
const FEAT_AUXTRACE: usize = 18;
/// The features we write, in bit order (the order of their sections).
const FEATURES: [usize; 2] = [FEAT_BUILD_ID, FEAT_AUXTRACE];

/// The size of the attr we write (PERF_ATTR_SIZE_VER7).
const ATTR_SIZE: usize = 128;
const HEADER_SIZE: usize = 104;

/// An event attribute and the ids of its events.
#[derive(Clone, Debug)]
pub struct Attr {
    pub type_: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub flags: u64,
    pub ids: Vec<u64>,
}

impl Attr {
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; ATTR_SIZE];
        b[0..4].copy_from_slice(&self.type_.to_le_bytes());
        b[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_le_bytes());
        b[8..16].copy_from_slice(&self.config.to_le_bytes());
        b[16..24].copy_from_slice(&self.sample_period.to_le_bytes());
        b[24..32].copy_from_slice(&self.sample_type.to_le_bytes());
        b[40..48].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// The sample-id trailer of a non-sample record. Which fields are written follows the sample_type given
/// to [`PerfData::new`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleId {
    pub pid: i32,
    pub tid: i32,
    pub time: u64,
    pub cpu: u32,
    pub id: u64,
}

/// One BUILD_ID feature entry.
#[derive(Clone, Debug)]
pub struct BuildIdEntry {
    pub pid: i32,
    pub misc: u16,
    pub build_id: Vec<u8>,
    pub filename: String,
}

/// A perf.data file being assembled in memory.
#[derive(Debug)]
pub struct PerfData {
    attrs: Vec<Attr>,
    /// The sample_type that decides the trailer layout (all attrs share it).
    sample_type: u64,
    data: Vec<u8>,
    /// Bytes of records already handed out by [`PerfData::take_data`] (streamed to a file).
    data_taken: u64,
    /// (offset in the data section, header size) of each AUXTRACE record.
    auxtrace_index: Vec<(u64, u64)>,
    build_ids: Vec<BuildIdEntry>,
}

impl PerfData {
    pub fn new(attrs: Vec<Attr>) -> Self {
        let sample_type = attrs.first().map_or(0, |a| a.sample_type);
        PerfData {
            attrs,
            sample_type,
            data: Vec::new(),
            data_taken: 0,
            auxtrace_index: Vec::new(),
            build_ids: Vec::new(),
        }
    }

    /// Appends a record: header, `body` padded to 8 bytes, then the sample-id trailer if given.
    pub fn record(&mut self, type_: u32, misc: u16, body: &[u8], sid: Option<&SampleId>) {
        let mut rec = Vec::with_capacity(8 + body.len() + 48);
        rec.extend_from_slice(&[0; 8]);
        rec.extend_from_slice(body);
        pad8(&mut rec);
        if let Some(s) = sid {
            let st = self.sample_type;
            if st & sample::TID != 0 {
                rec.extend_from_slice(&s.pid.to_le_bytes());
                rec.extend_from_slice(&s.tid.to_le_bytes());
            }
            if st & sample::TIME != 0 {
                rec.extend_from_slice(&s.time.to_le_bytes());
            }
            if st & sample::CPU != 0 {
                rec.extend_from_slice(&s.cpu.to_le_bytes());
                rec.extend_from_slice(&0u32.to_le_bytes());
            }
            if st & sample::IDENTIFIER != 0 {
                rec.extend_from_slice(&s.id.to_le_bytes());
            }
        }
        let size = u16::try_from(rec.len()).expect("record larger than 64 KiB");
        rec[0..4].copy_from_slice(&type_.to_le_bytes());
        rec[4..6].copy_from_slice(&misc.to_le_bytes());
        rec[6..8].copy_from_slice(&size.to_le_bytes());
        self.data.extend_from_slice(&rec);
    }

    pub fn comm(&mut self, pid: i32, tid: i32, comm: &str, exec: bool, sid: &SampleId) {
        let mut b = Vec::new();
        b.extend_from_slice(&pid.to_le_bytes());
        b.extend_from_slice(&tid.to_le_bytes());
        push_cstr(&mut b, comm);
        let misc = if exec { misc::COMM_EXEC } else { 0 };
        self.record(record_type::COMM, misc, &b, Some(sid));
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mmap2(&mut self, pid: i32, tid: i32, map: &crate::trace::Mapping, sid: &SampleId) {
        let mut b = Vec::new();
        b.extend_from_slice(&pid.to_le_bytes());
        b.extend_from_slice(&tid.to_le_bytes());
        b.extend_from_slice(&map.start.to_le_bytes());
        b.extend_from_slice(&(map.end - map.start).to_le_bytes());
        b.extend_from_slice(&map.pgoff.to_le_bytes());
        b.extend_from_slice(&map.dev_major.to_le_bytes());
        b.extend_from_slice(&map.dev_minor.to_le_bytes());
        b.extend_from_slice(&map.inode.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // ino_generation
        b.extend_from_slice(&map.prot.to_le_bytes());
        b.extend_from_slice(&map.flags.to_le_bytes());
        push_cstr(&mut b, &map.path);
        self.record(record_type::MMAP2, misc::USER, &b, Some(sid));
    }

    /// FORK (`exit` false) or EXIT (`exit` true).
    pub fn task(&mut self, exit: bool, pid: i32, ppid: i32, tid: i32, ptid: i32, sid: &SampleId) {
        let mut b = Vec::new();
        for v in [pid, ppid, tid, ptid] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&sid.time.to_le_bytes());
        let t = if exit {
            record_type::EXIT
        } else {
            record_type::FORK
        };
        self.record(t, 0, &b, Some(sid));
    }

    pub fn itrace_start(&mut self, pid: i32, tid: i32, sid: &SampleId) {
        let mut b = Vec::new();
        b.extend_from_slice(&pid.to_le_bytes());
        b.extend_from_slice(&tid.to_le_bytes());
        self.record(record_type::ITRACE_START, 0, &b, Some(sid));
    }

    pub fn aux(&mut self, offset: u64, size: u64, flags: u64, sid: &SampleId) {
        let mut b = Vec::new();
        for v in [offset, size, flags] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.record(record_type::AUX, 0, &b, Some(sid));
    }

    /// AUXTRACE_INFO for Intel PT (type 1) with the given `priv` words.
    pub fn auxtrace_info(&mut self, priv_: &[u64]) {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in priv_ {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.record(record_type::AUXTRACE_INFO, 0, &b, None);
    }

    pub fn time_conv(&mut self, shift: u64, mult: u64, zero: u64, cap_user_time_zero: bool) {
        let mut b = Vec::new();
        for v in [shift, mult, zero, 0, u64::MAX] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.push(u8::from(cap_user_time_zero));
        b.push(0); // cap_user_time_short
        self.record(record_type::TIME_CONV, 0, &b, None);
    }

    /// An AUXTRACE record: 48-byte header, then `payload` padded to 8 bytes (the padding counted in
    /// `size`, not in the header size). `reference` is the TSC when perf read the buffer: perf's Intel PT
    /// decoder ignores TSC packets until it has a timestamp, and takes its first one from here.
    pub fn auxtrace(
        &mut self,
        payload: &[u8],
        offset: u64,
        reference: u64,
        idx: u32,
        tid: i32,
        cpu: i32,
    ) {
        let padded = payload.len().div_ceil(8) * 8;
        let at = self.data_taken + self.data.len() as u64;
        let mut b = Vec::new();
        b.extend_from_slice(&(padded as u64).to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&reference.to_le_bytes());
        b.extend_from_slice(&idx.to_le_bytes());
        b.extend_from_slice(&tid.to_le_bytes());
        b.extend_from_slice(&cpu.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        self.record(record_type::AUXTRACE, 0, &b, None);
        self.data.extend_from_slice(payload);
        self.data
            .resize(self.data.len() + padded - payload.len(), 0);
        self.auxtrace_index.push((at, 48));
    }

    /// SWITCH_CPU_WIDE: `next_prev` is the incoming task of a switch-out (`out`), the outgoing one of a
    /// switch-in; the sample id names the task switched.
    pub fn switch_cpu_wide(
        &mut self,
        out: bool,
        preempted: bool,
        next_prev: (i32, i32),
        sid: &SampleId,
    ) {
        let mut b = Vec::new();
        b.extend_from_slice(&next_prev.0.to_le_bytes());
        b.extend_from_slice(&next_prev.1.to_le_bytes());
        let mut m = 0;
        if out {
            m |= misc::SWITCH_OUT;
            if preempted {
                m |= misc::SWITCH_OUT_PREEMPT;
            }
        }
        self.record(record_type::SWITCH_CPU_WIDE, m, &b, Some(sid));
    }

    /// ID_INDEX: for each (id, cpu), the id's mmap index (the CPU), its CPU, and tid -1.
    pub fn id_index(&mut self, ids: &[(u64, u32)]) {
        let mut b = Vec::new();
        b.extend_from_slice(&(ids.len() as u64).to_le_bytes());
        for &(id, cpu) in ids {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&u64::from(cpu).to_le_bytes());
            b.extend_from_slice(&u64::from(cpu).to_le_bytes());
            b.extend_from_slice(&(-1i64).to_le_bytes());
        }
        self.record(record_type::ID_INDEX, 0, &b, None);
    }

    pub fn finished_round(&mut self) {
        self.record(record_type::FINISHED_ROUND, 0, &[], None);
    }

    pub fn add_build_id(&mut self, entry: BuildIdEntry) {
        self.build_ids.push(entry);
    }

    /// Where the data section starts: after the header, the attrs and their ids.
    fn data_offset(&self) -> usize {
        let ids_offset = HEADER_SIZE + (ATTR_SIZE + 16) * self.attrs.len();
        let ids_size: usize = self.attrs.iter().map(|a| 8 * a.ids.len()).sum();
        (ids_offset + ids_size).div_ceil(8) * 8
    }

    /// The file up to the data section (header, attrs, ids, padding) for a data section of `data_size`
    /// bytes.
    fn head(&self, data_size: u64) -> Vec<u8> {
        let attr_entry = ATTR_SIZE + 16;
        let attrs_offset = HEADER_SIZE;
        let ids_offset = attrs_offset + attr_entry * self.attrs.len();
        let data_offset = self.data_offset();

        let mut f = Vec::with_capacity(data_offset);
        f.extend_from_slice(b"PERFILE2");
        put_u64(&mut f, HEADER_SIZE as u64);
        put_u64(&mut f, attr_entry as u64);
        put_u64(&mut f, attrs_offset as u64);
        put_u64(&mut f, (attr_entry * self.attrs.len()) as u64);
        put_u64(&mut f, data_offset as u64);
        put_u64(&mut f, data_size);
        put_u64(&mut f, 0); // event_types
        put_u64(&mut f, 0);
        let mut bitmap = [0u64; 4];
        for &bit in &FEATURES {
            bitmap[bit / 64] |= 1 << (bit % 64);
        }
        for w in bitmap {
            put_u64(&mut f, w);
        }
        debug_assert_eq!(f.len(), HEADER_SIZE);

        let mut id_at = ids_offset;
        for a in &self.attrs {
            f.extend_from_slice(&a.bytes());
            put_u64(&mut f, id_at as u64);
            put_u64(&mut f, (8 * a.ids.len()) as u64);
            id_at += 8 * a.ids.len();
        }
        for a in &self.attrs {
            for id in &a.ids {
                put_u64(&mut f, *id);
            }
        }
        f.resize(data_offset, 0);
        f
    }

    /// The feature sections that follow the data section: the {offset, size} table, then each section
    /// in bit order. `table_at` is the file offset where they start.
    fn tail(&self, table_at: u64) -> Vec<u8> {
        let mut f = vec![0u8; 16 * FEATURES.len()];
        let sections = [
            self.build_id_section(),
            self.auxtrace_section(self.data_offset() as u64),
        ];
        for (i, body) in sections.iter().enumerate() {
            let at = table_at + f.len() as u64;
            f.extend_from_slice(body);
            f[16 * i..16 * i + 8].copy_from_slice(&at.to_le_bytes());
            f[16 * i + 8..16 * i + 16].copy_from_slice(&(body.len() as u64).to_le_bytes());
        }
        f
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut f = self.head(self.data.len() as u64);
        f.extend_from_slice(&self.data);
        let table_at = f.len() as u64;
        f.extend_from_slice(&self.tail(table_at));
        f
    }

    pub fn write_to(&self, mut w: impl Write) -> io::Result<()> {
        w.write_all(&self.to_bytes())
    }

    fn build_id_section(&self) -> Vec<u8> {
        let mut s = Vec::new();
        for e in &self.build_ids {
            let name_len = (e.filename.len() + 1).div_ceil(64) * 64;
            let size = 36 + name_len;
            s.extend_from_slice(&0u32.to_le_bytes());
            s.extend_from_slice(&(e.misc | misc::BUILD_ID_SIZE).to_le_bytes());
            s.extend_from_slice(&(size as u16).to_le_bytes());
            s.extend_from_slice(&e.pid.to_le_bytes());
            let mut id = [0u8; 24];
            let n = e.build_id.len().min(20);
            id[..n].copy_from_slice(&e.build_id[..n]);
            id[20] = n as u8;
            s.extend_from_slice(&id);
            let mut name = e.filename.as_bytes().to_vec();
            name.resize(name_len, 0);
            s.extend_from_slice(&name);
        }
        s
    }

    fn auxtrace_section(&self, data_offset: u64) -> Vec<u8> {
        let mut s = Vec::new();
        put_u64(&mut s, self.auxtrace_index.len() as u64);
        for &(at, size) in &self.auxtrace_index {
            put_u64(&mut s, data_offset + at);
            put_u64(&mut s, size);
        }
        s
    }
}

/// A perf.data file written as it is made, for recordings too large to hold in memory: the records
/// added to the [`PerfData`] go to disk at each [`PerfDataFile::flush_records`]; [`PerfDataFile::finish`]
/// appends the feature sections and fills in the header's data size.
pub struct PerfDataFile {
    pd: PerfData,
    out: io::BufWriter<std::fs::File>,
}

impl PerfDataFile {
    /// Creates `path` and writes the header (data size still 0) and the attrs of `pd`, which must hold
    /// every attr and id already; records may follow.
    pub fn create(path: &std::path::Path, pd: PerfData) -> io::Result<Self> {
        let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        out.write_all(&pd.head(0))?;
        Ok(PerfDataFile { pd, out })
    }

    /// The records are added here.
    pub fn records(&mut self) -> &mut PerfData {
        &mut self.pd
    }

    /// Writes the records added so far.
    pub fn flush_records(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.pd.data);
        self.pd.data_taken += data.len() as u64;
        self.out.write_all(&data)
    }

    /// Writes the remaining records and the feature sections, then the final header; returns the file
    /// size.
    pub fn finish(mut self) -> io::Result<u64> {
        use std::io::{Seek, SeekFrom};
        self.flush_records()?;
        let data_size = self.pd.data_taken;
        let table_at = self.pd.data_offset() as u64 + data_size;
        self.out.write_all(&self.pd.tail(table_at))?;
        let mut file = self
            .out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        let size = file.stream_position()?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&self.pd.head(data_size))?;
        Ok(size)
    }
}

fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn pad8(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(8) * 8, 0);
}

/// A NUL-terminated string, padded to 8 bytes as perf writes names.
fn push_cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    pad8(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn layout() {
        let mut p = PerfData::new(vec![Attr {
            type_: 8,
            config: 0x2401,
            sample_period: 1,
            sample_type: sample::TID | sample::TIME | sample::IDENTIFIER,
            flags: attr_flag::SAMPLE_ID_ALL,
            ids: vec![42],
        }]);
        let sid = SampleId {
            pid: 7,
            tid: 7,
            time: 99,
            cpu: 0,
            id: 42,
        };
        p.comm(7, 7, "prog", true, &sid);
        p.auxtrace(&[1, 2, 3], 0, 0, 0, 7, -1);
        p.add_build_id(BuildIdEntry {
            pid: -1,
            misc: misc::USER,
            build_id: vec![0xab; 20],
            filename: "/bin/prog".into(),
        });
        let f = p.to_bytes();
        assert_eq!(&f[..8], b"PERFILE2");
        assert_eq!(u64_at(&f, 16), 144);
        let data_offset = u64_at(&f, 40) as usize;
        let data_size = u64_at(&f, 48) as usize;
        // COMM: 8 header + 8 pid/tid + 8 name + 24 trailer.
        assert_eq!(
            u16::from_le_bytes([f[data_offset + 6], f[data_offset + 7]]),
            48
        );
        assert_eq!(u64_at(&f, data_offset + 8 + 16 + 8), 99); // time in the trailer
        let aux = data_offset + 48;
        assert_eq!(u64_at(&f, aux + 8), 8); // padded size
        assert_eq!(f[aux + 48..aux + 51], [1, 2, 3]);
        assert_eq!(data_size, 48 + 48 + 8);
        // Feature table: BUILD_ID then AUXTRACE.
        let table = data_offset + data_size;
        let bid_at = u64_at(&f, table) as usize;
        assert_eq!(u64_at(&f, table + 8), 36 + 64);
        assert_eq!(f[bid_at + 32], 20);
        assert_eq!(&f[bid_at + 36..bid_at + 45], b"/bin/prog");
        let aux_index = u64_at(&f, table + 16) as usize;
        assert_eq!(u64_at(&f, aux_index), 1);
        assert_eq!(u64_at(&f, aux_index + 8), aux as u64);
    }
}
