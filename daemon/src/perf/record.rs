//! Records of the data section (`union perf_event`): kernel records (include/uapi/linux/perf_event.h)
//! and the ones perf itself synthesizes (tools/perf/util/event.h, tools/lib/perf/include/perf/event.h).

use super::attr::{sample_type, EventAttr};
use super::bytes::Bytes;
use super::error::Result;
use super::features::BuildId;

/// Record type numbers (`perf_event_header.type`).
pub mod record_type {
    pub const MMAP: u32 = 1;
    pub const LOST: u32 = 2;
    pub const COMM: u32 = 3;
    pub const EXIT: u32 = 4;
    pub const THROTTLE: u32 = 5;
    pub const UNTHROTTLE: u32 = 6;
    pub const FORK: u32 = 7;
    pub const READ: u32 = 8;
    pub const SAMPLE: u32 = 9;
    pub const MMAP2: u32 = 10;
    pub const AUX: u32 = 11;
    pub const ITRACE_START: u32 = 12;
    pub const LOST_SAMPLES: u32 = 13;
    pub const SWITCH: u32 = 14;
    pub const SWITCH_CPU_WIDE: u32 = 15;
    pub const NAMESPACES: u32 = 16;
    pub const KSYMBOL: u32 = 17;
    pub const BPF_EVENT: u32 = 18;
    pub const CGROUP: u32 = 19;
    pub const TEXT_POKE: u32 = 20;
    pub const AUX_OUTPUT_HW_ID: u32 = 21;
    /// First type perf synthesizes itself; these carry no sample-id trailer.
    pub const USER_TYPE_START: u32 = 64;
    pub const HEADER_ATTR: u32 = 64;
    pub const HEADER_EVENT_TYPE: u32 = 65;
    pub const HEADER_TRACING_DATA: u32 = 66;
    pub const HEADER_BUILD_ID: u32 = 67;
    pub const FINISHED_ROUND: u32 = 68;
    pub const ID_INDEX: u32 = 69;
    pub const AUXTRACE_INFO: u32 = 70;
    pub const AUXTRACE: u32 = 71;
    pub const AUXTRACE_ERROR: u32 = 72;
    pub const THREAD_MAP: u32 = 73;
    pub const CPU_MAP: u32 = 74;
    pub const STAT_CONFIG: u32 = 75;
    pub const STAT: u32 = 76;
    pub const STAT_ROUND: u32 = 77;
    pub const EVENT_UPDATE: u32 = 78;
    pub const TIME_CONV: u32 = 79;
    pub const HEADER_FEATURE: u32 = 80;
    pub const COMPRESSED: u32 = 81;
    pub const FINISHED_INIT: u32 = 82;

    /// perf's name for a record type, without the `PERF_RECORD_` prefix.
    pub fn name(type_: u32) -> Option<&'static str> {
        const KERNEL: [&str; 22] = [
            "",
            "MMAP",
            "LOST",
            "COMM",
            "EXIT",
            "THROTTLE",
            "UNTHROTTLE",
            "FORK",
            "READ",
            "SAMPLE",
            "MMAP2",
            "AUX",
            "ITRACE_START",
            "LOST_SAMPLES",
            "SWITCH",
            "SWITCH_CPU_WIDE",
            "NAMESPACES",
            "KSYMBOL",
            "BPF_EVENT",
            "CGROUP",
            "TEXT_POKE",
            "AUX_OUTPUT_HW_ID",
        ];
        const USER: [&str; 19] = [
            "HEADER_ATTR",
            "HEADER_EVENT_TYPE",
            "HEADER_TRACING_DATA",
            "HEADER_BUILD_ID",
            "FINISHED_ROUND",
            "ID_INDEX",
            "AUXTRACE_INFO",
            "AUXTRACE",
            "AUXTRACE_ERROR",
            "THREAD_MAP",
            "CPU_MAP",
            "STAT_CONFIG",
            "STAT",
            "STAT_ROUND",
            "EVENT_UPDATE",
            "TIME_CONV",
            "HEADER_FEATURE",
            "COMPRESSED",
            "FINISHED_INIT",
        ];
        let name = match type_ {
            1..=21 => KERNEL[type_ as usize],
            64..=82 => USER[(type_ - 64) as usize],
            _ => return None,
        };
        Some(name)
    }
}

/// `perf_event_header.misc` bits.
pub mod misc {
    pub const CPUMODE_MASK: u16 = 7;
    pub const KERNEL: u16 = 1;
    pub const USER: u16 = 2;
    pub const HYPERVISOR: u16 = 3;
    pub const GUEST_KERNEL: u16 = 4;
    pub const GUEST_USER: u16 = 5;
    /// COMM: the comm changed because of exec.
    pub const COMM_EXEC: u16 = 1 << 13;
    /// SWITCH, SWITCH_CPU_WIDE: switch out (else in).
    pub const SWITCH_OUT: u16 = 1 << 13;
    /// SWITCH, SWITCH_CPU_WIDE: the task was preempted.
    pub const SWITCH_OUT_PREEMPT: u16 = 1 << 14;
    /// MMAP2: a build id replaces maj/min/ino/ino_generation.
    pub const MMAP_BUILD_ID: u16 = 1 << 14;
    /// Build-id entries: the id length is stored (else 20).
    pub const BUILD_ID_SIZE: u16 = 1 << 15;
}

/// `struct perf_event_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub type_: u32,
    pub misc: u16,
    pub size: u16,
}

impl RecordHeader {
    pub const SIZE: usize = 8;

    pub fn parse(bytes: &Bytes<'_>) -> Result<Self> {
        Ok(RecordHeader {
            type_: bytes.u32(0, "record header")?,
            misc: bytes.u16(4, "record header")?,
            size: bytes.u16(6, "record header")?,
        })
    }

    pub fn cpumode(&self) -> u16 {
        self.misc & misc::CPUMODE_MASK
    }
}

/// The sample-id fields of a record: the trailer of non-SAMPLE kernel records (with `sample_id_all`),
/// or the same fields of a SAMPLE. Each is present only when the attr's `sample_type` asks for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleId {
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub time: Option<u64>,
    /// ID or IDENTIFIER: which event (attr) the record belongs to.
    pub id: Option<u64>,
    pub stream_id: Option<u64>,
    pub cpu: Option<u32>,
}

impl SampleId {
    /// Parses the trailer at the end of `record` (from the end backwards, as its layout is fixed by
    /// `sample_type` but the body before it varies).
    pub fn parse_trailer(record: &Bytes<'_>, sample_type: u64) -> Result<Self> {
        use sample_type::*;
        let mut id = SampleId::default();
        let mut end = record.len();
        // Steps back one u64, returning its position in the record.
        let mut take = || -> Result<usize> {
            end = end
                .checked_sub(8)
                .filter(|&e| e >= RecordHeader::SIZE)
                .ok_or_else(|| {
                    super::error::Error::invalid(
                        record.offset,
                        "sample id",
                        "record too short for its sample id",
                    )
                })?;
            Ok(end)
        };
        let what = "sample id";
        if sample_type & IDENTIFIER != 0 {
            id.id = Some(record.u64(take()?, what)?);
        }
        if sample_type & CPU != 0 {
            id.cpu = Some(record.u32(take()?, what)?);
        }
        if sample_type & STREAM_ID != 0 {
            id.stream_id = Some(record.u64(take()?, what)?);
        }
        if sample_type & ID != 0 {
            id.id = Some(record.u64(take()?, what)?);
        }
        if sample_type & TIME != 0 {
            id.time = Some(record.u64(take()?, what)?);
        }
        if sample_type & TID != 0 {
            let at = take()?;
            id.pid = Some(record.u32(at, what)?);
            id.tid = Some(record.u32(at + 4, what)?);
        }
        Ok(id)
    }
}

/// The fixed leading fields of a SAMPLE record, as far as they are fixed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub ip: Option<u64>,
    pub addr: Option<u64>,
    pub period: Option<u64>,
}

impl Sample {
    /// Parses a SAMPLE body in `sample_type` order up to PERIOD (what follows varies in length).
    pub fn parse(record: &Bytes<'_>, sample_type: u64) -> Result<(Sample, SampleId)> {
        use sample_type::*;
        let mut at = RecordHeader::SIZE;
        let mut next = |what: &'static str| -> Result<(u64, usize)> {
            let v = record.u64(at, what)?;
            at += 8;
            Ok((v, at - 8))
        };
        let (mut sample, mut id) = (Sample::default(), SampleId::default());
        if sample_type & IDENTIFIER != 0 {
            id.id = Some(next("sample")?.0);
        }
        if sample_type & IP != 0 {
            sample.ip = Some(next("sample")?.0);
        }
        if sample_type & TID != 0 {
            let (_, pos) = next("sample")?;
            id.pid = Some(record.u32(pos, "sample")?);
            id.tid = Some(record.u32(pos + 4, "sample")?);
        }
        if sample_type & TIME != 0 {
            id.time = Some(next("sample")?.0);
        }
        if sample_type & ADDR != 0 {
            sample.addr = Some(next("sample")?.0);
        }
        if sample_type & ID != 0 {
            id.id = Some(next("sample")?.0);
        }
        if sample_type & STREAM_ID != 0 {
            id.stream_id = Some(next("sample")?.0);
        }
        if sample_type & CPU != 0 {
            let (_, pos) = next("sample")?;
            id.cpu = Some(record.u32(pos, "sample")?);
        }
        if sample_type & PERIOD != 0 {
            sample.period = Some(next("sample")?.0);
        }
        Ok((sample, id))
    }
}

/// Where an MMAP2 record identifies its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mmap2File<'a> {
    Inode {
        maj: u32,
        min: u32,
        ino: u64,
        ino_generation: u64,
    },
    BuildId(&'a [u8]),
}

/// MMAP (`file` is `None`) and MMAP2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmap<'a> {
    pub pid: u32,
    pub tid: u32,
    pub start: u64,
    pub len: u64,
    pub pgoff: u64,
    pub file: Option<Mmap2File<'a>>,
    pub prot: Option<u32>,
    pub flags: Option<u32>,
    pub filename: &'a [u8],
}

/// FORK and EXIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub ppid: u32,
    pub tid: u32,
    pub ptid: u32,
    pub time: u64,
}

/// One ID_INDEX entry: which CPU / thread / AUX queue an event id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdIndexEntry {
    pub id: u64,
    pub idx: u64,
    pub cpu: i64,
    pub tid: i64,
    /// Present in files written by perf 6.x (`perf inject --guest-data` sets them).
    pub machine_pid: Option<i64>,
    pub vcpu: Option<u64>,
}

/// An ID_INDEX record's entries, read on demand.
#[derive(Clone, Copy, Debug)]
pub struct IdIndex<'a> {
    record: Bytes<'a>,
    pub nr: u64,
    has_machine: bool,
}

impl<'a> IdIndex<'a> {
    fn parse(record: Bytes<'a>) -> Result<Self> {
        let nr = record.u64(8, "ID_INDEX")?;
        let room = (record.len() as u64).saturating_sub(16);
        if nr > room / 32 {
            return Err(super::error::Error::invalid(
                record.offset,
                "ID_INDEX",
                format!("{nr} entries do not fit in {} bytes", record.len()),
            ));
        }
        Ok(IdIndex {
            record,
            nr,
            has_machine: room >= nr * 48,
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = IdIndexEntry> + 'a {
        let (r, nr, has_machine) = (self.record, self.nr as usize, self.has_machine);
        // Sizes were checked in `parse`, so the reads below cannot fail.
        (0..nr).map(move |i| {
            let at = 16 + 32 * i;
            let machine = 16 + 32 * nr + 16 * i;
            IdIndexEntry {
                id: r.u64(at, "").unwrap_or(0),
                idx: r.u64(at + 8, "").unwrap_or(0),
                cpu: r.u64(at + 16, "").unwrap_or(0) as i64,
                tid: r.u64(at + 24, "").unwrap_or(0) as i64,
                machine_pid: has_machine.then(|| r.u64(machine, "").unwrap_or(0) as i64),
                vcpu: has_machine.then(|| r.u64(machine + 8, "").unwrap_or(0)),
            }
        })
    }
}

/// AUXTRACE_INFO: which AUX decoder, and its private parameters.
#[derive(Clone, Copy, Debug)]
pub struct AuxtraceInfo<'a> {
    /// 1 = Intel PT, 2 = Intel BTS, ...
    pub type_: u32,
    /// `priv[]`, as u64s from record offset 16.
    pub priv_: Bytes<'a>,
}

pub const AUXTRACE_INTEL_PT: u32 = 1;

/// The Intel PT fields of AUXTRACE_INFO (tools/perf/util/intel-pt.h, `enum intel_pt_info`). Fields
/// after `per_cpu_mmaps` are `None` when the record (an older perf's) ends before them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntelPtInfo {
    pub pmu_type: u64,
    pub time_shift: u64,
    pub time_mult: u64,
    pub time_zero: u64,
    pub cap_user_time_zero: u64,
    pub tsc_bit: u64,
    pub noretcomp_bit: u64,
    pub have_sched_switch: u64,
    pub snapshot_mode: u64,
    pub per_cpu_mmaps: u64,
    pub mtc_bit: Option<u64>,
    pub mtc_freq_bits: Option<u64>,
    pub tsc_ctc_ratio_n: Option<u64>,
    pub tsc_ctc_ratio_d: Option<u64>,
    pub cyc_bit: Option<u64>,
    pub max_nonturbo_ratio: Option<u64>,
    pub filter_str_len: Option<u64>,
    /// The address filter (`filter 0x…/0x…@/path`), when recorded.
    pub filter: Option<String>,
    pub cap_event_trace: Option<u64>,
}

impl AuxtraceInfo<'_> {
    pub fn intel_pt(&self) -> Result<Option<IntelPtInfo>> {
        if self.type_ != AUXTRACE_INTEL_PT {
            return Ok(None);
        }
        let p = &self.priv_;
        let need = |i: usize| p.u64(8 * i, "Intel PT AUXTRACE_INFO");
        let opt = |i: usize| p.opt_u64(8 * i);
        let mut info = IntelPtInfo {
            pmu_type: need(0)?,
            time_shift: need(1)?,
            time_mult: need(2)?,
            time_zero: need(3)?,
            cap_user_time_zero: need(4)?,
            tsc_bit: need(5)?,
            noretcomp_bit: need(6)?,
            have_sched_switch: need(7)?,
            snapshot_mode: need(8)?,
            per_cpu_mmaps: need(9)?,
            mtc_bit: opt(10),
            mtc_freq_bits: opt(11),
            tsc_ctc_ratio_n: opt(12),
            tsc_ctc_ratio_d: opt(13),
            cyc_bit: opt(14),
            max_nonturbo_ratio: opt(15),
            filter_str_len: opt(16),
            ..Default::default()
        };
        let mut next = 17 * 8;
        if let Some(len) = info.filter_str_len.filter(|&len| len > 0) {
            // The string, its NUL and padding to 8 bytes.
            let padded = super::bytes::align8(len + 1);
            let text = p.slice(next, padded as usize, "Intel PT address filter")?;
            let text = &text[..len.min(padded) as usize];
            info.filter = Some(String::from_utf8_lossy(text).into_owned());
            next += padded as usize;
        }
        info.cap_event_trace = p.opt_u64(next);
        Ok(Some(info))
    }
}

/// An AUXTRACE record: one chunk of a CPU's or thread's AUX area trace, stored after the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auxtrace<'a> {
    /// Payload size, including padding to 8 bytes.
    pub size: u64,
    /// Offset of the chunk in the AUX area stream.
    pub offset: u64,
    pub reference: u64,
    /// Queue number: a CPU for per-CPU recordings, 0 for per-thread ones.
    pub idx: u32,
    pub tid: u32,
    pub cpu: u32,
    /// The payload as the file holds it: shorter than `size` only when the file is truncated.
    pub data: &'a [u8],
    /// File offset of `data`.
    pub data_offset: u64,
}

impl Auxtrace<'_> {
    pub fn is_truncated(&self) -> bool {
        (self.data.len() as u64) < self.size
    }
}

/// AUXTRACE_ERROR: an error the recording or a decoder noted in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuxtraceError<'a> {
    pub type_: u32,
    pub code: u32,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub fmt: u32,
    pub ip: u64,
    pub time: u64,
    pub msg: &'a [u8],
    pub machine_pid: Option<u32>,
    pub vcpu: Option<u32>,
}

/// TIME_CONV: how perf time relates to the TSC. perf time = time_zero + (tsc * time_mult) >> time_shift
/// (computed in parts to avoid overflow); the newer fields are `None` in older files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeConv {
    pub time_shift: u64,
    pub time_mult: u64,
    pub time_zero: u64,
    pub time_cycles: Option<u64>,
    pub time_mask: Option<u64>,
    pub cap_user_time_zero: Option<bool>,
    pub cap_user_time_short: Option<bool>,
}

/// A record's decoded body. Types not listed (and unknown ones) are [`RecordBody::Other`].
#[derive(Clone, Debug)]
pub enum RecordBody<'a> {
    Mmap(Mmap<'a>),
    Mmap2(Mmap<'a>),
    Comm {
        pid: u32,
        tid: u32,
        comm: &'a [u8],
        exec: bool,
    },
    Fork(Task),
    Exit(Task),
    Lost {
        id: u64,
        lost: u64,
    },
    Sample(Sample),
    Aux {
        aux_offset: u64,
        aux_size: u64,
        /// 1 truncated, 2 overwrite, 4 partial, 8 collision.
        flags: u64,
    },
    ItraceStart {
        pid: u32,
        tid: u32,
    },
    Switch {
        out: bool,
        preempt: bool,
    },
    SwitchCpuWide {
        out: bool,
        preempt: bool,
        next_prev_pid: u32,
        next_prev_tid: u32,
    },
    FinishedRound,
    FinishedInit,
    IdIndex(IdIndex<'a>),
    AuxtraceInfo(AuxtraceInfo<'a>),
    Auxtrace(Auxtrace<'a>),
    AuxtraceError(AuxtraceError<'a>),
    TimeConv(TimeConv),
    /// Pipe mode: an event's attr and ids.
    HeaderAttr(EventAttr<'a>),
    /// Pipe mode: a header feature section, in the same format as in a file's feature table.
    HeaderFeature {
        feature: u64,
        data: Bytes<'a>,
    },
    HeaderBuildId(BuildId<'a>),
    /// Pipe mode: tracepoint data of `size` bytes (padded to 8) follows the record.
    HeaderTracingData {
        size: u32,
    },
    /// zstd-compressed records (`perf record -z`).
    Compressed {
        data: &'a [u8],
    },
    Other,
}

/// Where a record lives: a file of the recording (in a directory, `data` is 0 and `data.N` is
/// N + 1), or the stream decompressed from that file's COMPRESSED records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File(usize),
    Decompressed(usize),
}

/// One record with its location, its sample id and the attr it belongs to.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    pub source: Source,
    /// Offset of the record in its source.
    pub offset: u64,
    pub header: RecordHeader,
    /// The record's `header.size` bytes (an AUXTRACE payload is in [`Auxtrace::data`]).
    pub raw: Bytes<'a>,
    pub sample_id: SampleId,
    /// Index into [`super::Recording::attrs`], when known.
    pub attr: Option<usize>,
    pub body: RecordBody<'a>,
}

impl<'a> Record<'a> {
    pub fn type_name(&self) -> Option<&'static str> {
        record_type::name(self.header.type_)
    }
}

/// Decodes the body of the record `r` (`header.size` bytes). `payload` is the data following an
/// AUXTRACE record (as much as the file holds).
pub(crate) fn parse_body<'a>(
    r: &Bytes<'a>,
    header: &RecordHeader,
    payload: Bytes<'a>,
) -> Result<RecordBody<'a>> {
    use record_type::*;
    let what = record_type::name(header.type_).unwrap_or("record");
    let u32_ = |at| r.u32(at, what);
    let u64_ = |at| r.u64(at, what);
    Ok(match header.type_ {
        MMAP => RecordBody::Mmap(Mmap {
            pid: u32_(8)?,
            tid: u32_(12)?,
            start: u64_(16)?,
            len: u64_(24)?,
            pgoff: u64_(32)?,
            file: None,
            prot: None,
            flags: None,
            filename: r.slice(40, 0, what).map(|_| r.cstr(40))?,
        }),
        MMAP2 => {
            let file = if header.misc & misc::MMAP_BUILD_ID != 0 {
                let len = (r.u8(40, what)? as usize).min(20);
                Mmap2File::BuildId(r.slice(44, len, what)?)
            } else {
                Mmap2File::Inode {
                    maj: u32_(40)?,
                    min: u32_(44)?,
                    ino: u64_(48)?,
                    ino_generation: u64_(56)?,
                }
            };
            RecordBody::Mmap2(Mmap {
                pid: u32_(8)?,
                tid: u32_(12)?,
                start: u64_(16)?,
                len: u64_(24)?,
                pgoff: u64_(32)?,
                file: Some(file),
                prot: Some(u32_(64)?),
                flags: Some(u32_(68)?),
                filename: r.slice(72, 0, what).map(|_| r.cstr(72))?,
            })
        }
        COMM => RecordBody::Comm {
            pid: u32_(8)?,
            tid: u32_(12)?,
            comm: r.slice(16, 0, what).map(|_| r.cstr(16))?,
            exec: header.misc & misc::COMM_EXEC != 0,
        },
        FORK | EXIT => {
            let task = Task {
                pid: u32_(8)?,
                ppid: u32_(12)?,
                tid: u32_(16)?,
                ptid: u32_(20)?,
                time: u64_(24)?,
            };
            if header.type_ == FORK {
                RecordBody::Fork(task)
            } else {
                RecordBody::Exit(task)
            }
        }
        LOST => RecordBody::Lost {
            id: u64_(8)?,
            lost: u64_(16)?,
        },
        AUX => RecordBody::Aux {
            aux_offset: u64_(8)?,
            aux_size: u64_(16)?,
            flags: u64_(24)?,
        },
        ITRACE_START => RecordBody::ItraceStart {
            pid: u32_(8)?,
            tid: u32_(12)?,
        },
        SWITCH => RecordBody::Switch {
            out: header.misc & misc::SWITCH_OUT != 0,
            preempt: header.misc & misc::SWITCH_OUT_PREEMPT != 0,
        },
        SWITCH_CPU_WIDE => RecordBody::SwitchCpuWide {
            out: header.misc & misc::SWITCH_OUT != 0,
            preempt: header.misc & misc::SWITCH_OUT_PREEMPT != 0,
            next_prev_pid: u32_(8)?,
            next_prev_tid: u32_(12)?,
        },
        FINISHED_ROUND => RecordBody::FinishedRound,
        FINISHED_INIT => RecordBody::FinishedInit,
        ID_INDEX => RecordBody::IdIndex(IdIndex::parse(*r)?),
        AUXTRACE_INFO => RecordBody::AuxtraceInfo(AuxtraceInfo {
            type_: u32_(8)?,
            priv_: r.tail(16),
        }),
        AUXTRACE => RecordBody::Auxtrace(Auxtrace {
            size: u64_(8)?,
            offset: u64_(16)?,
            reference: u64_(24)?,
            idx: u32_(32)?,
            tid: u32_(36)?,
            cpu: u32_(40)?,
            data: payload.data,
            data_offset: payload.offset,
        }),
        AUXTRACE_ERROR => {
            let fmt = u32_(28)?;
            let machine = fmt >= 2 && r.len() >= 120;
            RecordBody::AuxtraceError(AuxtraceError {
                type_: u32_(8)?,
                code: u32_(12)?,
                cpu: u32_(16)?,
                pid: u32_(20)?,
                tid: u32_(24)?,
                fmt,
                ip: u64_(32)?,
                time: if fmt >= 1 { u64_(40)? } else { 0 },
                msg: r.sub(48, 64.min(r.len().saturating_sub(48)), what)?.cstr(0),
                machine_pid: if machine { Some(u32_(112)?) } else { None },
                vcpu: if machine { Some(u32_(116)?) } else { None },
            })
        }
        TIME_CONV => {
            let new = r.len() >= 56;
            RecordBody::TimeConv(TimeConv {
                time_shift: u64_(8)?,
                time_mult: u64_(16)?,
                time_zero: u64_(24)?,
                time_cycles: new.then(|| r.opt_u64(32)).flatten(),
                time_mask: new.then(|| r.opt_u64(40)).flatten(),
                cap_user_time_zero: if new {
                    Some(r.u8(48, what)? != 0)
                } else {
                    None
                },
                cap_user_time_short: if new {
                    Some(r.u8(49, what)? != 0)
                } else {
                    None
                },
            })
        }
        HEADER_ATTR => {
            let size = u32_(12)? as usize;
            let attr = r.sub(8, size, what)?;
            let ids = r.tail(8 + size);
            let ids = (0..ids.len() / 8)
                .map(|i| ids.u64(8 * i, what))
                .collect::<Result<_>>()?;
            RecordBody::HeaderAttr(EventAttr::parse(attr, ids)?)
        }
        HEADER_FEATURE => RecordBody::HeaderFeature {
            feature: u64_(8)?,
            data: r.tail(16),
        },
        HEADER_BUILD_ID => RecordBody::HeaderBuildId(BuildId::parse(*r)?),
        HEADER_TRACING_DATA => RecordBody::HeaderTracingData { size: u32_(8)? },
        COMPRESSED => RecordBody::Compressed {
            data: r.tail(8).data,
        },
        SAMPLE => RecordBody::Sample(Sample::default()), // filled in with its attr by the caller
        _ => RecordBody::Other,
    })
}
