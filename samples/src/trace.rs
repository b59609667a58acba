//! Ground truth: run a program under ptrace, single-step it, and record every instruction it executes,
//! the executable mappings as they appear, and how it ends.
//!
//! What the encoder is given is what ptrace saw, never a model of it. A few things ptrace shows
//! differently from Intel PT are normalised here: a `rep` string instruction stops once per iteration but
//! is one instruction; a caught signal's delivery stop executes nothing and continues in the handler
//! (recorded as [`Event::Interrupt`]); the exit syscall has no stop after it (taken from the exit status).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::insn::{self, Insn, Kind};

/// A mapping of a file (or `[vdso]`) with execute permission, as /proc/PID/maps shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// PROT_READ (1) | PROT_WRITE (2) | PROT_EXEC (4).
    pub prot: u32,
    /// MAP_SHARED (1) or MAP_PRIVATE (2).
    pub flags: u32,
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, ip: u64) -> bool {
        (self.start..self.end).contains(&ip)
    }

    pub fn is_vdso(&self) -> bool {
        self.path == "[vdso]"
    }
}

/// One thing that happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An instruction executed (a `rep` string instruction once, however many iterations).
    Insn { ip: u64, insn: Insn },
    /// An asynchronous transfer (a signal delivered to a handler): `at` is the next instruction, which
    /// did not execute; execution continues at the next `Insn`.
    Interrupt { at: u64 },
    /// An executable mapping is in place from here on.
    Map(Mapping),
}

/// Everything ptrace observed of one run.
#[derive(Debug)]
pub struct Execution {
    pub pid: i32,
    /// The kernel's name for the process (`/proc/PID/comm`).
    pub comm: String,
    /// The executable as the kernel resolved it.
    pub exe: PathBuf,
    pub events: Vec<Event>,
    /// The `[vdso]` image, dumped from the process.
    pub vdso: Option<Vec<u8>>,
    pub exit_code: i32,
    /// Stops inside `rep` string instructions that were folded into one instruction each.
    pub rep_iterations: u64,
}

impl Execution {
    /// The instruction addresses in execution order: what `perf script --itrace=i1i -F ip` must print.
    pub fn instruction_ips(&self) -> impl Iterator<Item = u64> + '_ {
        self.events.iter().filter_map(|e| match e {
            Event::Insn { ip, .. } => Some(*ip),
            _ => None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("program not found: {0}")]
    NotFound(String),
    #[error("{0}: not executable")]
    NotExecutable(PathBuf),
    #[error("{0}: not an ELF executable (scripts and other formats are not supported)")]
    NotElf(PathBuf),
    #[error("cannot execute {path}: {source}")]
    Exec { path: PathBuf, source: io::Error },
    #[error(
        "the program was killed by signal {signal} ({name}) after {instructions} instructions"
    )]
    Crashed {
        signal: i32,
        name: String,
        instructions: u64,
    },
    #[error("the program {0}, which is not supported yet")]
    Unsupported(&'static str),
    #[error("more than {0} instructions: stopped (raise --max-insns)")]
    TooLong(u64),
    #[error("no valid instruction at {ip:#x}")]
    BadInstruction { ip: u64 },
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> TraceError {
    move |source| TraceError::Os { op, source }
}

/// How to run the program.
#[derive(Clone, Debug)]
pub struct Options {
    /// Keep address-space randomisation (off by default, so recordings are reproducible).
    pub aslr: bool,
    /// Give up after this many instructions.
    pub max_insns: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            aslr: false,
            max_insns: 20_000_000,
        }
    }
}

/// Finds `program` as `execvp` would and checks that it is an ELF file we may execute.
pub fn resolve_program(program: &str) -> Result<PathBuf, TraceError> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    let path = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| TraceError::NotFound(program.to_string()))?;
    let meta = std::fs::metadata(&path).map_err(os("stat"))?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(TraceError::NotExecutable(path));
    }
    let mut magic = [0u8; 4];
    let elf = File::open(&path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if !elf {
        return Err(TraceError::NotElf(path));
    }
    Ok(path)
}

/// Runs `program` with `args` to its end under ptrace and returns what it executed.
pub fn run(program: &str, args: &[String], opts: &Options) -> Result<Execution, TraceError> {
    let path = resolve_program(program)?;
    let child = spawn(&path, program, args, opts)?;
    let mut tracer = Tracer::new(child.pid)?;
    let result = tracer.step_to_end(opts);
    if result.is_err() {
        // SAFETY: kill(2) on our own child, which is still ours (not yet reaped).
        unsafe { libc::kill(child.pid, libc::SIGKILL) };
        let _ = wait(child.pid);
    }
    let exit_code = result?;
    Ok(Execution {
        pid: child.pid,
        comm: tracer.comm,
        exe: tracer.exe,
        events: tracer.events,
        vdso: tracer.vdso,
        exit_code,
        rep_iterations: tracer.rep_iterations,
    })
}

pub(crate) struct Child {
    pub(crate) pid: i32,
}

/// Forks; the child asks to be traced and executes the program, stopping with SIGTRAP at its first
/// instruction.
pub(crate) fn spawn(
    path: &Path,
    argv0: &str,
    args: &[String],
    opts: &Options,
) -> Result<Child, TraceError> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| TraceError::NotFound(argv0.into()))?;
    let cargs: Vec<CString> = std::iter::once(argv0)
        .chain(args.iter().map(String::as_str))
        .map(|a| CString::new(a).map_err(|_| TraceError::NotFound(a.into())))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os("pipe2")(io::Error::last_os_error()));
    }
    let aslr = opts.aslr;
    // SAFETY: after fork the child calls only async-signal-safe functions (ptrace, personality, execv,
    // write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see the fork above; argv is NULL-terminated and its strings outlive the call.
        unsafe {
            libc::close(fds[0]);
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            if !aslr {
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            }
            libc::execv(cpath.as_ptr(), argv.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(fds[1], (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copy of the pipe's write end, which we own.
    unsafe { libc::close(fds[1]) };
    let status = wait(pid)?;
    let mut errno = [0u8; 4];
    // SAFETY: fds[0] is the pipe's read end, owned by us and closed by File on drop.
    let mut reader = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    let failed = reader.read_exact(&mut errno).is_ok();
    if failed || !libc::WIFSTOPPED(status) {
        let source = if failed {
            io::Error::from_raw_os_error(i32::from_ne_bytes(errno))
        } else {
            io::Error::other("the child did not stop after exec")
        };
        return Err(TraceError::Exec {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(Child { pid })
}

pub(crate) fn wait(pid: i32) -> Result<i32, TraceError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r >= 0 {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(os("waitpid")(err));
        }
    }
}

pub(crate) fn ptrace(
    op: &'static str,
    req: libc::c_uint,
    pid: i32,
    data: usize,
) -> Result<(), TraceError> {
    // SAFETY: the requests used here (SINGLESTEP, SETOPTIONS) take no pointer from us.
    let r = unsafe { libc::ptrace(req, pid, 0usize, data) };
    if r < 0 {
        return Err(os(op)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Single-steps a stopped tracee, delivering `signal` (0 for none).
pub(crate) fn single_step(tid: i32, signal: i32) -> Result<(), TraceError> {
    ptrace(
        "PTRACE_SINGLESTEP",
        libc::PTRACE_SINGLESTEP,
        tid,
        signal as usize,
    )
}

/// Makes a tracee's children traced too, and killed with the tracer.
pub(crate) fn trace_children(pid: i32) -> Result<(), TraceError> {
    let options = libc::PTRACE_O_EXITKILL
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACEEXEC;
    ptrace(
        "PTRACE_SETOPTIONS",
        libc::PTRACE_SETOPTIONS,
        pid,
        options as usize,
    )
}

/// The registers of a stopped tracee.
pub(crate) fn registers(tid: i32) -> Result<libc::user_regs_struct, TraceError> {
    // SAFETY: user_regs_struct is plain data; PTRACE_GETREGS fills it for a stopped tracee.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live user_regs_struct, the layout GETREGS writes on x86-64.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &mut regs as *mut _) };
    if r < 0 {
        return Err(os("PTRACE_GETREGS")(io::Error::last_os_error()));
    }
    Ok(regs)
}

pub(crate) fn instruction_pointer(pid: i32) -> Result<u64, TraceError> {
    Ok(registers(pid)?.rip)
}

/// Whether the task's process has a handler for `sig` (/proc/TID/status SigCgt).
pub(crate) fn catches(tid: i32, sig: i32) -> Result<bool, TraceError> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .map_err(os("read /proc/TID/status"))?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    Ok(sig >= 1 && mask & (1u64 << (sig - 1)) != 0)
}

/// A process's memory as the tracer sees it: its executable mappings and the instructions decoded
/// from them.
pub(crate) struct AddressSpace {
    pub(crate) mem: File,
    /// Executable mappings currently in place.
    pub(crate) maps: Vec<Mapping>,
    insns: HashMap<u64, Insn>,
}

impl AddressSpace {
    pub(crate) fn open(pid: i32) -> Result<Self, TraceError> {
        Ok(AddressSpace {
            mem: File::open(format!("/proc/{pid}/mem")).map_err(os("open /proc/PID/mem"))?,
            maps: Vec::new(),
            insns: HashMap::new(),
        })
    }

    /// Re-reads /proc/PID/maps; forgets removed mappings (and the instructions decoded so far) and
    /// returns the new ones, in order.
    pub(crate) fn refresh_maps(&mut self, pid: i32) -> Result<Vec<Mapping>, TraceError> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(os("read /proc/PID/maps"))?;
        let current: Vec<Mapping> = text.lines().filter_map(parse_maps_line).collect();
        let before = self.maps.len();
        self.maps.retain(|m| current.contains(m));
        if self.maps.len() != before {
            self.insns.clear();
        }
        let mut new = Vec::new();
        for m in current {
            if !self.maps.contains(&m) {
                self.maps.push(m.clone());
                new.push(m);
            }
        }
        Ok(new)
    }

    /// The instruction at `ip`; the maps are re-read first if none holds `ip`, and the mappings that
    /// re-reading found are returned with it.
    pub(crate) fn insn_at(
        &mut self,
        pid: i32,
        ip: u64,
    ) -> Result<(Insn, Vec<Mapping>), TraceError> {
        if let Some(i) = self.insns.get(&ip) {
            return Ok((*i, Vec::new()));
        }
        let new = if self.maps.iter().any(|m| m.contains(ip)) {
            Vec::new()
        } else {
            self.refresh_maps(pid)?
        };
        let mut buf = [0u8; 16];
        // Stop at the end of the page if the next one is not mapped.
        let n = match self.mem.read_at(&mut buf, ip) {
            Ok(n) => n,
            Err(_) => {
                let to_page_end = (0x1000 - (ip & 0xfff)) as usize;
                self.mem
                    .read_at(&mut buf[..to_page_end.min(16)], ip)
                    .map_err(os("read /proc/PID/mem"))?
            }
        };
        let insn = insn::decode(&buf[..n], ip).ok_or(TraceError::BadInstruction { ip })?;
        self.insns.insert(ip, insn);
        Ok((insn, new))
    }

    /// The `[vdso]` image, if it is mapped.
    pub(crate) fn vdso(&self) -> Result<Option<Vec<u8>>, TraceError> {
        let Some(v) = self.maps.iter().find(|m| m.is_vdso()) else {
            return Ok(None);
        };
        let mut image = vec![0u8; (v.end - v.start) as usize];
        self.mem
            .read_exact_at(&mut image, v.start)
            .map_err(os("read [vdso]"))?;
        Ok(Some(image))
    }
}

struct Tracer {
    pid: i32,
    comm: String,
    exe: PathBuf,
    events: Vec<Event>,
    vdso: Option<Vec<u8>>,
    space: AddressSpace,
    rep_iterations: u64,
}

impl Tracer {
    fn new(pid: i32) -> Result<Self, TraceError> {
        trace_children(pid)?;
        let space = AddressSpace::open(pid)?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_err(os("read /proc/PID/comm"))?
            .trim_end()
            .to_string();
        let exe =
            std::fs::read_link(format!("/proc/{pid}/exe")).map_err(os("readlink /proc/PID/exe"))?;
        let mut tracer = Tracer {
            pid,
            comm,
            exe,
            events: Vec::new(),
            vdso: None,
            space,
            rep_iterations: 0,
        };
        tracer.refresh_maps()?;
        tracer.vdso = tracer.space.vdso()?;
        Ok(tracer)
    }

    /// Re-reads /proc/PID/maps; records new executable mappings and forgets removed ones.
    fn refresh_maps(&mut self) -> Result<(), TraceError> {
        let new = self.space.refresh_maps(self.pid)?;
        self.events.extend(new.into_iter().map(Event::Map));
        Ok(())
    }

    fn insn_at(&mut self, ip: u64) -> Result<Insn, TraceError> {
        let (insn, new) = self.space.insn_at(self.pid, ip)?;
        self.events.extend(new.into_iter().map(Event::Map));
        Ok(insn)
    }

    fn executed(&self) -> u64 {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Insn { .. }))
            .count() as u64
    }

    /// Single-steps to the end; returns the exit code.
    fn step_to_end(&mut self, opts: &Options) -> Result<i32, TraceError> {
        let pid = self.pid;
        let mut ip = instruction_pointer(pid)?;
        let mut signal = 0;
        // A caught signal is being delivered: the next stop is at its handler, with nothing executed.
        let mut delivering = false;
        let mut count = 0u64;
        loop {
            // Decoded before the step: after the exit syscall the memory is gone.
            let insn = self.insn_at(ip)?;
            single_step(pid, signal)?;
            signal = 0;
            let status = wait(pid)?;
            if libc::WIFEXITED(status) {
                // The exit syscall has no stop after it.
                self.events.push(Event::Insn { ip, insn });
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                return Err(TraceError::Crashed {
                    signal: sig,
                    name: signal_name(sig),
                    instructions: self.executed(),
                });
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            match status >> 16 {
                0 => {}
                libc::PTRACE_EVENT_CLONE => return Err(TraceError::Unsupported("starts threads")),
                libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                    return Err(TraceError::Unsupported("starts child processes"))
                }
                libc::PTRACE_EVENT_EXEC => return Err(TraceError::Unsupported("calls execve")),
                _ => continue,
            }
            let sig = libc::WSTOPSIG(status);
            let next = instruction_pointer(pid)?;
            if sig != libc::SIGTRAP {
                // A signal-delivery stop: nothing executed. Deliver the signal; if the program catches
                // it, the next stop is at the handler.
                signal = sig;
                delivering = catches(pid, sig)?;
                continue;
            }
            if delivering {
                delivering = false;
                self.events.push(Event::Interrupt { at: ip });
                ip = next;
                continue;
            }
            if insn.rep_string && next == ip {
                self.rep_iterations += 1;
            } else {
                self.events.push(Event::Insn { ip, insn });
                count += 1;
                if count > opts.max_insns {
                    return Err(TraceError::TooLong(opts.max_insns));
                }
                if matches!(insn.kind, Kind::Syscall | Kind::Far) {
                    self.refresh_maps()?;
                }
            }
            ip = next;
        }
    }
}

pub(crate) fn signal_name(sig: i32) -> String {
    // SAFETY: strsignal returns a pointer to a static or thread-local NUL-terminated string.
    let p = unsafe { libc::strsignal(sig) };
    if p.is_null() {
        return format!("signal {sig}");
    }
    // SAFETY: p is non-null and NUL-terminated (see above); we copy it at once.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    OsStr::from_bytes(s.to_bytes())
        .to_string_lossy()
        .into_owned()
}

/// Parses one /proc/PID/maps line, keeping executable mappings of files and `[vdso]`.
pub(crate) fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let pgoff = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    // The path is the rest of the line (it may contain spaces).
    let path = line
        .splitn(6, |c: char| c.is_ascii_whitespace())
        .nth(5)
        .map(str::trim_start)
        .unwrap_or("");
    if perms.len() < 4 || perms[2] != b'x' || path.is_empty() {
        return None;
    }
    if path.starts_with('[') && path != "[vdso]" {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    let mut prot = 0;
    if perms[0] == b'r' {
        prot |= 1;
    }
    if perms[1] == b'w' {
        prot |= 2;
    }
    prot |= 4;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        pgoff,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode,
        prot,
        flags: if perms[3] == b's' { 1 } else { 2 },
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let m = parse_maps_line(
            "7ffff7fc5000-7ffff7fef000 r-xp 00001000 fe:01 1049208                    /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        )
        .unwrap();
        assert_eq!(m.start, 0x7ffff7fc5000);
        assert_eq!(m.end, 0x7ffff7fef000);
        assert_eq!(m.pgoff, 0x1000);
        assert_eq!((m.dev_major, m.dev_minor, m.inode), (0xfe, 1, 1049208));
        assert_eq!(m.prot, 5);
        assert_eq!(m.flags, 2);
        assert_eq!(m.path, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        let v = parse_maps_line(
            "7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0                          [vdso]",
        )
        .unwrap();
        assert!(v.is_vdso());
        assert!(
            parse_maps_line("7ffff7fbd000-7ffff7fc1000 r--p 00000000 00:00 0   [vvar]").is_none()
        );
        assert!(
            parse_maps_line("555555554000-555555555000 r--p 00000000 fe:01 1 /bin/x").is_none()
        );
        let spaced = parse_maps_line("1000-2000 r-xp 00000000 08:01 5 /tmp/a b/c d").unwrap();
        assert_eq!(spaced.path, "/tmp/a b/c d");
    }

    #[test]
    fn missing_and_non_elf_programs() {
        assert!(matches!(
            resolve_program("/nonexistent/prog"),
            Err(TraceError::NotFound(_))
        ));
        assert!(matches!(
            resolve_program("no-such-program-ptlens"),
            Err(TraceError::NotFound(_))
        ));
        let dir = std::env::temp_dir().join(format!("ptlens-synth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            resolve_program(script.to_str().unwrap()),
            Err(TraceError::NotElf(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
