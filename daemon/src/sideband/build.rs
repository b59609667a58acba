//! Building a [`Model`]: read every record once, order them as perf does, apply them.

use std::collections::HashMap;
use std::sync::Arc;

use super::maps::{AddressSpace, BuildIdBytes, Inode, Map};
use super::order::{self, Arrival};
use super::time::{PtConfig, TscConversion};
use super::{Clocks, Comm, Machine, Model, Process, Switch, Thread, Vcpu, Warning, Warnings};
use crate::perf::{
    misc, record_type, IdIndexEntry, Mmap2File, Record, RecordBody, Recording, Task,
};

/// CPU numbers above this are taken as damage, not as CPUs (they would size the timelines).
const MAX_CPU: u32 = 1 << 16;

/// The sample-id fields a record's handling needs.
#[derive(Clone, Copy, Debug, Default)]
struct Origin {
    offset: u64,
    cpumode: u16,
    id: Option<u64>,
    cpu: Option<u32>,
    pid: Option<i32>,
    tid: Option<i32>,
}

impl Origin {
    fn is_guest(&self) -> bool {
        matches!(self.cpumode, misc::GUEST_KERNEL | misc::GUEST_USER)
    }
}

/// The part of a sideband record the model keeps, owned.
#[derive(Clone, Debug)]
enum Event {
    Mmap {
        pid: i32,
        tid: i32,
        map: Map,
    },
    Comm {
        pid: i32,
        tid: i32,
        name: Arc<str>,
        exec: bool,
    },
    Fork {
        task: Task,
        synthesized: bool,
    },
    Exit {
        task: Task,
    },
    ItraceStart {
        pid: i32,
        tid: i32,
    },
    Switch {
        out: bool,
        cpu_wide: bool,
        next_prev: (i32, i32),
    },
}

impl Event {
    fn from_record(r: &Record<'_>) -> Option<Event> {
        let cpumode = r.header.cpumode();
        Some(match &r.body {
            RecordBody::Mmap(m) | RecordBody::Mmap2(m) => {
                let (inode, build_id) = match m.file {
                    Some(Mmap2File::Inode {
                        maj,
                        min,
                        ino,
                        ino_generation,
                    }) => (
                        Some(Inode {
                            maj,
                            min,
                            ino,
                            ino_generation,
                        }),
                        None,
                    ),
                    Some(Mmap2File::BuildId(id)) => (None, Some(BuildIdBytes::new(id))),
                    None => (None, None),
                };
                Event::Mmap {
                    pid: m.pid as i32,
                    tid: m.tid as i32,
                    map: Map {
                        start: m.start,
                        len: m.len,
                        pgoff: m.pgoff,
                        filename: String::from_utf8_lossy(m.filename).into(),
                        prot: m.prot,
                        flags: m.flags,
                        inode,
                        build_id,
                        cpumode,
                        time: r.sample_id.time.unwrap_or(0),
                    },
                }
            }
            RecordBody::Comm {
                pid,
                tid,
                comm,
                exec,
            } => Event::Comm {
                pid: *pid as i32,
                tid: *tid as i32,
                name: String::from_utf8_lossy(comm).into(),
                exec: *exec,
            },
            // perf marks the FORKs it synthesizes for running tasks with misc bit 13
            // (PERF_RECORD_MISC_FORK_EXEC): their maps come as MMAPs, not from the parent.
            RecordBody::Fork(task) => Event::Fork {
                task: *task,
                synthesized: r.header.misc & (1 << 13) != 0,
            },
            RecordBody::Exit(task) => Event::Exit { task: *task },
            RecordBody::ItraceStart { pid, tid } => Event::ItraceStart {
                pid: *pid as i32,
                tid: *tid as i32,
            },
            RecordBody::Switch { out, .. } => Event::Switch {
                out: *out,
                cpu_wide: false,
                next_prev: (-1, -1),
            },
            RecordBody::SwitchCpuWide {
                out,
                next_prev_pid,
                next_prev_tid,
                ..
            } => Event::Switch {
                out: *out,
                cpu_wide: true,
                next_prev: (*next_prev_pid as i32, *next_prev_tid as i32),
            },
            _ => return None,
        })
    }
}

struct Pending {
    origin: Origin,
    time: u64,
    event: Option<Event>,
}

pub(super) fn build(rec: &Recording<'_>) -> Model {
    let mut warnings = Warnings::default();
    let mut pending = Vec::new();
    let mut arrivals = Vec::new();
    let mut id_index: HashMap<u64, IdIndexEntry> = HashMap::new();
    let mut clocks = Clocks::default();
    let mut pt = None;

    for record in rec.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                warnings.push(Warning::Records(e.to_string()));
                break;
            }
        };
        let type_ = record.header.type_;
        let time = record.sample_id.time.unwrap_or(0);
        arrivals.push(if type_ == record_type::FINISHED_ROUND {
            Arrival::Round
        } else if type_ >= record_type::USER_TYPE_START || time == 0 || time == u64::MAX {
            Arrival::Immediate
        } else {
            Arrival::Timed(time)
        });
        // perf handles its own record types when it reads them, so the ID_INDEX, TIME_CONV and
        // AUXTRACE_INFO are known before any queued record is applied.
        match &record.body {
            RecordBody::IdIndex(index) => {
                for e in index.entries() {
                    id_index.insert(e.id, e);
                }
            }
            RecordBody::TimeConv(tc) => clocks.time_conv = Some(TscConversion::from_time_conv(tc)),
            RecordBody::AuxtraceInfo(info) => match info.intel_pt() {
                Ok(Some(info)) => {
                    clocks.intel_pt = Some(TscConversion::from_intel_pt(&info));
                    pt = Some(PtConfig::new(&info, &rec.attrs));
                }
                Ok(None) => {}
                Err(e) => warnings.push(Warning::AuxtraceInfo(e.to_string())),
            },
            _ => {}
        }
        let sid = &record.sample_id;
        pending.push(Pending {
            origin: Origin {
                offset: record.offset,
                cpumode: record.header.cpumode(),
                id: sid.id,
                cpu: sid.cpu,
                pid: sid.pid.map(|p| p as i32),
                tid: sid.tid.map(|t| t as i32),
            },
            time,
            event: Event::from_record(&record),
        });
    }

    let mut build_ids = HashMap::new();
    match rec.features.build_ids() {
        Ok(ids) => {
            for b in ids {
                let machine_pid = if b.is_guest() { b.pid } else { 0 };
                let name = String::from_utf8_lossy(b.filename).into_owned();
                build_ids.insert((machine_pid, name), BuildIdBytes::new(b.id));
            }
        }
        Err(e) => warnings.push(Warning::BuildIds(e.to_string())),
    }

    let mut b = Builder {
        machines: vec![Machine::new(0)],
        cpus: Vec::new(),
        clock_time: Vec::new(),
        clock_tsc: Vec::new(),
        host_vcpus: HashMap::new(),
        id_index,
        build_ids,
        conv: clocks.tsc().copied(),
        have_sched_switch: pt.as_ref().map_or(0, |p: &PtConfig| p.have_sched_switch),
        per_cpu_mmaps: pt.as_ref().is_some_and(|p| p.per_cpu_mmaps),
        warnings,
    };
    b.register_guests();
    for d in order::deliver(arrivals) {
        let p = &pending[d.index];
        let Some(event) = &p.event else { continue };
        if d.late {
            b.warnings.push(Warning::OutOfOrder {
                offset: p.origin.offset,
                time: p.time,
            });
        }
        let seq = b.tick(d.time);
        b.apply(&p.origin, event, seq, d.time);
    }
    b.finish(clocks, pt)
}

struct Builder {
    machines: Vec<Machine>,
    cpus: Vec<Vec<Switch>>,
    clock_time: Vec<u64>,
    clock_tsc: Vec<u64>,
    host_vcpus: HashMap<i32, Vcpu>,
    id_index: HashMap<u64, IdIndexEntry>,
    build_ids: HashMap<(i32, String), BuildIdBytes>,
    conv: Option<TscConversion>,
    have_sched_switch: u64,
    per_cpu_mmaps: bool,
    warnings: Warnings,
}

impl Builder {
    /// Starts the next change at perf time `time`; returns its sequence number.
    fn tick(&mut self, time: u64) -> usize {
        let prev_tsc = self.clock_tsc.last().copied().unwrap_or(0);
        // perf converts only nonzero times (time_zero is often "negative": the subtraction
        // wraps on purpose). Kept non-decreasing so TSC queries can binary-search.
        let tsc = match self.conv {
            Some(c) if time != 0 => c.perf_to_tsc(time),
            _ => time,
        };
        self.clock_time.push(time);
        self.clock_tsc.push(tsc.max(prev_tsc));
        self.clock_time.len() - 1
    }

    /// The ID_INDEX's guests (perf's `perf_session__register_guest`, `..._set_guest_cpu`):
    /// each gets a machine with its idle thread, and each VCPU's host thread its VCPU.
    fn register_guests(&mut self) {
        let seq = self.tick(0);
        let mut entries: Vec<IdIndexEntry> = self.id_index.values().copied().collect();
        entries.sort_by_key(|e| e.id);
        for e in entries {
            let (Some(machine_pid), Some(vcpu)) = (e.machine_pid, e.vcpu) else {
                continue;
            };
            let Ok(machine_pid) = i32::try_from(machine_pid) else {
                continue;
            };
            if machine_pid <= 0 {
                continue;
            }
            self.machine_index(machine_pid, seq);
            let tid = e.tid as i32;
            self.findnew_thread(0, machine_pid, tid, seq, 0);
            self.host_vcpus.insert(
                tid,
                Vcpu {
                    machine_pid,
                    vcpu: vcpu as u32,
                },
            );
        }
    }

    /// The index of the machine with `machine_pid`, made (with its idle thread 0/0) if new.
    fn machine_index(&mut self, machine_pid: i32, seq: usize) -> usize {
        if let Some(i) = self
            .machines
            .iter()
            .position(|m| m.machine_pid == machine_pid)
        {
            return i;
        }
        self.machines.push(Machine::new(machine_pid));
        let i = self.machines.len() - 1;
        self.findnew_thread(i, 0, 0, seq, 0);
        i
    }

    /// Which machine a record belongs to: guest cpumodes go to the guest its sample id's
    /// ID_INDEX entry names (else the pid, as perf falls back to), everything else to the host.
    fn machine_of(&mut self, origin: &Origin, mmap_pid: Option<i32>, seq: usize) -> Option<usize> {
        if !origin.is_guest() {
            return Some(0);
        }
        let indexed = origin
            .id
            .and_then(|id| self.id_index.get(&id))
            .and_then(|e| e.machine_pid)
            .filter(|&p| p > 0)
            .and_then(|p| i32::try_from(p).ok());
        match indexed.or(mmap_pid).or(origin.pid).filter(|&p| p > 0) {
            Some(pid) => Some(self.machine_index(pid, seq)),
            None => {
                self.warnings.push(Warning::UnknownGuestMachine {
                    offset: origin.offset,
                });
                None
            }
        }
    }

    /// perf's `machine__findnew_thread`: the live thread with `tid`, learning its pid if it
    /// was unknown, or a new one.
    fn findnew_thread(&mut self, m: usize, pid: i32, tid: i32, seq: usize, time: u64) -> usize {
        let machine = &mut self.machines[m];
        if let Some(&i) = machine.by_tid.get(&tid).and_then(|l| l.last()) {
            if machine.threads[i].pid == -1 && pid != -1 {
                machine.threads[i].pid = pid;
            }
            let pid = machine.threads[i].pid;
            if pid != -1 {
                self.findnew_process(m, pid, seq, time);
            }
            return i;
        }
        self.new_thread(m, pid, tid, seq, time)
    }

    fn new_thread(&mut self, m: usize, pid: i32, tid: i32, seq: usize, time: u64) -> usize {
        let machine = &mut self.machines[m];
        machine.threads.push(Thread {
            pid,
            tid,
            ppid: None,
            start: time,
            exit: None,
            comms: Vec::new(),
            seq,
        });
        let i = machine.threads.len() - 1;
        machine.by_tid.entry(tid).or_default().push(i);
        if pid != -1 {
            self.findnew_process(m, pid, seq, time);
        }
        i
    }

    fn findnew_process(&mut self, m: usize, pid: i32, seq: usize, time: u64) -> usize {
        let machine = &self.machines[m];
        if let Some(&i) = machine.by_pid.get(&pid).and_then(|l| l.last()) {
            return i;
        }
        self.new_process(m, pid, AddressSpace::default(), seq, time)
    }

    fn new_process(
        &mut self,
        m: usize,
        pid: i32,
        space: AddressSpace,
        seq: usize,
        time: u64,
    ) -> usize {
        let machine = &mut self.machines[m];
        machine.processes.push(Process {
            pid,
            start: time,
            seq,
            space,
        });
        let i = machine.processes.len() - 1;
        machine.by_pid.entry(pid).or_default().push(i);
        i
    }

    fn apply(&mut self, origin: &Origin, event: &Event, seq: usize, time: u64) {
        match event {
            Event::Mmap { pid, tid, map } => self.mmap(origin, *pid, *tid, map, seq, time),
            Event::Comm {
                pid,
                tid,
                name,
                exec,
            } => {
                let Some(m) = self.machine_of(origin, None, seq) else {
                    return;
                };
                let t = self.findnew_thread(m, *pid, *tid, seq, time);
                self.machines[m].threads[t].comms.push(Comm {
                    time,
                    name: name.clone(),
                    exec: *exec,
                    seq,
                });
                if m == 0 {
                    self.kvm_vcpu_comm(*pid, *tid, name);
                }
            }
            Event::Fork { task, synthesized } => {
                let Some(m) = self.machine_of(origin, None, seq) else {
                    return;
                };
                self.fork(m, task, *synthesized, seq, time);
            }
            Event::Exit { task } => {
                let Some(m) = self.machine_of(origin, None, seq) else {
                    return;
                };
                let machine = &mut self.machines[m];
                match machine
                    .by_tid
                    .get(&(task.tid as i32))
                    .and_then(|l| l.last())
                {
                    Some(&i) => machine.threads[i].exit = Some(time),
                    None => self.warnings.push(Warning::ExitOfUnknownThread {
                        offset: origin.offset,
                        pid: task.pid as i32,
                        tid: task.tid as i32,
                    }),
                }
            }
            Event::ItraceStart { pid, tid } => {
                // perf follows ITRACE_START only in per-CPU recordings.
                if !self.per_cpu_mmaps {
                    return;
                }
                match origin.cpu.filter(|&c| c < MAX_CPU) {
                    Some(cpu) => self.set_current(cpu, *pid, *tid, seq, time),
                    None => self.warnings.push(Warning::ItraceStartWithoutCpu {
                        offset: origin.offset,
                    }),
                }
            }
            Event::Switch {
                out,
                cpu_wide,
                next_prev,
            } => self.switch(origin, *out, *cpu_wide, *next_prev, seq, time),
        }
    }

    fn mmap(&mut self, origin: &Origin, pid: i32, tid: i32, map: &Map, seq: usize, time: u64) {
        let Some(m) = self.machine_of(origin, Some(pid), seq) else {
            return;
        };
        let mut map = map.clone();
        let kernel = map.cpumode_is_kernel() || pid == -1;
        if map.len == 0 && !kernel {
            return;
        }
        if map.build_id.is_none() {
            map.build_id = self.feature_build_id(self.machines[m].machine_pid, &map.filename);
        }
        let map = Arc::new(map);
        if kernel {
            self.machines[m].kernel.insert(map, seq);
        } else {
            self.findnew_thread(m, pid, tid, seq, time);
            let p = self.findnew_process(m, pid, seq, time);
            self.machines[m].processes[p].space.insert(map, seq);
        }
    }

    /// The BUILD_ID feature's id for a file of a machine. perf names the kernel image
    /// `[kernel.kallsyms]` there (a guest's also `[guest.kernel.kallsyms]`), while its map is
    /// `[kernel.kallsyms]_text`.
    fn feature_build_id(&self, machine_pid: i32, filename: &str) -> Option<BuildIdBytes> {
        let get = |name: &str| {
            self.build_ids
                .get(&(machine_pid, name.to_string()))
                .copied()
        };
        if let Some(id) = get(filename) {
            return Some(id);
        }
        if filename.starts_with("[kernel.kallsyms]")
            || filename.starts_with("[guest.kernel.kallsyms")
        {
            return get("[kernel.kallsyms]")
                .or_else(|| get("[guest.kernel.kallsyms]"))
                .or_else(|| get(&format!("[guest.kernel.kallsyms.{machine_pid}]")));
        }
        None
    }

    /// perf's `machine__process_fork_event` and `thread__fork`.
    fn fork(&mut self, m: usize, task: &Task, synthesized: bool, seq: usize, time: u64) {
        let (pid, tid) = (task.pid as i32, task.tid as i32);
        let (ppid, ptid) = (task.ppid as i32, task.ptid as i32);
        let mut parent = self.findnew_thread(m, ppid, ptid, seq, time);
        if self.machines[m].threads[parent].pid != ppid {
            // A stale thread with the parent's tid: perf drops it and starts afresh.
            parent = self.new_thread(m, ppid, ptid, seq, time);
        }
        let parent_comm = self.machines[m].threads[parent].comms.last().cloned();
        let child = if pid == tid && pid != ppid {
            // A new process: the child thread, and a copy of the parent's maps.
            let space = match self.machines[m].by_pid.get(&ppid).and_then(|l| l.last()) {
                Some(&pp) if !synthesized => self.machines[m].processes[pp].space.clone_live(seq),
                _ => AddressSpace::default(),
            };
            self.new_process(m, pid, space, seq, time);
            self.new_thread(m, pid, tid, seq, time)
        } else {
            self.new_thread(m, pid, tid, seq, time)
        };
        let thread = &mut self.machines[m].threads[child];
        thread.ppid = Some(ptid);
        if let Some(comm) = parent_comm {
            thread.comms.push(Comm {
                time,
                exec: false,
                seq,
                ..comm
            });
        }
    }

    /// A host thread named `CPU n/KVM` in a guest's process runs VCPU n (how `perf inject`
    /// maps them); used only where the ID_INDEX did not say.
    fn kvm_vcpu_comm(&mut self, pid: i32, tid: i32, name: &str) {
        let vcpu = name
            .strip_prefix("CPU ")
            .and_then(|r| r.strip_suffix("/KVM"))
            .and_then(|n| n.parse::<u32>().ok());
        let is_guest = self
            .machines
            .iter()
            .any(|m| m.machine_pid == pid && pid > 0);
        if let (Some(vcpu), true) = (vcpu, is_guest) {
            self.host_vcpus.entry(tid).or_insert(Vcpu {
                machine_pid: pid,
                vcpu,
            });
        }
    }

    /// perf's `machine__set_current_tid` on the host.
    fn set_current(&mut self, cpu: u32, pid: i32, tid: i32, seq: usize, time: u64) {
        let cpu = cpu as usize;
        if self.cpus.len() <= cpu {
            self.cpus.resize(cpu + 1, Vec::new());
        }
        self.cpus[cpu].push(Switch { seq, tid });
        self.findnew_thread(0, pid, tid, seq, time);
    }

    /// perf's `intel_pt_context_switch` and `intel_pt_guest_context_switch`.
    fn switch(
        &mut self,
        origin: &Origin,
        out: bool,
        cpu_wide: bool,
        next_prev: (i32, i32),
        seq: usize,
        time: u64,
    ) {
        let (pid, tid) = (origin.pid.unwrap_or(-1), origin.tid.unwrap_or(-1));
        if origin.is_guest() {
            let Some(m) = self.machine_of(origin, None, seq) else {
                return;
            };
            if out {
                return;
            }
            // perf 6.1 takes the VCPU from the sample id's ID_INDEX entry; the injected
            // record's cpu is not the VCPU.
            let vcpu = origin
                .id
                .and_then(|id| self.id_index.get(&id))
                .filter(|e| e.machine_pid.is_some_and(|p| p > 0))
                .and_then(|e| e.vcpu)
                .map(|v| v as u32)
                .or(origin.cpu)
                .filter(|&v| v < MAX_CPU);
            let Some(vcpu) = vcpu else {
                self.warnings.push(Warning::GuestSwitchWithoutVcpu {
                    offset: origin.offset,
                });
                return;
            };
            let machine = &mut self.machines[m];
            if machine.vcpus.len() <= vcpu as usize {
                machine.vcpus.resize(vcpu as usize + 1, Vec::new());
            }
            machine.vcpus[vcpu as usize].push(Switch { seq, tid });
            self.findnew_thread(m, pid, tid, seq, time);
            return;
        }
        let Some(cpu) = origin.cpu.filter(|&c| c < MAX_CPU) else {
            self.warnings.push(Warning::SwitchWithoutCpu {
                offset: origin.offset,
            });
            return;
        };
        let (pid, tid) = if self.have_sched_switch == 3 {
            if !out {
                // A switch in only confirms what the previous switch out said.
                let current = self
                    .cpus
                    .get(cpu as usize)
                    .and_then(|t| t.last())
                    .map(|s| s.tid);
                if current == Some(tid) {
                    return;
                }
                (pid, tid)
            } else if !cpu_wide {
                self.warnings.push(Warning::UnexpectedSwitchOut {
                    offset: origin.offset,
                });
                return;
            } else {
                next_prev
            }
        } else {
            if out {
                return;
            }
            (pid, tid)
        };
        self.set_current(cpu, pid, tid, seq, time);
    }

    fn finish(mut self, clocks: Clocks, pt: Option<PtConfig>) -> Model {
        for machine in &mut self.machines {
            machine.kernel.finish();
            for p in &mut machine.processes {
                p.space.finish();
            }
        }
        // The host first, then guests by machine_pid.
        self.machines[1..].sort_by_key(|m| m.machine_pid);
        Model {
            machines: self.machines,
            cpus: self.cpus,
            clock_time: self.clock_time,
            clock_tsc: self.clock_tsc,
            host_vcpus: self.host_vcpus,
            clocks,
            pt,
            warnings: self.warnings,
        }
    }
}
