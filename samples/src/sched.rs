//! Ground truth for every thread and child process, run on N virtual CPUs.
//!
//! ptrace single-steps every task (thread or process) the program creates; a deterministic scheduler
//! decides which task each virtual CPU runs: in every tick of the model clock each CPU executes one
//! instruction of its current task. A task keeps its CPU for `quantum` instructions, then is preempted if
//! another task is waiting; a syscall keeps the CPU busy in the kernel for `kernel_ticks`, after which a
//! task still blocked in it (a futex, `wait4`, `read` on a pipe) gives the CPU up. Because the tasks run
//! in exactly the order of the [`Timeline`], causality holds: a thread runs code only after the mapping
//! holding it appeared, a child only after its fork.
//!
//! The result is one timeline of instructions and sideband events (mappings, forks, execs, exits,
//! context switches), each stamped with its tick and CPU.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;

use crate::insn::{Insn, Kind};
use crate::trace::{self, os, AddressSpace, Mapping, TraceError};

/// How the tasks are scheduled.
#[derive(Clone, Debug)]
pub struct Options {
    pub trace: trace::Options,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Instructions a task may run before it is preempted for a waiting task.
    pub quantum: u64,
    /// Ticks a syscall or a signal delivery spends in the kernel.
    pub kernel_ticks: u64,
    /// Ticks the kernel spends switching tasks.
    pub switch_ticks: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trace: trace::Options::default(),
            cpus: 2,
            quantum: 20_000,
            kernel_ticks: 500,
            switch_ticks: 200,
        }
    }
}

/// A task: (pid, tid). (0, 0) is the idle task.
pub type Task = (i32, i32);

/// What happened at one tick on one CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// The task executed an instruction (a `rep` string instruction once, however many iterations).
    Insn { ip: u64, insn: Insn },
    /// An asynchronous transfer before the instruction at `at`, which did not execute: a signal
    /// delivered to a handler, or a preemption (then a [`What::Switch`] follows).
    Interrupt { at: u64 },
    /// An executable mapping of the task's process is in place from here on.
    Map(Mapping),
    /// The task was created by `parent` (a thread when the pids are equal, else a process).
    Fork { parent: Task },
    /// The task's process now runs a new program (or, for the first task, its first one).
    Exec { comm: String },
    /// The task is gone.
    Exit { parent: Task },
    /// The CPU switches from `prev` to the event's task (the idle task when either is (0, 0)).
    /// `preempted`: `prev` could still run.
    Switch { prev: Task, preempted: bool },
}

/// One event of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed {
    pub tick: u64,
    pub cpu: u32,
    pub task: Task,
    pub what: What,
}

/// Everything that ran, in order.
#[derive(Clone, Debug)]
pub struct Timeline {
    pub cpus: u32,
    pub events: Vec<Timed>,
    /// The `[vdso]` image, dumped from the first process.
    pub vdso: Option<Vec<u8>>,
    /// The first process's pid and exit code.
    pub pid: i32,
    pub exit_code: i32,
    /// The last tick.
    pub end: u64,
    /// Stops inside `rep` string instructions folded into one instruction each.
    pub rep_iterations: u64,
}

impl Timeline {
    /// (tid, ip) of every instruction, in timeline order.
    pub fn instructions(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.events.iter().filter_map(|e| match e.what {
            What::Insn { ip, .. } => Some((e.task.1, ip)),
            _ => None,
        })
    }

    /// Every task that ran, sorted.
    pub fn tasks(&self) -> Vec<Task> {
        let mut t: Vec<Task> = self
            .events
            .iter()
            .filter(|e| matches!(e.what, What::Insn { .. }))
            .map(|e| e.task)
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Context switches between two real tasks, or from idle to a task (not counting the first).
    pub fn switches(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e.what, What::Switch { .. }))
            .count()
    }
}

/// Runs `program` with `args` to the end of every task it creates, scheduled on `opts.cpus` CPUs.
pub fn run(program: &str, args: &[String], opts: &Options) -> Result<Timeline, TraceError> {
    if opts.cpus == 0 {
        return Err(TraceError::Unsupported(
            "has no CPU to run on (--per-cpu 0)",
        ));
    }
    let path = trace::resolve_program(program)?;
    let child = trace::spawn(&path, program, args, &opts.trace)?;
    let pid = child.pid;
    let mut s = Scheduler::new(pid, opts)?;
    let result = s.run_all();
    if result.is_err() {
        for &tid in s.tasks.keys() {
            // SAFETY: kill(2) on tasks we trace (our child and its descendants); at worst ESRCH.
            unsafe { libc::kill(tid, libc::SIGKILL) };
        }
        let _ = trace::wait(pid);
    }
    result?;
    Ok(Timeline {
        cpus: opts.cpus,
        events: s.events,
        vdso: s.vdso,
        pid,
        exit_code: s.exit_code,
        end: s.tick,
        rep_iterations: s.rep_iterations,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Created; its first (SIGSTOP) stop not yet seen.
    Starting,
    /// Stopped at a user instruction, able to run.
    Ready,
    /// A syscall (or far transfer) was stepped; in the kernel on its CPU until `until`.
    Kernel {
        until: u64,
    },
    /// In a syscall that has not returned; off its CPU.
    Blocked,
    Exited,
}

struct TaskState {
    pid: i32,
    parent: Task,
    state: State,
    ip: u64,
    cpu: Option<u32>,
    /// A signal to deliver with the next step.
    signal: i32,
    /// That signal is caught: the next stop is at its handler, with nothing executed.
    delivering: bool,
    /// Instructions run in the current time slice.
    slice: u64,
    /// Between iterations of a `rep` string instruction.
    in_rep: bool,
    /// Just exec'd: the first step may report a trap without executing anything.
    exec_trap: bool,
    /// The syscall number of the last syscall stepped.
    syscall: u64,
}

impl TaskState {
    /// A task of process `pid`, off every CPU, with nothing pending.
    fn new(pid: i32, parent: Task, state: State, ip: u64) -> Self {
        TaskState {
            pid,
            parent,
            state,
            ip,
            cpu: None,
            signal: 0,
            delivering: false,
            slice: 0,
            in_rep: false,
            exec_trap: false,
            syscall: 0,
        }
    }
}

struct Cpu {
    current: Option<i32>,
    busy_until: u64,
}

struct Scheduler<'a> {
    opts: &'a Options,
    tick: u64,
    tasks: BTreeMap<i32, TaskState>,
    procs: HashMap<i32, AddressSpace>,
    cpus: Vec<Cpu>,
    runq: VecDeque<i32>,
    events: Vec<Timed>,
    vdso: Option<Vec<u8>>,
    root: i32,
    exit_code: i32,
    executed: u64,
    rep_iterations: u64,
    /// Stops collected by [`wait_any`] for tasks not yet known (a new task before its creator's event).
    pending: HashMap<i32, i32>,
}

const SYS_EXIT_GROUP: u64 = 231;
const POLL_TICKS: u64 = 32;

impl<'a> Scheduler<'a> {
    fn new(pid: i32, opts: &'a Options) -> Result<Self, TraceError> {
        trace::trace_children(pid)?;
        let mut s = Scheduler {
            opts,
            tick: 0,
            tasks: BTreeMap::new(),
            procs: HashMap::new(),
            cpus: (0..opts.cpus)
                .map(|_| Cpu {
                    current: None,
                    busy_until: 0,
                })
                .collect(),
            runq: VecDeque::new(),
            events: Vec::new(),
            vdso: None,
            root: pid,
            exit_code: 0,
            executed: 0,
            rep_iterations: 0,
            pending: HashMap::new(),
        };
        s.tasks.insert(
            pid,
            TaskState::new(
                pid,
                (pid, pid),
                State::Ready,
                trace::instruction_pointer(pid)?,
            ),
        );
        s.exec(pid)?;
        s.tasks.get_mut(&pid).expect("root task").exec_trap = false;
        s.runq.push_back(pid);
        Ok(s)
    }

    fn push(&mut self, cpu: u32, task: Task, what: What) {
        self.events.push(Timed {
            tick: self.tick,
            cpu,
            task,
            what,
        });
    }

    fn task_of(&self, tid: i32) -> Task {
        (self.tasks[&tid].pid, tid)
    }

    fn cpu_of(&self, tid: i32) -> u32 {
        self.tasks[&tid].cpu.unwrap_or(0)
    }

    /// The task's process runs a new program: COMM, then its executable mappings.
    fn exec(&mut self, tid: i32) -> Result<(), TraceError> {
        let pid = self.tasks[&tid].pid;
        if self
            .tasks
            .iter()
            .any(|(&t, s)| t != tid && s.pid == pid && s.state != State::Exited)
        {
            return Err(TraceError::Unsupported(
                "calls execve from a multi-threaded process",
            ));
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_err(os("read /proc/PID/comm"))?
            .trim_end()
            .to_string();
        self.procs.insert(pid, AddressSpace::open(pid)?);
        let t = self.tasks.get_mut(&tid).expect("task");
        t.ip = trace::instruction_pointer(tid)?;
        t.exec_trap = true;
        let cpu = self.cpu_of(tid);
        self.push(cpu, (pid, tid), What::Exec { comm });
        self.refresh_maps(tid)?;
        if self.vdso.is_none() {
            self.vdso = self.procs[&pid].vdso()?;
        }
        Ok(())
    }

    /// Re-reads the task's process's maps; new executable mappings become events.
    fn refresh_maps(&mut self, tid: i32) -> Result<(), TraceError> {
        let pid = self.tasks[&tid].pid;
        let new = self
            .procs
            .get_mut(&pid)
            .expect("process of a live task")
            .refresh_maps(pid)?;
        self.push_maps(tid, new);
        Ok(())
    }

    fn insn_at(&mut self, tid: i32, ip: u64) -> Result<Insn, TraceError> {
        let pid = self.tasks[&tid].pid;
        let (insn, new) = self
            .procs
            .get_mut(&pid)
            .expect("process of a live task")
            .insn_at(pid, ip)?;
        self.push_maps(tid, new);
        Ok(insn)
    }

    fn push_maps(&mut self, tid: i32, maps: Vec<Mapping>) {
        if maps.is_empty() {
            return;
        }
        let task = self.task_of(tid);
        let cpu = self.cpu_of(tid);
        for m in maps {
            self.push(cpu, task, What::Map(m));
        }
    }

    fn live(&self) -> bool {
        self.tasks.values().any(|t| t.state != State::Exited)
    }

    fn run_all(&mut self) -> Result<(), TraceError> {
        while self.live() {
            // Tasks off every CPU whose syscall may have returned, and new tasks (looked at every
            // POLL_TICKS: a waitpid per task per tick would cost as much as the steps).
            let waiting: Vec<i32> = if self.tick % POLL_TICKS == 0 {
                self.tasks
                    .iter()
                    .filter(|(_, t)| matches!(t.state, State::Blocked | State::Starting))
                    .map(|(&tid, _)| tid)
                    .collect()
            } else {
                Vec::new()
            };
            for tid in waiting {
                if let Some(status) = self.try_wait(tid, 0)? {
                    self.kernel_stop(tid, status)?;
                }
            }
            let mut busy = false;
            for c in 0..self.opts.cpus {
                busy |= self.run_cpu(c)?;
            }
            if busy {
                self.tick += 1;
            } else {
                // Every CPU idle: wait for any task to come back from the kernel.
                let (tid, status) = wait_any()?;
                self.tick += self.opts.kernel_ticks;
                if self.tasks.contains_key(&tid) {
                    self.kernel_stop(tid, status)?;
                } else {
                    self.pending.insert(tid, status);
                }
            }
        }
        Ok(())
    }

    /// One tick on one CPU; false if the CPU is idle with nothing to run.
    fn run_cpu(&mut self, c: u32) -> Result<bool, TraceError> {
        let cpu = &self.cpus[c as usize];
        if cpu.busy_until > self.tick {
            return Ok(true);
        }
        let Some(tid) = cpu.current else {
            if self.runq.is_empty() {
                return Ok(false);
            }
            self.switch(c, None, false);
            return Ok(true);
        };
        let t = &self.tasks[&tid];
        match t.state {
            State::Ready => {
                if t.slice >= self.opts.quantum
                    && !self.runq.is_empty()
                    && !t.in_rep
                    && !t.exec_trap
                    && t.signal == 0
                {
                    let at = t.ip;
                    self.push(c, self.task_of(tid), What::Interrupt { at });
                    self.runq.push_back(tid);
                    self.switch(c, Some(tid), true);
                } else {
                    self.step(tid, c)?;
                }
            }
            State::Kernel { until } => {
                if self.tick >= until {
                    match self.try_wait(tid, 40)? {
                        Some(status) => self.kernel_stop(tid, status)?,
                        None => {
                            self.tasks.get_mut(&tid).expect("task").state = State::Blocked;
                            self.switch(c, Some(tid), false);
                        }
                    }
                }
            }
            State::Starting | State::Blocked | State::Exited => {
                self.switch(c, Some(tid), false);
            }
        }
        Ok(true)
    }

    /// CPU `c` leaves `prev` (if any) and takes the first waiting task, or goes idle.
    fn switch(&mut self, c: u32, prev: Option<i32>, preempted: bool) {
        let prev_task = prev.map_or((0, 0), |t| self.task_of(t));
        if let Some(p) = prev {
            self.tasks.get_mut(&p).expect("task").cpu = None;
        }
        let next = self.runq.pop_front();
        let next_task = next.map_or((0, 0), |t| self.task_of(t));
        if let Some(n) = next {
            let t = self.tasks.get_mut(&n).expect("task");
            t.cpu = Some(c);
            t.slice = 0;
        }
        self.push(
            c,
            next_task,
            What::Switch {
                prev: prev_task,
                preempted,
            },
        );
        let cpu = &mut self.cpus[c as usize];
        cpu.current = next;
        cpu.busy_until = self.tick + self.opts.switch_ticks;
    }

    /// Executes one instruction of a ready task on CPU `c`.
    fn step(&mut self, tid: i32, c: u32) -> Result<(), TraceError> {
        let task = self.task_of(tid);
        let t = &self.tasks[&tid];
        let (ip, signal, delivering) = (t.ip, t.signal, t.delivering);
        let insn = self.insn_at(tid, ip)?;
        let t = self.tasks.get_mut(&tid).expect("task");
        t.signal = 0;
        if !delivering && matches!(insn.kind, Kind::Syscall | Kind::Far) {
            t.syscall = syscall_number(tid)?;
            t.state = State::Kernel {
                until: self.tick + self.opts.kernel_ticks,
            };
            t.slice += 1;
            t.exec_trap = false;
            trace::single_step(tid, signal)?;
            self.push(c, task, What::Insn { ip, insn });
            return self.count();
        }
        trace::single_step(tid, signal)?;
        let status = trace::wait(tid)?;
        if !libc::WIFSTOPPED(status) {
            return self.gone(tid, status);
        }
        let sig = libc::WSTOPSIG(status);
        let next = trace::instruction_pointer(tid)?;
        let t = self.tasks.get_mut(&tid).expect("task");
        if sig != libc::SIGTRAP {
            // A signal-delivery stop: nothing executed.
            t.signal = sig;
            t.delivering = trace::catches(tid, sig)?;
            return Ok(());
        }
        if delivering {
            t.delivering = false;
            t.ip = next;
            self.push(c, task, What::Interrupt { at: ip });
            self.cpus[c as usize].busy_until = self.tick + self.opts.kernel_ticks;
            return Ok(());
        }
        if std::mem::take(&mut t.exec_trap) && next == ip {
            return Ok(());
        }
        if insn.rep_string && next == ip {
            t.in_rep = true;
            self.rep_iterations += 1;
            return Ok(());
        }
        t.in_rep = false;
        t.ip = next;
        t.slice += 1;
        self.push(c, task, What::Insn { ip, insn });
        self.count()
    }

    fn count(&mut self) -> Result<(), TraceError> {
        self.executed += 1;
        if self.executed > self.opts.trace.max_insns {
            return Err(TraceError::TooLong(self.opts.trace.max_insns));
        }
        Ok(())
    }

    /// A stop of a task that was in the kernel (or just created).
    fn kernel_stop(&mut self, tid: i32, status: i32) -> Result<(), TraceError> {
        if !libc::WIFSTOPPED(status) {
            return self.gone(tid, status);
        }
        let event = status >> 16;
        match event {
            libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                let mut new: libc::c_ulong = 0;
                // SAFETY: GETEVENTMSG writes one unsigned long to the pointer, a live local.
                let r = unsafe {
                    libc::ptrace(
                        libc::PTRACE_GETEVENTMSG,
                        tid,
                        0usize,
                        &mut new as *mut libc::c_ulong,
                    )
                };
                if r < 0 {
                    return Err(os("PTRACE_GETEVENTMSG")(io::Error::last_os_error()));
                }
                let new = new as i32;
                let parent = self.task_of(tid);
                let pid = if event == libc::PTRACE_EVENT_CLONE && thread_group(new)? == parent.0 {
                    parent.0
                } else {
                    // A new process: a copy of the parent's address space.
                    let mut p = AddressSpace::open(new)?;
                    p.maps = self.procs[&parent.0].maps.clone();
                    self.procs.insert(new, p);
                    new
                };
                self.tasks
                    .insert(new, TaskState::new(pid, parent, State::Starting, 0));
                let cpu = self.cpu_of(tid);
                self.push(cpu, (pid, new), What::Fork { parent });
                // The syscall goes on.
                trace::single_step(tid, 0)?;
            }
            libc::PTRACE_EVENT_EXEC => {
                self.exec(tid)?;
                self.resumed(tid);
            }
            0 => {
                let sig = libc::WSTOPSIG(status);
                let ip = trace::instruction_pointer(tid)?;
                let t = self.tasks.get_mut(&tid).expect("task");
                if t.state == State::Starting {
                    if sig != libc::SIGSTOP {
                        return Err(TraceError::Os {
                            op: "new task",
                            source: io::Error::other(format!("first stop by signal {sig}")),
                        });
                    }
                    t.ip = ip;
                    t.state = State::Ready;
                    self.runq.push_back(tid);
                } else if sig == libc::SIGTRAP {
                    // Back from the kernel (in a signal handler if one was being delivered).
                    t.delivering = false;
                    t.ip = ip;
                    self.refresh_maps(tid)?;
                    self.resumed(tid);
                } else {
                    // A signal arrived in the kernel: deliver it and stay there.
                    let caught = trace::catches(tid, sig)?;
                    let t = self.tasks.get_mut(&tid).expect("task");
                    t.delivering = caught;
                    trace::single_step(tid, sig)?;
                }
            }
            _ => trace::single_step(tid, 0)?,
        }
        Ok(())
    }

    /// The task is back in user space, ready: on its CPU if it still has one, else in the queue.
    fn resumed(&mut self, tid: i32) {
        let t = self.tasks.get_mut(&tid).expect("task");
        t.state = State::Ready;
        if t.cpu.is_none() {
            self.runq.push_back(tid);
        }
    }

    /// The task exited (or was killed).
    fn gone(&mut self, tid: i32, status: i32) -> Result<(), TraceError> {
        if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) != libc::SIGKILL {
            let sig = libc::WTERMSIG(status);
            return Err(TraceError::Crashed {
                signal: sig,
                name: trace::signal_name(sig),
                instructions: self.executed,
            });
        }
        let exit_group = self.tasks[&tid].syscall == SYS_EXIT_GROUP;
        let pid = self.tasks[&tid].pid;
        self.exited(tid, status);
        if exit_group {
            // exit_group ends every thread of the process: reap them.
            let others: Vec<i32> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.pid == pid && t.state != State::Exited)
                .map(|(&t, _)| t)
                .collect();
            // The leader is reported last, once its threads are gone.
            let (leader, mut others): (Vec<i32>, Vec<i32>) =
                others.into_iter().partition(|&t| t == pid);
            others.extend(leader);
            for t in others {
                let status = trace::wait(t)?;
                self.exited(t, status);
            }
        }
        Ok(())
    }

    fn exited(&mut self, tid: i32, status: i32) {
        let task = self.task_of(tid);
        let t = self.tasks.get_mut(&tid).expect("task");
        t.state = State::Exited;
        let parent = t.parent;
        let cpu = t.cpu;
        self.runq.retain(|&q| q != tid);
        if tid == self.root && libc::WIFEXITED(status) {
            self.exit_code = libc::WEXITSTATUS(status);
        }
        self.push(cpu.unwrap_or(0), task, What::Exit { parent });
        if let Some(c) = cpu {
            self.switch(c, Some(tid), false);
        }
    }
}

/// The syscall number a stopped task is about to make (rax).
fn syscall_number(tid: i32) -> Result<u64, TraceError> {
    Ok(trace::registers(tid)?.rax)
}

impl Scheduler<'_> {
    /// A stop or exit of `tid`, if one is there within about `patience` × 50 µs.
    fn try_wait(&mut self, tid: i32, patience: u32) -> Result<Option<i32>, TraceError> {
        if let Some(status) = self.pending.remove(&tid) {
            return Ok(Some(status));
        }
        try_wait(tid, patience)
    }
}

/// A stop or exit of `tid`, if one is there within about `patience` × 50 µs.
fn try_wait(tid: i32, patience: u32) -> Result<Option<i32>, TraceError> {
    let mut status = 0;
    for attempt in 0..=patience {
        // SAFETY: waitpid writes the status into a local.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r > 0 {
            return Ok(Some(status));
        }
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(os("waitpid")(err));
            }
        }
        if attempt < patience {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
    Ok(None)
}

/// The next stop or exit of any task this thread traces.
fn wait_any() -> Result<(i32, i32), TraceError> {
    let mut status = 0;
    loop {
        // __WNOTHREAD: only this thread's tracees. Without it, waitpid(-1) also reaps the stops of
        // tasks traced by other threads of this process (tests run in parallel threads).
        // SAFETY: waitpid writes the status into a local.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::__WNOTHREAD) };
        if r > 0 {
            return Ok((r, status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(os("waitpid")(err));
        }
    }
}

/// The thread-group id (process id) of a task.
fn thread_group(tid: i32) -> Result<i32, TraceError> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .map_err(os("read /proc/TID/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| os("parse /proc/TID/status")(io::Error::other("no Tgid")))
}

/// The path of an executable mapping's file, for the build-id cache.
pub fn mapped_files(timeline: &Timeline) -> Vec<Mapping> {
    let mut seen: Vec<Mapping> = Vec::new();
    for e in &timeline.events {
        if let What::Map(m) = &e.what {
            if !seen.iter().any(|s| s.path == m.path) {
                seen.push(m.clone());
            }
        }
    }
    seen
}
