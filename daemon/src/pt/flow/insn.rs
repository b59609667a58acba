//! Instruction classification with iced-x86, in libipt's classes, and the decode cache.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};

use super::image::{Context, Image};
use super::ErrorKind;

/// The execution mode code is decoded in (MODE.Exec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ExecMode {
    #[default]
    Unknown,
    Bits16,
    Bits32,
    Bits64,
}

impl ExecMode {
    fn bitness(self) -> Option<u32> {
        match self {
            ExecMode::Unknown => None,
            ExecMode::Bits16 => Some(16),
            ExecMode::Bits32 => Some(32),
            ExecMode::Bits64 => Some(64),
        }
    }
}

/// What an instruction does to control flow (libipt's `pt_insn_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InsnClass {
    /// Not a branch.
    Other,
    /// Near conditional branch (Jcc, JrCXZ, LOOPcc): one TNT bit.
    CondJump,
    /// Near unconditional jump; direct ones need no trace.
    Jump,
    /// Near call; direct ones need no trace.
    Call,
    /// Near return: a TNT bit (compressed) or a TIP.
    Return,
    /// Far call, software interrupt, SYSCALL, SYSENTER, VMCALL.
    FarCall,
    /// Far return, IRET, SYSRET, SYSEXIT, VMLAUNCH, VMRESUME, UIRET, ERETS, ERETU.
    FarReturn,
    /// Far jump.
    FarJump,
    /// PTWRITE.
    Ptwrite,
}

/// The specific instructions event binding and branch kinds care about (libipt's
/// `pti_inst` subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InsnKind {
    Plain,
    MovCr3,
    Vmptrld,
    Vmlaunch,
    Vmresume,
    Vmcall,
    Syscall,
    Sysenter,
    Sysret,
    Sysexit,
    SoftwareInterrupt,
    Iret,
    Uiret,
    Eret,
    /// JMPABS: direct, but traced with a TIP.
    Jmpabs,
}

/// A branch as perf's sample flags classify it (`--itrace=b`: `jcc`, `jmp`, `call`,
/// `return`, `syscall`, `sysret`, `int`, `iret`, `vmentry`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BranchKind {
    Conditional,
    Jump,
    IndirectJump,
    Call,
    IndirectCall,
    Return,
    FarJump,
    FarCall,
    FarReturn,
    Syscall,
    Sysret,
    SoftwareInterrupt,
    Iret,
    /// VMLAUNCH / VMRESUME.
    VmEntry,
    /// VMCALL.
    VmCall,
}

/// A decoded instruction, as much of it as flow reconstruction needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub ip: u64,
    pub size: u8,
    pub class: InsnClass,
    pub kind: InsnKind,
    /// The target of a direct near branch (Jcc, JMP rel, CALL rel).
    pub target: Option<u64>,
}

impl Insn {
    pub fn next_ip(&self) -> u64 {
        self.ip.wrapping_add(u64::from(self.size))
    }

    /// The IP after this instruction when it needs no trace (libipt's `pt_insn_next_ip`), or
    /// `Err(BadQuery)` when trace decides.
    pub fn next_ip_without_trace(&self) -> Result<u64, ErrorKind> {
        match self.class {
            InsnClass::Other | InsnClass::Ptwrite => Ok(self.next_ip()),
            InsnClass::Jump | InsnClass::Call if self.kind != InsnKind::Jmpabs => {
                self.target.ok_or(ErrorKind::BadQuery)
            }
            _ => Err(ErrorKind::BadQuery),
        }
    }

    /// The branch this instruction is, if it is one.
    pub fn branch_kind(&self) -> Option<BranchKind> {
        Some(match (self.class, self.kind) {
            (InsnClass::Other | InsnClass::Ptwrite, _) => return None,
            (InsnClass::CondJump, _) => BranchKind::Conditional,
            (InsnClass::Jump, _) if self.target.is_some() => BranchKind::Jump,
            (InsnClass::Jump, _) => BranchKind::IndirectJump,
            (InsnClass::Call, _) if self.target.is_some() => BranchKind::Call,
            (InsnClass::Call, _) => BranchKind::IndirectCall,
            (InsnClass::Return, _) => BranchKind::Return,
            (_, InsnKind::Syscall | InsnKind::Sysenter) => BranchKind::Syscall,
            (_, InsnKind::Sysret | InsnKind::Sysexit) => BranchKind::Sysret,
            (_, InsnKind::SoftwareInterrupt) => BranchKind::SoftwareInterrupt,
            (_, InsnKind::Iret | InsnKind::Uiret | InsnKind::Eret) => BranchKind::Iret,
            (_, InsnKind::Vmlaunch | InsnKind::Vmresume) => BranchKind::VmEntry,
            (_, InsnKind::Vmcall) => BranchKind::VmCall,
            (InsnClass::FarCall, _) => BranchKind::FarCall,
            (InsnClass::FarReturn, _) => BranchKind::FarReturn,
            (InsnClass::FarJump, _) => BranchKind::FarJump,
        })
    }

    pub fn is_far_branch(&self) -> bool {
        matches!(
            self.class,
            InsnClass::FarCall | InsnClass::FarReturn | InsnClass::FarJump
        )
    }

    pub fn changes_cr3(&self) -> bool {
        self.kind == InsnKind::MovCr3
    }

    pub fn binds_to_pip(&self) -> bool {
        matches!(
            self.kind,
            InsnKind::MovCr3 | InsnKind::Vmlaunch | InsnKind::Vmresume
        ) || self.is_far_branch()
    }

    pub fn binds_to_vmcs(&self) -> bool {
        matches!(
            self.kind,
            InsnKind::Vmptrld | InsnKind::Vmlaunch | InsnKind::Vmresume
        ) || self.is_far_branch()
    }

    pub fn is_ptwrite(&self) -> bool {
        self.class == InsnClass::Ptwrite
    }

    /// A call whose return address goes on the return stack: a `call` to the next instruction
    /// (position-independent code reading its IP) is not a call for return compression.
    pub fn pushes_return(&self) -> bool {
        self.class == InsnClass::Call && self.target != Some(self.next_ip())
    }
}

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Decodes the instruction at `ip`.
pub fn decode(
    image: &dyn Image,
    ctx: &Context,
    mode: ExecMode,
    ip: u64,
) -> Result<Insn, ErrorKind> {
    let mut buf = [0u8; MAX_INSN_LEN];
    let len = image.read(ctx, ip, &mut buf);
    if len == 0 {
        return Err(ErrorKind::Nomap);
    }
    classify(&buf[..len], mode, ip)
}

/// Classifies the instruction at the start of `bytes`, executed at `ip`.
pub fn classify(bytes: &[u8], mode: ExecMode, ip: u64) -> Result<Insn, ErrorKind> {
    let bitness = mode.bitness().ok_or(ErrorKind::BadInsn)?;
    // JMPABS (REX2 D5 00, A1, imm64) postdates iced-x86; it is direct but gets a TIP.
    if bitness == 64 && bytes.len() >= 11 && bytes[..3] == [0xd5, 0x00, 0xa1] {
        return Ok(Insn {
            ip,
            size: 11,
            class: InsnClass::Jump,
            kind: InsnKind::Jmpabs,
            target: None,
        });
    }
    let mut decoder = Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Err(ErrorKind::BadInsn);
    }
    let size = instr.len() as u8;
    let near_target = || match instr.op0_kind() {
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            Some(instr.near_branch_target())
        }
        _ => None,
    };
    let far = || {
        matches!(instr.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
            || matches!(
                instr.code(),
                Code::Call_m1616
                    | Code::Call_m1632
                    | Code::Call_m1664
                    | Code::Jmp_m1616
                    | Code::Jmp_m1632
                    | Code::Jmp_m1664
            )
    };
    let (class, kind, target) = match instr.mnemonic() {
        Mnemonic::Int | Mnemonic::Int3 | Mnemonic::Into | Mnemonic::Int1 => {
            (InsnClass::FarCall, InsnKind::SoftwareInterrupt, None)
        }
        Mnemonic::Syscall => (InsnClass::FarCall, InsnKind::Syscall, None),
        Mnemonic::Sysenter => (InsnClass::FarCall, InsnKind::Sysenter, None),
        Mnemonic::Vmcall => (InsnClass::FarCall, InsnKind::Vmcall, None),
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => {
            (InsnClass::FarReturn, InsnKind::Iret, None)
        }
        Mnemonic::Sysret | Mnemonic::Sysretq => (InsnClass::FarReturn, InsnKind::Sysret, None),
        Mnemonic::Sysexit | Mnemonic::Sysexitq => (InsnClass::FarReturn, InsnKind::Sysexit, None),
        Mnemonic::Vmlaunch => (InsnClass::FarReturn, InsnKind::Vmlaunch, None),
        Mnemonic::Vmresume => (InsnClass::FarReturn, InsnKind::Vmresume, None),
        Mnemonic::Uiret => (InsnClass::FarReturn, InsnKind::Uiret, None),
        Mnemonic::Erets | Mnemonic::Eretu => (InsnClass::FarReturn, InsnKind::Eret, None),
        Mnemonic::Retf => (InsnClass::FarReturn, InsnKind::Plain, None),
        Mnemonic::Ret => (InsnClass::Return, InsnKind::Plain, None),
        Mnemonic::Ptwrite => (InsnClass::Ptwrite, InsnKind::Plain, None),
        Mnemonic::Vmptrld => (InsnClass::Other, InsnKind::Vmptrld, None),
        Mnemonic::Mov
            if instr.op0_kind() == OpKind::Register && instr.op0_register() == Register::CR3 =>
        {
            (InsnClass::Other, InsnKind::MovCr3, None)
        }
        Mnemonic::Call if far() => (InsnClass::FarCall, InsnKind::Plain, None),
        Mnemonic::Jmp if far() => (InsnClass::FarJump, InsnKind::Plain, None),
        Mnemonic::Call => (InsnClass::Call, InsnKind::Plain, near_target()),
        Mnemonic::Jmp => (InsnClass::Jump, InsnKind::Plain, near_target()),
        _ => match instr.flow_control() {
            FlowControl::ConditionalBranch => (InsnClass::CondJump, InsnKind::Plain, near_target()),
            _ => (InsnClass::Other, InsnKind::Plain, None),
        },
    };
    Ok(Insn {
        ip,
        size,
        class,
        kind,
        target,
    })
}

/// FxHash-style hasher: the keys are addresses, not attacker-chosen strings.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        // The multiply leaves its entropy in the high bits; the table indexes by the low ones.
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            self.write_u64(u64::from_le_bytes(le));
        }
        for &byte in words.remainder() {
            self.write_u64(u64::from(byte));
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u8(&mut self, value: u8) {
        self.write_u64(u64::from(value));
    }
    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }
    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// A straight-line run of code as a walk without trace sees it: from its start, through
/// non-branches and direct jumps and calls, to the first instruction that needs trace (or
/// cannot be decoded), or to the first direct jump or call that ends a block ([`RunEnd`]). Return addresses of the calls on the way are kept so a cached run
/// updates the return stack exactly as walking it would.
#[derive(Debug, Clone)]
pub struct Run {
    /// Instructions decoded, the one needing trace included.
    pub ninsn: u32,
    /// The last instruction decoded: the one that needs trace unless `error` is set.
    pub last: Option<Insn>,
    /// Why the walk stopped at `stop_ip` without decoding an instruction there.
    pub error: Option<ErrorKind>,
    /// The IP of the instruction that needs trace, or of the one that could not be decoded;
    /// after a direct branch that ended the run, that branch's target.
    pub stop_ip: u64,
    /// The run ended at a direct branch ([`RunEnd`]), which needs no trace.
    pub ended: bool,
    /// Return addresses pushed by calls in the run, in order (at most [`RUN_MAX_CALLS`]).
    pub calls: Vec<u64>,
}

/// Which direct branches end a run (as they end the block decoder's blocks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RunEnd {
    pub on_call: bool,
    pub on_jump: bool,
}

impl RunEnd {
    fn ends(self, insn: &Insn) -> bool {
        (self.on_call && insn.class == InsnClass::Call)
            || (self.on_jump && insn.class == InsnClass::Jump)
    }
}

/// Runs longer than this are not cached (a cycle of direct jumps never ends without trace).
pub const RUN_MAX_INSNS: u32 = 4096;
/// Runs with more calls than this are not cached.
pub const RUN_MAX_CALLS: usize = 16;

type Key = (Context, ExecMode, u64);

/// What the decoder learned about code, keyed by (context, mode, IP), so hot code is decoded
/// once. Valid as long as the image does not change.
#[derive(Default)]
pub struct Cache {
    insns: AddrMap<Key, Result<Insn, ErrorKind>>,
    runs: AddrMap<(Key, RunEnd), Run>,
}

/// Cached entries above which the cache is cleared (bounds memory on huge or hostile input).
const CACHE_LIMIT: usize = 1 << 20;

impl Cache {
    pub fn insn(
        &mut self,
        image: &dyn Image,
        ctx: &Context,
        mode: ExecMode,
        ip: u64,
    ) -> Result<Insn, ErrorKind> {
        if self.insns.len() >= CACHE_LIMIT {
            self.insns.clear();
        }
        *self
            .insns
            .entry((*ctx, mode, ip))
            .or_insert_with(|| decode(image, ctx, mode, ip))
    }

    /// The run starting at `ip`, from the cache or walked now; `None` when it cannot be cached.
    pub fn run(
        &mut self,
        image: &dyn Image,
        ctx: &Context,
        mode: ExecMode,
        ip: u64,
        end: RunEnd,
    ) -> Option<&Run> {
        let key = ((*ctx, mode, ip), end);
        if !self.runs.contains_key(&key) {
            let run = self.walk(image, ctx, mode, ip, end)?;
            if self.runs.len() >= CACHE_LIMIT {
                self.runs.clear();
            }
            self.runs.insert(key, run);
        }
        self.runs.get(&key)
    }

    fn walk(
        &mut self,
        image: &dyn Image,
        ctx: &Context,
        mode: ExecMode,
        start: u64,
        end: RunEnd,
    ) -> Option<Run> {
        let mut ip = start;
        let mut calls = Vec::new();
        let mut last = None;
        for ninsn in 0..RUN_MAX_INSNS {
            let insn = match self.insn(image, ctx, mode, ip) {
                Ok(insn) => insn,
                Err(error) => {
                    return Some(Run {
                        ninsn,
                        last,
                        error: Some(error),
                        stop_ip: ip,
                        ended: false,
                        calls,
                    })
                }
            };
            last = Some(insn);
            if insn.pushes_return() {
                if calls.len() == RUN_MAX_CALLS {
                    return None;
                }
                calls.push(insn.next_ip());
            }
            match insn.next_ip_without_trace() {
                Ok(next) if end.ends(&insn) => {
                    return Some(Run {
                        ninsn: ninsn + 1,
                        last,
                        error: None,
                        stop_ip: next,
                        ended: true,
                        calls,
                    })
                }
                Ok(next) => ip = next,
                Err(_) => {
                    return Some(Run {
                        ninsn: ninsn + 1,
                        last,
                        error: None,
                        stop_ip: ip,
                        ended: false,
                        calls,
                    })
                }
            }
        }
        None
    }

    pub fn clear(&mut self) {
        self.insns.clear();
        self.runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(bytes: &[u8]) -> (InsnClass, InsnKind, Option<u64>, u8) {
        let insn = classify(bytes, ExecMode::Bits64, 0x1000).unwrap();
        (insn.class, insn.kind, insn.target, insn.size)
    }

    #[test]
    fn classes() {
        assert_eq!(class(&[0x90]).0, InsnClass::Other);
        assert_eq!(
            class(&[0x74, 0x02]),
            (InsnClass::CondJump, InsnKind::Plain, Some(0x1004), 2)
        );
        assert_eq!(class(&[0xe8, 0, 0, 0, 0]).2, Some(0x1005));
        assert_eq!(
            class(&[0xff, 0xd0]),
            (InsnClass::Call, InsnKind::Plain, None, 2)
        );
        assert_eq!(class(&[0xc3]).0, InsnClass::Return);
        assert_eq!(class(&[0x0f, 0x05]).1, InsnKind::Syscall);
        assert_eq!(class(&[0x48, 0xcf]).0, InsnClass::FarReturn);
        assert_eq!(class(&[0x0f, 0x22, 0xd8]).1, InsnKind::MovCr3);
        assert_eq!(class(&[0xff, 0x18]).0, InsnClass::FarCall);
        assert!(!classify(&[0xe8, 0, 0, 0, 0], ExecMode::Bits64, 0)
            .unwrap()
            .pushes_return());
        assert_eq!(
            classify(&[0x0f], ExecMode::Bits64, 0),
            Err(ErrorKind::BadInsn)
        );
    }
}
