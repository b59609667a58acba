//! `ptlens-synth`: turns real executions into the Intel PT perf.data recordings that Intel PT hardware
//! and `perf record -e intel_pt//u` would have made of them.
//!
//! The data flow: [`trace`] runs the program under ptrace and records what it executed (the ground
//! truth); [`encode`] writes the Intel PT packets for it; [`recording`] adds perf's sideband and writes
//! perf.data ([`perfdata`]) plus a build-id cache ([`buildid`]) beside it; [`check`] asks real perf to
//! decode the result and compares it with the ground truth; [`sample`] makes the committed samples.
//! [`bulk`] makes benchmark-sized recordings from a walk over a binary's control-flow graph ([`elf`]).

pub mod buildid;
pub mod bulk;
pub mod check;
pub mod elf;
pub mod encode;
pub mod insn;
pub mod perfdata;
pub mod recording;
pub mod sample;
pub mod sched;
pub mod trace;
