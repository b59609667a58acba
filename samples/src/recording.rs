//! A recording directory: `perf.data`, the build-id cache (`.build-id/`) of every binary the trace
//! touches, and `ground-truth.txt` (one line per executed instruction: `TID IP`, the TID in decimal, the IP in hex, as `perf script -F tid,ip`
//! prints them), made from one
//! traced execution.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::buildid::{self, BuildIdError};
use crate::encode::{self, Stats};
use crate::perfdata::{attr_flag, misc, sample, Attr, BuildIdEntry, PerfData, SampleId};
use crate::sched::{self, Timeline, What};
use crate::trace::{self, Event, Execution, Mapping, TraceError};

/// What to record and how.
#[derive(Clone, Debug)]
pub struct Options {
    pub trace: trace::Options,
    pub encode: encode::Config,
    /// Write no timestamps perf can use (cap_user_time_zero 0): perf then decodes timelessly.
    pub timeless: bool,
    /// Record per-CPU (`perf record -a`): every thread and child process, scheduled on this many virtual
    /// CPUs. Per-thread (one process, one thread) when `None`.
    pub per_cpu: Option<u32>,
    /// Instructions a task runs before it is preempted for a waiting one (per-CPU recordings).
    pub quantum: u64,
    /// An address filter: trace only these parts of binaries (per process, in per-CPU recordings).
    pub filter: Option<AddrFilter>,
}

/// perf's `--filter 'filter 0xOFFSET/0xSIZE@BINARY,…'`: trace only these ranges, each the `size`
/// bytes at file offset `offset` of `binary`. perf stores it in AUXTRACE_INFO resolved, as
/// [`AddrFilter::perf_string`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrFilter {
    /// At most [`AddrFilter::MAX_RANGES`].
    pub ranges: Vec<FileRange>,
}

/// One `filter` entry of an [`AddrFilter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRange {
    pub offset: u64,
    pub size: u64,
    /// As the MMAP2 record names it (the canonical path).
    pub binary: String,
}

impl FileRange {
    /// The run-time addresses of the range in a process with these mappings, if one maps it.
    pub fn runtime_range<'a>(
        &self,
        maps: impl IntoIterator<Item = &'a Mapping>,
    ) -> Option<std::ops::Range<u64>> {
        maps.into_iter().find_map(|m| {
            let len = m.end - m.start;
            (m.path == self.binary && self.offset >= m.pgoff && self.offset < m.pgoff + len).then(
                || {
                    let start = m.start + (self.offset - m.pgoff);
                    start..start + self.size
                },
            )
        })
    }
}

impl AddrFilter {
    /// Address ranges Intel PT can hold (IA32_RTIT_ADDR0..3; CPUID says how many a CPU has, 2 on
    /// many, and perf record refuses more than the PMU's `nr_addr_filters`).
    pub const MAX_RANGES: usize = 4;

    /// Parses `filter 0xOFFSET/0xSIZE@BINARY` entries separated by commas (spaces around `@`
    /// allowed; decimal numbers too) and canonicalises each BINARY.
    pub fn parse(text: &str) -> Result<AddrFilter, String> {
        let ranges = text
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(parse_range)
            .collect::<Result<Vec<_>, _>>()?;
        if ranges.is_empty() {
            return Err(format!("no address filter in {text:?}"));
        }
        if ranges.len() > Self::MAX_RANGES {
            return Err(format!(
                "{} address filters: Intel PT has at most {}",
                ranges.len(),
                Self::MAX_RANGES
            ));
        }
        Ok(AddrFilter { ranges })
    }

    /// The string perf writes into AUXTRACE_INFO after `priv[16]`: one entry per range, joined by
    /// commas without spaces (as `evsel__append_addr_filter` joins them).
    pub fn perf_string(&self) -> String {
        let entries: Vec<String> = self
            .ranges
            .iter()
            .map(|r| format!("filter {:#x}/{:#x}@{}", r.offset, r.size, r.binary))
            .collect();
        entries.join(",")
    }

    /// The run-time ranges traced in a process with these mappings (ranges of files it does not
    /// map are not active in it).
    pub fn runtime_ranges(&self, maps: &[Mapping]) -> Vec<std::ops::Range<u64>> {
        self.ranges
            .iter()
            .filter_map(|r| r.runtime_range(maps))
            .collect()
    }
}

/// One `filter 0xOFFSET/0xSIZE@BINARY` entry.
fn parse_range(text: &str) -> Result<FileRange, String> {
    let bad = || format!("not an address filter: {text:?} (want 'filter 0xOFFSET/0xSIZE@BINARY')");
    let rest = text.trim().strip_prefix("filter").ok_or_else(bad)?;
    let (range, binary) = rest.split_once('@').ok_or_else(bad)?;
    let (offset, size) = range.trim().split_once('/').ok_or_else(bad)?;
    let num = |t: &str| {
        let t = t.trim();
        match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => t.parse().ok(),
        }
    };
    let (offset, size) = (num(offset).ok_or_else(bad)?, num(size).ok_or_else(bad)?);
    if size == 0 {
        return Err(bad());
    }
    let binary = binary.trim();
    let canonical =
        std::fs::canonicalize(binary).map_err(|e| format!("filter binary {binary}: {e}"))?;
    Ok(FileRange {
        offset,
        size,
        binary: canonical.to_string_lossy().into_owned(),
    })
}

/// An error unless every range of `filter` is in an executable mapping of `maps`.
fn check_mapped(filter: &AddrFilter, maps: &[Mapping]) -> Result<(), RecordError> {
    match filter
        .ranges
        .iter()
        .find(|r| r.runtime_range(maps).is_none())
    {
        None => Ok(()),
        Some(r) => Err(RecordError::Filter(format!(
            "the filter region {:#x}/{:#x} of {} was never mapped executable",
            r.offset, r.size, r.binary
        ))),
    }
}

/// Appends the filter string to AUXTRACE_INFO's `priv_` (its length in priv[16]).
fn add_filter_string(priv_: &mut Vec<u64>, filter: &AddrFilter) {
    let text = filter.perf_string();
    priv_[16] = text.len() as u64;
    priv_.extend(filter_words(&text));
}

/// AUXTRACE_INFO's words after priv[16]: the filter string, NUL-terminated, padded to 8 bytes (priv[16]
/// holds its length without the NUL).
pub(crate) fn filter_words(filter: &str) -> Vec<u64> {
    let mut bytes = filter.as_bytes().to_vec();
    bytes.push(0);
    bytes.resize(bytes.len().div_ceil(8) * 8, 0);
    bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trace: trace::Options::default(),
            encode: encode::Config::default(),
            timeless: false,
            per_cpu: None,
            quantum: sched::Options::default().quantum,
            filter: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    BuildId(#[from] BuildIdError),
    #[error("{0}")]
    Filter(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError {
    let path = path.to_path_buf();
    move |source| RecordError::Io { path, source }
}

/// What was written.
#[derive(Debug)]
pub struct Recording {
    pub dir: PathBuf,
    pub perf_data: PathBuf,
    /// Instructions executed (in all tasks).
    pub instructions: u64,
    /// `rep` string iterations folded into single instructions.
    pub rep_iterations: u64,
    pub exit_code: i32,
    /// Threads and processes that ran.
    pub tasks: usize,
    /// Virtual CPUs of a per-CPU recording.
    pub cpus: Option<u32>,
    /// Context switches (per-CPU recordings).
    pub switches: usize,
    /// Bytes of Intel PT trace (all CPUs).
    pub trace_bytes: usize,
    /// AUXTRACE buffers written (all CPUs).
    pub buffers: usize,
    /// Packet counts (all CPUs).
    pub stats: Stats,
    /// Indices of the events whose instructions were lost to a simulated overflow.
    pub lost: Vec<usize>,
    /// Binaries put into the build-id cache: (path as perf names it, build-id hex).
    pub binaries: Vec<(String, String)>,
}

impl std::fmt::Display for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} instructions ({} rep iterations folded) in {} task(s)",
            self.perf_data.display(),
            self.instructions,
            self.rep_iterations,
            self.tasks
        )?;
        if let Some(n) = self.cpus {
            write!(f, " on {n} CPUs with {} context switches", self.switches)?;
        }
        write!(
            f,
            ", exit code {}; {} bytes of trace in {} AUXTRACE buffer(s) ({}); {} binaries in the build-id cache",
            self.exit_code,
            self.trace_bytes,
            self.buffers,
            self.stats,
            self.binaries.len()
        )
    }
}

/// The file names inside a recording directory.
pub const PERF_DATA: &str = "perf.data";
pub const GROUND_TRUTH: &str = "ground-truth.txt";
/// perf's decoder errors the recording is meant to produce, one message per line (simulated overflows).
pub const EXPECTED_ERRORS: &str = "expected-errors.txt";

/// The type of the `intel_pt` PMU here, or 8, a value it commonly has.
pub fn intel_pt_pmu_type() -> u32 {
    std::fs::read_to_string("/sys/bus/event_source/devices/intel_pt/type")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8)
}

/// The perf-time clock: perf time = time_zero + tsc · mult >> shift (a 2.4 GHz TSC).
#[derive(Clone, Copy, Debug)]
pub struct TimeConv {
    pub shift: u64,
    pub mult: u64,
    pub zero: u64,
}

impl TimeConv {
    pub const DEFAULT: TimeConv = TimeConv {
        shift: 31,
        mult: 894_784_853,
        zero: 0,
    };

    /// As perf's `tsc_to_perf_time`, so that a record stamped with this is at the TSC packet's time.
    pub fn perf_time(&self, tsc: u64) -> u64 {
        let quot = tsc >> self.shift;
        let rem = tsc & ((1u64 << self.shift) - 1);
        self.zero
            .wrapping_add(quot.wrapping_mul(self.mult))
            .wrapping_add((rem * self.mult) >> self.shift)
    }

    /// As perf's `perf_time_to_tsc`: how perf maps a record's time back to a TSC when it decides
    /// how far to decode a CPU's trace before the record (up to the first state at or past it).
    pub fn tsc(&self, time: u64) -> u64 {
        let t = time.wrapping_sub(self.zero);
        let (quot, rem) = (t / self.mult, t % self.mult);
        (quot << self.shift) + (rem << self.shift) / self.mult
    }

    /// The first perf time that perf maps back to a TSC after `tsc`. Nanoseconds are coarser than TSC
    /// ticks: [`TimeConv::perf_time`] rounds down, and the way back rounds down again, so a record
    /// stamped `perf_time(tsc)` may come back up to 3 ticks early — at the very TSC of a packet that
    /// precedes it. perf processes a record as soon as a trace state reaches its TSC, so a context
    /// switch stamped that way is applied before the outgoing task's last instructions, which perf then
    /// gives to the incoming task.
    pub fn perf_time_after(&self, tsc: u64) -> u64 {
        let mut time = self.perf_time(tsc + 1);
        while self.tsc(time) <= tsc {
            time += 1;
        }
        time
    }
}

/// Runs `program` and writes its recording into `dir`.
pub fn record(
    program: &str,
    args: &[String],
    dir: &Path,
    opts: &Options,
) -> Result<Recording, RecordError> {
    if let Some(cpus) = opts.per_cpu {
        let sched_opts = sched::Options {
            trace: opts.trace.clone(),
            cpus,
            quantum: opts.quantum,
            kernel_ticks: opts.encode.kernel_ticks,
            ..sched::Options::default()
        };
        let timeline = sched::run(program, args, &sched_opts)?;
        return write_per_cpu(timeline, dir, opts);
    }
    let execution = trace::run(program, args, &opts.trace)?;
    write(execution, dir, opts)
}

/// Writes the recording of an execution into `dir`.
pub fn write(execution: Execution, dir: &Path, opts: &Options) -> Result<Recording, RecordError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut cfg = opts.encode.clone();
    if let Some(f) = &opts.filter {
        let maps: Vec<Mapping> = execution
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Map(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        check_mapped(f, &maps)?;
        cfg.filter = Some(f.runtime_ranges(&maps));
    }
    let encoded = encode::encode(&execution.events, &cfg);
    let tc = TimeConv::DEFAULT;
    let pid = execution.pid;
    let pt_id = 1;
    let pmu_type = intel_pt_pmu_type();

    let attr = per_thread_attr(&cfg, pmu_type, pt_id);
    let mut pd = PerfData::new(vec![attr]);
    let mut priv_ = auxtrace_priv(&tc, &cfg, opts.timeless, pmu_type);
    if let Some(f) = &opts.filter {
        add_filter_string(&mut priv_, f);
    }
    pd.auxtrace_info(&priv_);
    pd.time_conv(tc.shift, tc.mult, tc.zero, !opts.timeless);

    let sid = |tsc: u64| SampleId {
        pid,
        tid: pid,
        time: tc.perf_time(tsc),
        cpu: 0,
        id: pt_id,
    };
    pd.comm(pid, pid, &execution.comm, true, &sid(encoded.start_tsc));
    let mut map_times = encoded.map_times.iter();
    let mut itrace_started = false;
    for (i, event) in execution.events.iter().enumerate() {
        let Event::Map(m) = event else { continue };
        let &(_, tsc) = map_times
            .find(|(j, _)| *j == i)
            .expect("the encoder times every mapping");
        if !itrace_started && tsc > encoded.start_tsc {
            pd.itrace_start(pid, pid, &sid(encoded.start_tsc));
            itrace_started = true;
        }
        pd.mmap2(pid, pid, m, &sid(tsc));
    }
    if !itrace_started {
        pd.itrace_start(pid, pid, &sid(encoded.start_tsc));
    }
    for (start, end, tsc) in encoded.buffers() {
        let (offset, size) = (start as u64, (end - start) as u64);
        pd.aux(offset, size, 0, &sid(tsc));
        pd.auxtrace(&encoded.bytes[start..end], offset, tsc, 0, pid, -1);
    }
    pd.task(true, pid, pid, pid, pid, &sid(encoded.end_tsc));

    let maps: Vec<&Mapping> = execution
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Map(m) => Some(m),
            _ => None,
        })
        .collect();
    let binaries = fill_build_id_cache(&maps, execution.vdso.as_deref(), dir, &mut pd)?;

    let insns = execution
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::Insn { ip, .. } => Some((i, execution.pid, *ip)),
            _ => None,
        });
    let hidden = merge(&encoded.lost, &encoded.untraced);
    let perf_data = write_files(dir, &pd, insns, &hidden, encoded.stats.overflows)?;

    Ok(Recording {
        dir: dir.to_path_buf(),
        perf_data,
        instructions: execution.instruction_ips().count() as u64,
        rep_iterations: execution.rep_iterations,
        exit_code: execution.exit_code,
        tasks: 1,
        cpus: None,
        switches: 0,
        trace_bytes: encoded.bytes.len(),
        buffers: encoded.buffers().len(),
        stats: encoded.stats,
        lost: encoded.lost,
        binaries,
    })
}

/// Writes a per-CPU recording of a timeline into `dir`: what `perf record -a -e intel_pt//u` writes,
/// with SWITCH_CPU_WIDE records for the context switches and one AUXTRACE queue per CPU.
pub fn write_per_cpu(
    timeline: Timeline,
    dir: &Path,
    opts: &Options,
) -> Result<Recording, RecordError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cfg = opts.encode.clone();
    if let Some(f) = &opts.filter {
        let maps = sched::mapped_files(&timeline);
        check_mapped(f, &maps)?;
    }
    let resolve = |maps: &[Mapping]| {
        opts.filter
            .as_ref()
            .map_or(Vec::new(), |f| f.runtime_ranges(maps))
    };
    let streams = encode::encode_timeline_filtered(
        &timeline,
        &cfg,
        opts.filter
            .as_ref()
            .map(|_| &resolve as encode::ResolveFilter<'_>),
    );
    let mut lost: Vec<usize> = streams
        .iter()
        .flat_map(|s| s.lost.iter().copied())
        .collect();
    lost.sort_unstable();
    let tc = TimeConv::DEFAULT;
    let pmu_type = intel_pt_pmu_type();
    // One id per CPU: the events perf opens for intel_pt on each CPU.
    let ids: Vec<(u64, u32)> = (0..timeline.cpus).map(|c| (u64::from(c) + 1, c)).collect();
    let attr = Attr {
        type_: pmu_type,
        config: pt_config(&opts.encode),
        sample_period: 1,
        sample_type: sample::IP | sample::TID | sample::TIME | sample::CPU | sample::IDENTIFIER,
        flags: attr_flag::DISABLED
            | attr_flag::EXCLUDE_KERNEL
            | attr_flag::EXCLUDE_HV
            | attr_flag::MMAP
            | attr_flag::COMM
            | attr_flag::TASK
            | attr_flag::SAMPLE_ID_ALL
            | attr_flag::EXCLUDE_GUEST
            | attr_flag::MMAP2
            | attr_flag::COMM_EXEC
            | attr_flag::CONTEXT_SWITCH,
        ids: ids.iter().map(|&(id, _)| id).collect(),
    };
    let mut pd = PerfData::new(vec![attr]);
    pd.id_index(&ids);
    let mut priv_ = auxtrace_priv(&tc, &opts.encode, opts.timeless, pmu_type);
    priv_[7] = 3; // have_sched_switch: SWITCH_CPU_WIDE
    priv_[9] = 1; // per_cpu_mmaps
    if let Some(f) = &opts.filter {
        add_filter_string(&mut priv_, f);
    }
    pd.auxtrace_info(&priv_);
    pd.time_conv(tc.shift, tc.mult, tc.zero, !opts.timeless);

    let sid = |task: (i32, i32), tick: u64, cpu: u32| SampleId {
        pid: task.0,
        tid: task.1,
        time: tc.perf_time(cfg.tsc_at(tick)),
        cpu,
        id: u64::from(cpu) + 1,
    };
    for e in &timeline.events {
        let (pid, tid) = e.task;
        let s = sid(e.task, e.tick, e.cpu);
        match &e.what {
            What::Insn { .. } | What::Interrupt { .. } => {}
            What::Map(m) => pd.mmap2(pid, tid, m, &s),
            What::Exec { comm } => pd.comm(pid, tid, comm, true, &s),
            What::Fork { parent } => pd.task(false, pid, parent.0, tid, parent.1, &s),
            What::Exit { parent } => pd.task(true, pid, parent.0, tid, parent.1, &s),
            What::Switch { prev, preempted } => {
                // After every packet the outgoing task wrote on this CPU (its TSC, MTC and the
                // decoder's timestamps are at most the TSC at this tick, even a task preempted a few
                // instructions after its TIP.PGE), and long before the incoming task's TIP.PGE
                // (`switch_ticks` later).
                let time = tc.perf_time_after(cfg.tsc_at(e.tick));
                let out = SampleId {
                    time,
                    ..sid(*prev, e.tick, e.cpu)
                };
                pd.switch_cpu_wide(true, *preempted, e.task, &out);
                pd.switch_cpu_wide(false, false, *prev, &SampleId { time, ..s });
            }
        }
    }
    let mut stats = Stats::default();
    let mut trace_bytes = 0;
    let mut buffers = 0;
    for (cpu, stream) in streams.iter().enumerate() {
        buffers += stream.buffers().len();
        let cpu = cpu as u32;
        for (start, end, tsc) in stream.buffers() {
            let (offset, size) = (start as u64, (end - start) as u64);
            let s = SampleId {
                pid: -1,
                tid: -1,
                time: tc.perf_time(tsc),
                cpu,
                id: u64::from(cpu) + 1,
            };
            pd.aux(offset, size, 0, &s);
            pd.auxtrace(&stream.bytes[start..end], offset, tsc, cpu, -1, cpu as i32);
        }
        stats += stream.stats;
        trace_bytes += stream.bytes.len();
    }

    let maps = sched::mapped_files(&timeline);
    let maps: Vec<&Mapping> = maps.iter().collect();
    let binaries = fill_build_id_cache(&maps, timeline.vdso.as_deref(), dir, &mut pd)?;
    let insns = timeline
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.what {
            What::Insn { ip, .. } => Some((i, e.task.1, ip)),
            _ => None,
        });
    let untraced = streams.first().map_or(&[][..], |s| &s.untraced[..]);
    let hidden = merge(&lost, untraced);
    let perf_data = write_files(dir, &pd, insns, &hidden, stats.overflows)?;
    Ok(Recording {
        dir: dir.to_path_buf(),
        perf_data,
        instructions: timeline.instructions().count() as u64,
        rep_iterations: timeline.rep_iterations,
        exit_code: timeline.exit_code,
        tasks: timeline.tasks().len(),
        cpus: Some(timeline.cpus),
        switches: timeline.switches(),
        trace_bytes,
        buffers,
        stats,
        lost,
        binaries,
    })
}

/// The intel_pt attr of a per-thread `perf record -e intel_pt//u -- PROGRAM`, with one id.
pub(crate) fn per_thread_attr(cfg: &encode::Config, pmu_type: u32, pt_id: u64) -> Attr {
    Attr {
        type_: pmu_type,
        config: pt_config(cfg),
        sample_period: 1,
        sample_type: sample::IP | sample::TID | sample::TIME | sample::CPU | sample::IDENTIFIER,
        flags: attr_flag::DISABLED
            | attr_flag::INHERIT
            | attr_flag::EXCLUDE_KERNEL
            | attr_flag::EXCLUDE_HV
            | attr_flag::MMAP
            | attr_flag::COMM
            | attr_flag::ENABLE_ON_EXEC
            | attr_flag::TASK
            | attr_flag::SAMPLE_ID_ALL
            | attr_flag::EXCLUDE_GUEST
            | attr_flag::MMAP2
            | attr_flag::COMM_EXEC,
        ids: vec![pt_id],
    }
}

/// The intel_pt config perf would use for `intel_pt//u`: pt, tsc, branch, psb_period=3, mtc with its
/// mtc_period when the trace has MTC, cyc (CycThresh 0) in cycle-accurate mode, and noretcomp when
/// return compression is off.
pub(crate) fn pt_config(cfg: &encode::Config) -> u64 {
    let mut c = 1 | PT_TSC_BIT | (1 << 13) | (3 << 24);
    if !cfg.return_compression {
        c |= PT_NORETCOMP_BIT;
    }
    if let Some(freq) = cfg.mtc_freq {
        c |= PT_MTC_BIT | (u64::from(freq) << PT_MTC_FREQ_SHIFT);
    }
    if cfg.cyc {
        c |= PT_CYC_BIT;
    }
    c
}

const PT_MTC_FREQ_SHIFT: u64 = 14;

const PT_TSC_BIT: u64 = 1 << 10;
const PT_NORETCOMP_BIT: u64 = 1 << 11;
const PT_MTC_BIT: u64 = 1 << 9;
const PT_CYC_BIT: u64 = 1 << 1;

/// AUXTRACE_INFO priv[0..=16] (see formats.md), per-thread, no filter.
pub(crate) fn auxtrace_priv(
    tc: &TimeConv,
    cfg: &encode::Config,
    timeless: bool,
    pmu_type: u32,
) -> Vec<u64> {
    vec![
        u64::from(pmu_type),
        tc.shift,
        tc.mult,
        tc.zero,
        u64::from(!timeless), // cap_user_time_zero
        PT_TSC_BIT,
        PT_NORETCOMP_BIT,
        0, // have_sched_switch
        0, // snapshot_mode
        0, // per_cpu_mmaps
        PT_MTC_BIT,
        0xf << PT_MTC_FREQ_SHIFT, // mtc_freq_bits
        2 * cfg.tsc_per_ctc,      // tsc_ctc_ratio_n
        2,                        // tsc_ctc_ratio_d
        PT_CYC_BIT,
        u64::from(cfg.max_nonturbo_ratio),
        0, // filter_str_len
    ]
}

/// Copies every mapped binary into the cache and adds its BUILD_ID entry.
fn fill_build_id_cache(
    maps: &[&Mapping],
    vdso: Option<&[u8]>,
    dir: &Path,
    pd: &mut PerfData,
) -> Result<Vec<(String, String)>, RecordError> {
    let mut done: Vec<(String, String)> = Vec::new();
    for m in maps {
        if done.iter().any(|(p, _)| *p == m.path) {
            continue;
        }
        let image = if m.is_vdso() {
            match vdso {
                Some(v) => v.to_vec(),
                None => continue,
            }
        } else {
            let path = Path::new(&m.path);
            std::fs::read(path).map_err(|source| RecordError::Io {
                path: path.to_path_buf(),
                source,
            })?
        };
        let id = buildid::read(&image, &m.path)?;
        buildid::store(dir, &id, &image)?;
        pd.add_build_id(BuildIdEntry {
            pid: -1,
            misc: misc::USER,
            build_id: id.clone(),
            filename: m.path.clone(),
        });
        done.push((m.path.clone(), buildid::hex(&id)));
    }
    Ok(done)
}

/// Two ascending lists of event indices as one.
fn merge(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut all = [a, b].concat();
    all.sort_unstable();
    all.dedup();
    all
}

/// Writes a recording's files into `dir` and returns the perf.data path: the perf.data, its ground
/// truth (`insns`: (event index, tid, ip) of every instruction executed, in order; `lost`: those
/// perf cannot show, lost to a simulated overflow or outside the address filter) and the decoder
/// errors perf must report (one per simulated overflow).
fn write_files(
    dir: &Path,
    pd: &PerfData,
    insns: impl Iterator<Item = (usize, i32, u64)>,
    lost: &[usize],
    overflows: u64,
) -> Result<PathBuf, RecordError> {
    let perf_data = dir.join(PERF_DATA);
    let file = std::fs::File::create(&perf_data).map_err(io_err(&perf_data))?;
    pd.write_to(std::io::BufWriter::new(file))
        .map_err(io_err(&perf_data))?;
    let truth = dir.join(GROUND_TRUTH);
    write_ground_truth(insns, lost, &truth).map_err(io_err(&truth))?;
    let expected = dir.join(EXPECTED_ERRORS);
    if overflows > 0 {
        let text = "Overflow packet\n".repeat(overflows as usize);
        std::fs::write(&expected, text).map_err(io_err(&expected))?;
    } else if expected.exists() {
        std::fs::remove_file(&expected).map_err(io_err(&expected))?;
    }
    Ok(perf_data)
}

/// The instructions perf must show: all that executed (`insns`: (event index, tid, ip)), less those
/// it cannot show (`lost` holds sorted event indices).
fn write_ground_truth(
    insns: impl Iterator<Item = (usize, i32, u64)>,
    lost: &[usize],
    path: &Path,
) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut lost = lost.iter().peekable();
    for (i, tid, ip) in insns {
        if lost.next_if_eq(&&i).is_some() {
            continue;
        }
        writeln!(w, "{tid} {ip:x}")?;
    }
    w.flush()
}

/// Reads a ground-truth file (`.zst`-compressed or not) back: (tid, ip) per executed instruction.
pub fn read_ground_truth(path: &Path) -> std::io::Result<Vec<(u32, u64)>> {
    let bytes = crate::sample::read_maybe_zst(path)?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .map(|l| {
            let (t, ip) = l.split_once(' ').unwrap_or(("", ""));
            match (t.parse::<u32>(), u64::from_str_radix(ip, 16)) {
                (Ok(t), Ok(ip)) => Ok((t, ip)),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad ground-truth line: {l}"),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_filters_parse_and_print_as_perf_writes_them() {
        let exe = std::env::current_exe().unwrap();
        let canonical = std::fs::canonicalize(&exe).unwrap();
        let (exe, canonical) = (exe.display(), canonical.display());
        let f =
            AddrFilter::parse(&format!("filter 0x10/0x20@{exe} , filter 64 / 8 @ {exe}")).unwrap();
        assert_eq!(
            f.perf_string(),
            format!("filter 0x10/0x20@{canonical},filter 0x40/0x8@{canonical}")
        );
        let one = format!("filter 0x10/0x20@{exe}");
        assert!(AddrFilter::parse(&[one.as_str(); 4].join(",")).is_ok());
        assert!(AddrFilter::parse(&[one.as_str(); 5].join(",")).is_err());
        for bad in [
            "",
            ",",
            "filter 0x10/0@/x",
            "start 0x10@/x",
            "filter 0x10/0x10@/not/there",
        ] {
            assert!(AddrFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn perf_time_matches_perf_formula() {
        let tc = TimeConv::DEFAULT;
        assert_eq!(tc.perf_time(0), 0);
        // 2.4e9 ticks is about one second.
        let one_s = tc.perf_time(2_400_000_000);
        assert!((999_999_000..=1_000_001_000).contains(&one_s), "{one_s}");
        assert!(tc.perf_time(1 << 40) < tc.perf_time((1 << 40) + 3));
    }

    #[test]
    fn perf_time_to_tsc_matches_perf() {
        // From perf 6.1's intel_pt log of samples/threads regenerated: "time 1789632385 tsc
        // 0x100024b9d".
        let tc = TimeConv::DEFAULT;
        assert_eq!(tc.tsc(1_789_632_385), 0x1_0002_4b9d);
    }

    #[test]
    fn switch_times_come_back_after_their_tsc() {
        // The regression: a task preempted 4 instructions (3 TSC ticks) after its TIP.PGE at TSC
        // 0x100024b9d had its switch stamped perf_time(0x100024ba0) = 1789632385 ns, which perf maps
        // back to 0x100024b9d, the PGE's own TSC: perf switched tasks first and gave those 4
        // instructions to the incoming thread.
        let tc = TimeConv::DEFAULT;
        let pge = 0x1_0002_4b9d;
        assert!(
            tc.tsc(tc.perf_time(pge + 3)) <= pge,
            "the rounding this guards against"
        );
        for tsc in (1u64 << 32)..(1u64 << 32) + 5000 {
            let t = tc.perf_time_after(tsc);
            assert!(tc.tsc(t) > tsc, "{tsc:#x}");
            assert!(tc.tsc(t) <= tsc + 4, "{tsc:#x}: not much later");
            assert!(tc.tsc(t - 1) <= tsc, "{tsc:#x}: the first such time");
        }
    }
}
