//! The sideband model: an immutable, time-indexed picture of the machines, threads, address
//! spaces and per-CPU scheduling of a recording, built in one pass over its records.
//!
//! Records are applied in the order perf applies them (its ordered-events queue, see
//! `order`), and every change is tagged with its position in that order. A query names a
//! moment — a perf time, a TSC value or an [`Instant`] — which resolves to "the changes
//! applied so far" by one binary search; nothing is mutated after [`Model::build`], so PSB
//! segments can be decoded in parallel against one `&Model`.
//!
//! Semantics follow perf 6.1 (tools/perf/util/machine.c, thread.c, intel-pt.c):
//! - threads are found by tid; a FORK replaces an existing thread of that tid; threads of one
//!   process share its address space, a new process gets a copy of its parent's maps (unless
//!   the FORK is perf's synthesized `FORK_EXEC`); an exec keeps the maps, and the new
//!   program's mappings replace what they overlap, as perf does;
//! - a mapping splits the live maps it overlaps (perf's `maps__fixup_overlappings`);
//! - kernel-mode mappings go to the machine's kernel address space, and addresses from
//!   2^63 up are looked up there (perf's x86_64 `kernel_start`);
//! - the current thread of a CPU follows `intel_pt_context_switch` (SWITCH_CPU_WIDE out gives
//!   the next thread when `have_sched_switch` is 3, a switch in gives the sample's thread) and
//!   `intel_pt_process_itrace_start` (per-CPU recordings only);
//! - a guest's current thread per VCPU follows its switch-in records, the VCPU being the one
//!   the record's sample id has in the ID_INDEX (perf 6.1 leaves the injected records' cpu at
//!   0, so the cpu field cannot be used); a host thread's VCPU comes from the ID_INDEX too.
//!
//! An event applies from its own perf time on: a query at time `t` sees every record with
//! time ≤ `t`, and a query at TSC `x` every record whose time converts to a TSC ≤ `x` — the
//! way perf decodes a queue up to a sideband event's TSC before applying the event.

mod build;
mod maps;
mod order;
mod time;

use std::collections::HashMap;
use std::sync::Arc;

pub use maps::{AddressSpace, BuildIdBytes, Inode, Map};
pub use time::{PtConfig, TscConversion};

/// A point in the model's sequence of changes: the changes before it are applied. Get one
/// with [`Model::instant`]; comparing instants compares moments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(usize);

impl Instant {
    /// Before any record.
    pub const START: Instant = Instant(0);
    /// After every record.
    pub const END: Instant = Instant(usize::MAX);
}

/// A moment to ask the model about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Perf time (ns): every record with time ≤ this is applied.
    Time(u64),
    /// A TSC value: every record whose perf time converts to a TSC ≤ this is applied.
    Tsc(u64),
    Instant(Instant),
}

impl From<u64> for When {
    fn from(time: u64) -> When {
        When::Time(time)
    }
}

impl From<Instant> for When {
    fn from(at: Instant) -> When {
        When::Instant(at)
    }
}

/// A comm a thread took on at some moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comm {
    pub time: u64,
    pub name: Arc<str>,
    /// Set by an exec (COMM misc bit 13), not a rename.
    pub exec: bool,
    seq: usize,
}

/// One thread, from its creation (FORK, or the first record naming it) on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thread {
    /// -1 while unknown.
    pub pid: i32,
    pub tid: i32,
    /// The parent thread's tid, when a FORK said.
    pub ppid: Option<i32>,
    /// Perf time of the record that created it.
    pub start: u64,
    /// Perf time of its EXIT.
    pub exit: Option<u64>,
    comms: Vec<Comm>,
    seq: usize,
}

impl Thread {
    /// Its comm at `at` (the first one when asked before any, as perf falls back to it).
    pub fn comm_at(&self, at: Instant) -> Option<&str> {
        let n = self.comms.partition_point(|c| c.seq < at.0);
        self.comms.get(n.saturating_sub(1)).map(|c| &*c.name)
    }

    /// Its last comm.
    pub fn comm(&self) -> Option<&str> {
        self.comms.last().map(|c| &*c.name)
    }

    pub fn comms(&self) -> &[Comm] {
        &self.comms
    }
}

/// One process (thread-group) instance and its address space.
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: i32,
    /// Perf time of the record that created it.
    pub start: u64,
    seq: usize,
    space: AddressSpace,
}

impl Process {
    pub fn address_space(&self) -> &AddressSpace {
        &self.space
    }
}

/// A machine: the host (machine_pid 0) or one KVM guest (machine_pid = the VM's pid).
#[derive(Clone, Debug)]
pub struct Machine {
    pub machine_pid: i32,
    threads: Vec<Thread>,
    /// tid → indices into `threads`, oldest first.
    by_tid: HashMap<i32, Vec<usize>>,
    processes: Vec<Process>,
    by_pid: HashMap<i32, Vec<usize>>,
    kernel: AddressSpace,
    /// Guests: per VCPU, which guest thread is current.
    vcpus: Vec<Vec<Switch>>,
}

impl Machine {
    fn new(machine_pid: i32) -> Self {
        Machine {
            machine_pid,
            threads: Vec::new(),
            by_tid: HashMap::new(),
            processes: Vec::new(),
            by_pid: HashMap::new(),
            kernel: AddressSpace::default(),
            vcpus: Vec::new(),
        }
    }

    pub fn is_host(&self) -> bool {
        self.machine_pid == 0
    }

    /// The thread with `tid` at `at`: the latest created by then, else the first one.
    pub fn thread(&self, tid: i32, at: Instant) -> Option<&Thread> {
        let list = self.by_tid.get(&tid)?;
        let n = list.partition_point(|&i| self.threads[i].seq < at.0);
        Some(&self.threads[list[n.saturating_sub(1)]])
    }

    /// Every thread instance, in creation order.
    pub fn threads(&self) -> &[Thread] {
        &self.threads
    }

    /// The process with `pid` at `at`: the latest created by then, else the first one.
    pub fn process(&self, pid: i32, at: Instant) -> Option<&Process> {
        let list = self.by_pid.get(&pid)?;
        let n = list.partition_point(|&i| self.processes[i].seq < at.0);
        Some(&self.processes[list[n.saturating_sub(1)]])
    }

    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    pub fn kernel_space(&self) -> &AddressSpace {
        &self.kernel
    }

    /// How many VCPUs have a scheduling timeline (guests only).
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }
}

/// A change of the current thread on a CPU or VCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Switch {
    seq: usize,
    /// -1: unknown.
    tid: i32,
}

fn current(timeline: &[Switch], at: Instant) -> Option<i32> {
    let n = timeline.partition_point(|s| s.seq < at.0);
    timeline
        .get(n.checked_sub(1)?)
        .map(|s| s.tid)
        .filter(|&t| t != -1)
}

/// The guest a host VCPU thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vcpu {
    pub machine_pid: i32,
    pub vcpu: u32,
}

/// What runs in the guest while a host CPU runs a VCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestContext {
    pub machine_pid: i32,
    pub vcpu: u32,
    pub pid: i32,
    pub tid: i32,
}

/// perf time ⇄ TSC conversions the recording carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clocks {
    /// From AUXTRACE_INFO: what Intel PT decoding uses.
    pub intel_pt: Option<TscConversion>,
    /// From the TIME_CONV record.
    pub time_conv: Option<TscConversion>,
}

impl Clocks {
    /// The conversion for Intel PT timestamps: AUXTRACE_INFO's, else TIME_CONV's.
    pub fn tsc(&self) -> Option<&TscConversion> {
        self.intel_pt.as_ref().or(self.time_conv.as_ref())
    }
}

/// A record the model could not make sense of. Counted, never fatal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error("record at {offset:#x}: EXIT of unknown thread {pid}/{tid}")]
    ExitOfUnknownThread { offset: u64, pid: i32, tid: i32 },
    #[error("record at {offset:#x}: context switch without a cpu in its sample id")]
    SwitchWithoutCpu { offset: u64 },
    #[error("record at {offset:#x}: a per-thread switch out when CPU-wide switches were expected")]
    UnexpectedSwitchOut { offset: u64 },
    #[error("record at {offset:#x}: guest switch without a VCPU")]
    GuestSwitchWithoutVcpu { offset: u64 },
    #[error("record at {offset:#x}: guest record whose machine is unknown")]
    UnknownGuestMachine { offset: u64 },
    #[error("record at {offset:#x}: ITRACE_START without a cpu in its sample id")]
    ItraceStartWithoutCpu { offset: u64 },
    #[error("record at {offset:#x}: time {time} is before records already applied")]
    OutOfOrder { offset: u64, time: u64 },
    #[error("reading records stopped: {0}")]
    Records(String),
    #[error("BUILD_ID feature: {0}")]
    BuildIds(String),
    #[error("AUXTRACE_INFO: {0}")]
    AuxtraceInfo(String),
}

impl Warning {
    /// A short name of the kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Warning::ExitOfUnknownThread { .. } => "exit of unknown thread",
            Warning::SwitchWithoutCpu { .. } => "switch without cpu",
            Warning::UnexpectedSwitchOut { .. } => "unexpected switch out",
            Warning::GuestSwitchWithoutVcpu { .. } => "guest switch without vcpu",
            Warning::UnknownGuestMachine { .. } => "unknown guest machine",
            Warning::ItraceStartWithoutCpu { .. } => "itrace start without cpu",
            Warning::OutOfOrder { .. } => "out of order",
            Warning::Records(_) => "records",
            Warning::BuildIds(_) => "build ids",
            Warning::AuxtraceInfo(_) => "auxtrace info",
        }
    }
}

/// Warnings by kind, keeping the first few of each in full.
#[derive(Clone, Debug, Default)]
pub struct Warnings {
    counts: std::collections::BTreeMap<&'static str, u64>,
    examples: Vec<Warning>,
}

impl Warnings {
    const EXAMPLES_PER_KIND: u64 = 8;

    pub(crate) fn push(&mut self, w: Warning) {
        let n = self.counts.entry(w.kind()).or_insert(0);
        *n += 1;
        if *n <= Self::EXAMPLES_PER_KIND {
            self.examples.push(w);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// How many of each kind.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts.iter().map(|(&k, &n)| (k, n))
    }

    /// The first few of each kind, in the order they arose.
    pub fn examples(&self) -> &[Warning] {
        &self.examples
    }
}

/// On x86_64 perf takes every address from 2^63 up as kernel (`machine__kernel_start`).
pub const KERNEL_START: u64 = 1 << 63;

/// The sideband model of one recording. See the module docs.
#[derive(Clone, Debug)]
pub struct Model {
    /// `[0]` is the host; guests follow by machine_pid.
    machines: Vec<Machine>,
    /// Host CPU → current-thread timeline.
    cpus: Vec<Vec<Switch>>,
    /// Per change: its effective perf time and TSC (both non-decreasing).
    clock_time: Vec<u64>,
    clock_tsc: Vec<u64>,
    /// Host VCPU thread tid → the guest and VCPU it runs.
    host_vcpus: HashMap<i32, Vcpu>,
    pub clocks: Clocks,
    /// The Intel PT parameters, when the recording has Intel PT.
    pub pt: Option<PtConfig>,
    pub warnings: Warnings,
}

impl Model {
    /// Builds the model from every record of `recording` (and its BUILD_ID feature). Never
    /// fails: what makes no sense is counted in [`Model::warnings`], and a read error ends the
    /// records there, with a warning.
    pub fn build(recording: &crate::perf::Recording<'_>) -> Model {
        build::build(recording)
    }

    /// The instant a moment resolves to.
    pub fn instant(&self, when: impl Into<When>) -> Instant {
        match when.into() {
            When::Time(t) => Instant(self.clock_time.partition_point(|&x| x <= t)),
            When::Tsc(t) => Instant(self.clock_tsc.partition_point(|&x| x <= t)),
            When::Instant(at) => at,
        }
    }

    /// The host.
    pub fn host(&self) -> &Machine {
        &self.machines[0]
    }

    /// The machine with this machine_pid (0 = host).
    pub fn machine(&self, machine_pid: i32) -> Option<&Machine> {
        self.machines.iter().find(|m| m.machine_pid == machine_pid)
    }

    /// The host, then the guests by machine_pid.
    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// The host CPUs that have a scheduling timeline (0..n).
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// The tid current on host `cpu` at `when` (None before anything said, or when unknown).
    pub fn current_tid(&self, cpu: u32, when: impl Into<When>) -> Option<i32> {
        current(self.cpus.get(cpu as usize)?, self.instant(when))
    }

    /// The thread current on host `cpu` at `when`.
    pub fn current_thread(&self, cpu: u32, when: impl Into<When>) -> Option<&Thread> {
        let at = self.instant(when);
        let tid = current(self.cpus.get(cpu as usize)?, at)?;
        self.host().thread(tid, at)
    }

    /// The guest thread current on a guest's `vcpu` at `when`.
    pub fn guest_thread(
        &self,
        machine_pid: i32,
        vcpu: u32,
        when: impl Into<When>,
    ) -> Option<&Thread> {
        let at = self.instant(when);
        let machine = self.machine(machine_pid).filter(|m| !m.is_host())?;
        let tid = current(machine.vcpus.get(vcpu as usize)?, at)?;
        machine.thread(tid, at)
    }

    /// The guest and VCPU a host thread runs (from the ID_INDEX; else from a `CPU n/KVM` comm
    /// of a guest's process).
    pub fn vcpu_of_host_thread(&self, tid: i32) -> Option<Vcpu> {
        self.host_vcpus.get(&tid).copied()
    }

    /// What the guest runs while host `cpu` runs a VCPU thread at `when`, as perf 6.1's
    /// `intel_pt_get_guest_from_sideband` decides it: the host thread's process is a guest, its
    /// VCPU is known, and that VCPU has a current guest thread the guest knows.
    pub fn guest_context(&self, cpu: u32, when: impl Into<When>) -> Option<GuestContext> {
        let at = self.instant(when);
        let host_thread = self.current_thread(cpu, at)?;
        self.guest_context_of(host_thread, at)
    }

    /// [`Self::guest_context`] for a known host thread.
    pub fn guest_context_of(
        &self,
        host_thread: &Thread,
        when: impl Into<When>,
    ) -> Option<GuestContext> {
        let at = self.instant(when);
        let machine = self
            .machine(host_thread.pid)
            .filter(|m| !m.is_host() && host_thread.pid > 0)?;
        let vcpu = self.vcpu_of_host_thread(host_thread.tid)?;
        if vcpu.machine_pid != machine.machine_pid {
            return None;
        }
        let tid = current(machine.vcpus.get(vcpu.vcpu as usize)?, at)?;
        let guest = machine.thread(tid, at)?;
        Some(GuestContext {
            machine_pid: machine.machine_pid,
            vcpu: vcpu.vcpu,
            pid: guest.pid,
            tid,
        })
    }

    /// The thread an AUX queue's trace belongs to at `when`, as perf's
    /// `intel_pt_set_pid_tid_cpu` decides: the queue's own tid for per-thread queues without
    /// switch events, else the thread current on the queue's CPU.
    pub fn queue_thread(
        &self,
        queue_tid: i32,
        queue_cpu: i32,
        when: impl Into<When>,
    ) -> Option<&Thread> {
        let at = self.instant(when);
        let switches = self.pt.as_ref().is_some_and(|p| p.have_sched_switch != 0);
        if queue_tid == -1 || switches {
            let cpu = u32::try_from(queue_cpu).ok()?;
            self.current_thread(cpu, at)
        } else {
            self.host().thread(queue_tid, at)
        }
    }

    /// The mapping of `ip` in process `pid` of a machine at `when`: kernel addresses (from
    /// [`KERNEL_START`] up) in the machine's kernel space, others in the process's.
    pub fn map_at(
        &self,
        machine_pid: i32,
        pid: i32,
        ip: u64,
        when: impl Into<When>,
    ) -> Option<&Map> {
        let at = self.instant(when);
        let machine = self.machine(machine_pid)?;
        if ip >= KERNEL_START {
            machine.kernel.find(ip, at)
        } else {
            machine.process(pid, at)?.space.find(ip, at)
        }
    }

    /// perf time → TSC with the Intel PT conversion (identity without one).
    pub fn perf_to_tsc(&self, time: u64) -> u64 {
        self.clocks.tsc().map_or(time, |c| c.perf_to_tsc(time))
    }

    /// TSC → perf time with the Intel PT conversion (identity without one).
    pub fn tsc_to_perf(&self, tsc: u64) -> u64 {
        self.clocks.tsc().map_or(tsc, |c| c.tsc_to_perf(tsc))
    }
}
