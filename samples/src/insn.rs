//! x86-64 instruction classification: what an Intel PT encoder needs to know about each instruction.
//!
//! The classes follow what the hardware does with each instruction (and so what perf's decoder expects,
//! `intel-pt-insn-decoder.c`): conditional branches produce a TNT bit, indirect transfers a TIP, returns a
//! TNT bit or a TIP (return compression), direct jumps and calls nothing, `syscall` leaves user-mode
//! tracing.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction};

/// How an instruction moves control, as Intel PT reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Falls through to the next instruction; no packet.
    Other,
    /// `jcc`, `jrcxz`, `loop*`: one TNT bit.
    Conditional,
    /// `jmp rel`: no packet, the decoder knows the target.
    DirectJump,
    /// `call rel`: no packet; pushes the return address unless the displacement is zero.
    DirectCall { zero_displacement: bool },
    /// `jmp r/m`: a TIP.
    IndirectJump,
    /// `call r/m`: a TIP; pushes the return address.
    IndirectCall,
    /// Near `ret`: a compressed return (TNT taken) or a TIP.
    Return,
    /// `syscall`/`sysenter`: user-only tracing stops (TIP.PGD) and restarts where user code resumes.
    Syscall,
    /// Any other far transfer (`int n`, `int3`, far `ret`/`jmp`/`call`, `iret`): treated like a syscall.
    Far,
}

impl Kind {
    /// Whether the decoder pushes a return address when it walks this instruction.
    pub fn pushes_return(self) -> bool {
        matches!(
            self,
            Kind::DirectCall {
                zero_displacement: false
            } | Kind::IndirectCall
        )
    }
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub len: u8,
    pub kind: Kind,
    /// A `rep`/`repne` string instruction: ptrace stops once per iteration, Intel PT counts it once.
    pub rep_string: bool,
}

/// Decodes the instruction at the start of `bytes`, which sit at address `ip`. `None` if they do not
/// hold a valid 64-bit instruction.
pub fn decode(bytes: &[u8], ip: u64) -> Option<Insn> {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return None;
    }
    Some(Insn {
        len: instr.len() as u8,
        kind: classify(&instr),
        rep_string: instr.is_string_instruction()
            && (instr.has_rep_prefix() || instr.has_repe_prefix() || instr.has_repne_prefix()),
    })
}

/// The class of a decoded instruction.
pub fn classify(instr: &Instruction) -> Kind {
    // iced-x86 calls syscall and sysenter "Call"s.
    if matches!(instr.code(), Code::Syscall | Code::Sysenter) {
        return Kind::Syscall;
    }
    match instr.flow_control() {
        FlowControl::Next | FlowControl::Exception | FlowControl::XbeginXabortXend => Kind::Other,
        FlowControl::ConditionalBranch => Kind::Conditional,
        FlowControl::UnconditionalBranch => {
            if instr.is_jmp_far() {
                Kind::Far
            } else {
                Kind::DirectJump
            }
        }
        FlowControl::IndirectBranch => {
            if instr.is_jmp_far_indirect() {
                Kind::Far
            } else {
                Kind::IndirectJump
            }
        }
        FlowControl::Call => {
            if instr.is_call_far() {
                Kind::Far
            } else {
                Kind::DirectCall {
                    zero_displacement: instr.near_branch_target() == instr.next_ip(),
                }
            }
        }
        FlowControl::IndirectCall => {
            if instr.is_call_far_indirect() {
                Kind::Far
            } else {
                Kind::IndirectCall
            }
        }
        FlowControl::Return => match instr.code() {
            Code::Retnq | Code::Retnq_imm16 | Code::Retnw | Code::Retnw_imm16 => Kind::Return,
            _ => Kind::Far,
        },
        FlowControl::Interrupt => Kind::Far,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(bytes: &[u8]) -> Kind {
        decode(bytes, 0x1000).unwrap().kind
    }

    #[test]
    fn classes() {
        assert_eq!(kind(&[0x90]), Kind::Other);
        assert_eq!(kind(&[0x74, 0x05]), Kind::Conditional);
        assert_eq!(kind(&[0x0f, 0x84, 0, 0, 0, 0]), Kind::Conditional);
        assert_eq!(kind(&[0xe3, 0x02]), Kind::Conditional);
        assert_eq!(kind(&[0xe2, 0x02]), Kind::Conditional);
        assert_eq!(kind(&[0xeb, 0x02]), Kind::DirectJump);
        assert_eq!(
            kind(&[0xe8, 1, 0, 0, 0]),
            Kind::DirectCall {
                zero_displacement: false
            }
        );
        assert_eq!(
            kind(&[0xe8, 0, 0, 0, 0]),
            Kind::DirectCall {
                zero_displacement: true
            }
        );
        assert_eq!(kind(&[0xff, 0xe0]), Kind::IndirectJump);
        assert_eq!(kind(&[0x3e, 0xff, 0xe0]), Kind::IndirectJump); // notrack jmp rax
        assert_eq!(kind(&[0xff, 0xd0]), Kind::IndirectCall);
        assert_eq!(kind(&[0xc3]), Kind::Return);
        assert_eq!(kind(&[0xf3, 0xc3]), Kind::Return); // rep ret
        assert_eq!(kind(&[0xf2, 0xc3]), Kind::Return); // bnd ret
        assert_eq!(kind(&[0x0f, 0x05]), Kind::Syscall);
        assert_eq!(kind(&[0xcc]), Kind::Far);
    }

    #[test]
    fn rep_strings() {
        assert!(decode(&[0xf3, 0xa4], 0).unwrap().rep_string); // rep movsb
        assert!(decode(&[0xf3, 0x48, 0xab], 0).unwrap().rep_string); // rep stosq
        assert!(decode(&[0xf2, 0xae], 0).unwrap().rep_string); // repne scasb
        assert!(!decode(&[0xa4], 0).unwrap().rep_string);
        assert!(!decode(&[0xf3, 0xc3], 0).unwrap().rep_string);
    }
}
