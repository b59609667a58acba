//! `ptlens dump FILE`: the records of a perf.data file and the packets of its AUXTRACE buffers.
//!
//! Record lines follow `perf script -D` (`0x2e8 [0x20]: PERF_RECORD_TIME_CONV …`) but in file order
//! and with the sample id at the end; each AUXTRACE record is followed by its packets exactly where
//! `perf script -D` prints them, so packet lines come in the same order. A header summary (lines
//! starting with `#`) comes first.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use ptlens::perf::{
    self, feature, Endian, PerfData, Record, RecordBody, Recording, Source, AUXTRACE_INTEL_PT,
};

use super::dump::DumpArgs;

pub fn run(file: &Path, _args: &DumpArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = dump(file, &mut out);
    // Print what came before an error, as perf does, then the error.
    out.flush()?;
    result
}

fn dump(file: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let data = PerfData::open(file)?;
    let recording = data.recording()?;
    write_summary(&recording, out)?;
    let mut intel_pt = false;
    for record in recording.records() {
        let record = record?;
        if let RecordBody::AuxtraceInfo(info) = &record.body {
            intel_pt = info.type_ == AUXTRACE_INTEL_PT;
        }
        write_record(&recording, &record, out)?;
        if let RecordBody::Auxtrace(aux) = &record.body {
            if intel_pt {
                writeln!(out, ".")?;
                writeln!(
                    out,
                    ". ... Intel Processor Trace data: size {} bytes",
                    aux.size
                )?;
                ptlens::pt::dump::write_perf_dump(out, aux.data)?;
            }
        }
    }
    for warning in &recording.warnings {
        writeln!(out, "# warning: {warning}")?;
    }
    Ok(())
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_summary(r: &Recording<'_>, out: &mut dyn Write) -> anyhow::Result<()> {
    let h = &r.header;
    let order = match h.endian {
        Endian::Little => "little-endian",
        Endian::Big => "big-endian",
    };
    let mode = if h.pipe { "pipe mode" } else { "file mode" };
    writeln!(out, "# {}: {order}, {mode}", r.data.path().display())?;
    if !h.pipe {
        writeln!(
            out,
            "# header: attrs {:#x} [{:#x}] (entry size {}), data {:#x} [{:#x}]",
            h.attrs.offset, h.attrs.size, h.attr_size, h.data.offset, h.data.size
        )?;
    }
    let features: Vec<String> = r
        .features
        .sections
        .iter()
        .map(|(f, b)| format!("{f}@{:#x}[{:#x}]", b.offset, b.len()))
        .collect();
    writeln!(out, "# features: {}", features.join(" "))?;
    for (i, a) in r.attrs.iter().enumerate() {
        writeln!(
            out,
            "# attr {i}: {} type {} size {} config {:#x} sample_type {:#x} read_format {:#x} flags {:#x} ids {:?}",
            a.name(), a.type_, a.size, a.config, a.sample_type, a.read_format, a.flags, a.ids
        )?;
    }
    for id in r.features.build_ids()? {
        writeln!(
            out,
            "# build-id: pid {} cpumode {} {} {}",
            id.pid,
            id.cpumode,
            hex(id.id),
            text(id.filename)
        )?;
    }
    if let Some(index) = r.features.auxtrace_index()? {
        writeln!(out, "# auxtrace index: {} entries", index.len())?;
        for e in index {
            writeln!(out, "#   {:#x} [{:#x}]", e.file_offset, e.size)?;
        }
    }
    if let Some(n) = r.features.nr_cpus()? {
        writeln!(
            out,
            "# nrcpus: online {} available {}",
            n.online, n.available
        )?;
    }
    for (name, f) in [
        ("hostname", feature::HOSTNAME),
        ("os release", feature::OSRELEASE),
        ("perf version", feature::VERSION),
        ("arch", feature::ARCH),
        ("cpudesc", feature::CPUDESC),
        ("cpuid", feature::CPUID),
        ("cmdline", feature::CMDLINE),
    ] {
        if let Some(s) = r.features.string(f)? {
            writeln!(out, "# {name}: {s}")?;
        }
    }
    let pmus = r.features.pmu_mappings()?;
    if !pmus.is_empty() {
        let list: Vec<String> = pmus
            .iter()
            .map(|p| format!("{} = {}", p.name, p.type_))
            .collect();
        writeln!(out, "# pmu mappings: {}", list.join(", "))?;
    }
    if let Some(v) = r.features.dir_format()? {
        writeln!(out, "# dir format: version {v}")?;
    }
    if let Some(c) = r.features.compressed()? {
        writeln!(
            out,
            "# compressed: version {} type {} level {} ratio {} mmap_len {}",
            c.version, c.type_, c.level, c.ratio, c.mmap_len
        )?;
    }
    match r.aux_queues() {
        Ok(queues) => {
            for q in &queues.queues {
                writeln!(
                    out,
                    "# aux queue {}: cpu {} tid {} buffers {} bytes {}",
                    q.idx,
                    q.cpu().map_or(-1, |c| c as i32),
                    q.tid().map_or(-1, |t| t as i32),
                    q.buffers.len(),
                    q.size()
                )?;
            }
        }
        // The record walk below reports the same problem where it happens.
        Err(e) => writeln!(out, "# aux queues: {e}")?,
    }
    Ok(())
}

fn write_record(r: &Recording<'_>, rec: &Record<'_>, out: &mut dyn Write) -> io::Result<()> {
    let name = rec.type_name().unwrap_or("UNKNOWN");
    let from = match rec.source {
        Source::File(0) => String::new(),
        Source::File(i) => format!("{}:", r.data.file_path(Source::File(i)).display()),
        Source::Decompressed(_) => "zstd:".to_string(),
    };
    write!(
        out,
        "{from}{:#x} [{:#x}]: PERF_RECORD_{name}",
        rec.offset, rec.header.size
    )?;
    if rec.type_name().is_none() {
        write!(out, " type {}", rec.header.type_)?;
    }
    let tid = |pid: u32, tid: u32| format!("{}/{}", pid as i32, tid as i32);
    match &rec.body {
        RecordBody::Mmap(m) | RecordBody::Mmap2(m) => {
            write!(
                out,
                " {}: [{:#x}({:#x}) @ {:#x}",
                tid(m.pid, m.tid),
                m.start,
                m.len,
                m.pgoff
            )?;
            match m.file {
                Some(perf::Mmap2File::Inode {
                    maj,
                    min,
                    ino,
                    ino_generation,
                }) => write!(out, " {maj:02x}:{min:02x} {ino} {ino_generation}")?,
                Some(perf::Mmap2File::BuildId(id)) => write!(out, " build-id {}", hex(id))?,
                None => {}
            }
            if let (Some(prot), Some(flags)) = (m.prot, m.flags) {
                write!(out, " prot {prot:#x} flags {flags:#x}")?;
            }
            write!(out, "]: {}", text(m.filename))?;
        }
        RecordBody::Comm {
            pid,
            tid: t,
            comm,
            exec,
        } => write!(
            out,
            "{}: {}:{}",
            if *exec { " EXEC" } else { "" },
            text(comm),
            tid(*pid, *t)
        )?,
        RecordBody::Fork(t) | RecordBody::Exit(t) => {
            write!(out, "({}):({})", tid(t.pid, t.tid), tid(t.ppid, t.ptid))?
        }
        RecordBody::Lost { id, lost } => write!(out, " id {id} lost {lost}")?,
        RecordBody::Sample(s) => {
            if let Some(ip) = s.ip {
                write!(out, " ip {ip:#x}")?;
            }
            if let Some(addr) = s.addr {
                write!(out, " addr {addr:#x}")?;
            }
            if let Some(period) = s.period {
                write!(out, " period {period}")?;
            }
        }
        RecordBody::Aux {
            aux_offset,
            aux_size,
            flags,
        } => write!(
            out,
            " offset: {aux_offset:#x} size: {aux_size:#x} flags: {flags:#x}"
        )?,
        RecordBody::ItraceStart { pid, tid: t } => {
            write!(out, " pid: {} tid: {}", *pid as i32, *t as i32)?
        }
        RecordBody::Switch { out: o, preempt } => write!(
            out,
            " {}{}",
            if *o { "OUT" } else { "IN" },
            if *preempt { " preempt" } else { "" }
        )?,
        RecordBody::SwitchCpuWide {
            out: o,
            preempt,
            next_prev_pid,
            next_prev_tid,
        } => write!(
            out,
            " {}{} {} pid/tid: {}",
            if *o { "OUT" } else { "IN" },
            if *preempt { " preempt" } else { "" },
            if *o { "next" } else { "prev" },
            tid(*next_prev_pid, *next_prev_tid)
        )?,
        RecordBody::IdIndex(index) => {
            write!(out, " nr: {}", index.nr)?;
            for e in index.entries() {
                write!(
                    out,
                    "\n ... id: {}  idx: {}  cpu: {}  tid: {}",
                    e.id, e.idx, e.cpu, e.tid
                )?;
                if let (Some(m), Some(v)) = (e.machine_pid, e.vcpu) {
                    write!(out, "  machine_pid: {m}  vcpu: {v}")?;
                }
            }
        }
        RecordBody::AuxtraceInfo(info) => {
            write!(out, " type: {}", info.type_)?;
            match info.intel_pt() {
                Ok(Some(pt)) => write!(out, "\n  {pt:?}")?,
                Ok(None) => {}
                Err(e) => write!(out, "\n  (Intel PT fields: {e})")?,
            }
        }
        RecordBody::Auxtrace(a) => write!(
            out,
            " size: {:#x}  offset: {:#x}  ref: {:#x}  idx: {}  tid: {}  cpu: {}",
            a.size, a.offset, a.reference, a.idx, a.tid as i32, a.cpu as i32
        )?,
        RecordBody::AuxtraceError(e) => {
            write!(
                out,
                " type {} code {} cpu {} pid {} tid {} ip {:#x} time {} msg {:?}",
                e.type_,
                e.code,
                e.cpu as i32,
                e.pid as i32,
                e.tid as i32,
                e.ip,
                e.time,
                text(e.msg)
            )?;
            if let (Some(m), Some(v)) = (e.machine_pid, e.vcpu) {
                write!(out, " machine_pid {m} vcpu {v}")?;
            }
        }
        RecordBody::TimeConv(t) => {
            write!(
                out,
                " time_shift {} time_mult {} time_zero {}",
                t.time_shift, t.time_mult, t.time_zero
            )?;
            if let (Some(c), Some(m)) = (t.time_cycles, t.time_mask) {
                write!(
                    out,
                    " time_cycles {c} time_mask {m:#x} cap_user_time_zero {} cap_user_time_short {}",
                    t.cap_user_time_zero.unwrap_or(false) as u8,
                    t.cap_user_time_short.unwrap_or(false) as u8
                )?;
            }
        }
        RecordBody::HeaderAttr(a) => write!(
            out,
            " {} type {} config {:#x} sample_type {:#x} ids {:?}",
            a.name(),
            a.type_,
            a.config,
            a.sample_type,
            a.ids
        )?,
        RecordBody::HeaderFeature { feature, data } => {
            write!(out, " feature {feature} [{:#x}]", data.len())?
        }
        RecordBody::HeaderBuildId(id) => write!(
            out,
            " pid {} cpumode {} {} {}",
            id.pid,
            id.cpumode,
            hex(id.id),
            text(id.filename)
        )?,
        RecordBody::HeaderTracingData { size } => write!(out, " size {size}")?,
        RecordBody::Compressed { data } => write!(out, " {} bytes", data.len())?,
        RecordBody::FinishedRound | RecordBody::FinishedInit | RecordBody::Other => {}
    }
    let id = &rec.sample_id;
    if *id != perf::SampleId::default() {
        write!(out, "  |")?;
        if let Some(cpu) = id.cpu {
            write!(out, " cpu {}", cpu as i32)?;
        }
        if let Some(time) = id.time {
            write!(out, " time {time}")?;
        }
        if let (Some(p), Some(t)) = (id.pid, id.tid) {
            write!(out, " pid/tid {}", tid(p, t))?;
        }
        if let Some(v) = id.id {
            write!(out, " id {v}")?;
        }
        if let Some(s) = id.stream_id {
            write!(out, " stream_id {s}")?;
        }
    }
    if let Some(a) = rec.attr {
        write!(out, " attr {a}")?;
    }
    writeln!(out)
}
