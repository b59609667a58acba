//! One AUX queue's trace turned into perf's decoder states: the taken branches, trace starts
//! and ends and errors that `intel_pt_decode` hands to perf's sample synthesis, with their TSC.

use std::collections::VecDeque;

use crate::pt::flow::{
    Block, BlockConfig, BlockDecoder, BranchKind as InsnBranch, ErrorKind, Event, EventKind, Image,
    InsnClass, PerfWalk, PgdFilter, ResyncIp, Status, WalkStep,
};

use super::event::{error_code, BranchFlags};

/// What perf's decoder reports, before it is given a thread and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateKind {
    Branch {
        from: u64,
        to: u64,
        flags: BranchFlags,
    },
    Error {
        code: u32,
        ip: u64,
        offset: u64,
        detail: String,
    },
}

/// One decoder state and the TSC it carries (0: no timing packet seen yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    pub kind: StateKind,
    /// perf's `state->timestamp`: the time of the packet that decided the state.
    pub tsc: u64,
    /// perf's `state->est_timestamp`: `tsc` plus an estimate for the instructions run since
    /// the last timing packet (perf uses it for errors and for returns to user space).
    pub est: u64,
    /// The PSB segment (its PSB's trace offset) the state was decided in, see
    /// [`QueueDecoder::segment`].
    pub segment: Option<usize>,
}

/// A branch ending a block, held until the next item tells whether tracing stopped at it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    from: u64,
    to: u64,
    /// A direct branch: `to` is its target, known without trace.
    direct: bool,
    flags: u32,
    tsc: u64,
    segment: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    NeedSync,
    /// perf's `INTEL_PT_STATE_NO_IP` / `INTEL_PT_STATE_ERR_RESYNC`: scanning for an IP.
    Resync(PerfWalk),
    Running(Status),
    Done,
}

/// perf's flags for a branch instruction (`intel_pt_insn_type` of its op).
pub(crate) fn insn_flags(kind: InsnBranch) -> u32 {
    use BranchFlags as F;
    match kind {
        InsnBranch::Conditional => F::BRANCH | F::CONDITIONAL,
        InsnBranch::Jump | InsnBranch::IndirectJump | InsnBranch::FarJump => F::BRANCH,
        InsnBranch::Call | InsnBranch::IndirectCall | InsnBranch::FarCall => F::BRANCH | F::CALL,
        InsnBranch::Return | InsnBranch::FarReturn => F::BRANCH | F::RETURN,
        InsnBranch::Syscall => F::BRANCH | F::CALL | F::SYSCALLRET,
        InsnBranch::Sysret => F::BRANCH | F::RETURN | F::SYSCALLRET,
        InsnBranch::SoftwareInterrupt => F::BRANCH | F::CALL | F::INTERRUPT,
        InsnBranch::Iret => F::BRANCH | F::RETURN | F::INTERRUPT,
        InsnBranch::VmEntry => F::BRANCH | F::CALL | F::VMENTRY,
        // perf's instruction decoder does not know VMCALL as a branch.
        InsnBranch::VmCall => 0,
    }
}

/// perf's error code for a flow error.
fn perf_code(kind: ErrorKind) -> u32 {
    match kind {
        ErrorKind::Nomap | ErrorKind::BadInsn => error_code::NOINSN,
        ErrorKind::BadQuery
        | ErrorKind::RetstackEmpty
        | ErrorKind::BadRetcomp
        | ErrorKind::NoEnable
        | ErrorKind::BadContext
        | ErrorKind::BadStatusUpdate => error_code::MISMAT,
        // An unknown packet opcode is libipt's `bad_opc`; perf calls every undecodable packet "Bad packet".
        ErrorKind::BadPacket | ErrorKind::BadOpc => error_code::BADPKT,
        ErrorKind::NoProgress => error_code::NELOOP,
        ErrorKind::Nomem => error_code::NOMEM,
        ErrorKind::Eos | ErrorKind::Nosync => error_code::NODATA,
        ErrorKind::Internal
        | ErrorKind::Noip
        | ErrorKind::IpSuppressed
        | ErrorKind::EventIgnored => error_code::INTERN,
    }
}

/// A queue's AUXTRACE buffers joined into one stream, and where each ended: perf decodes
/// them as one stream, but its CYC look-ahead stops at a buffer's end.
#[derive(Debug, Default)]
pub(crate) struct JoinedTrace {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl JoinedTrace {
    pub fn join<'b>(buffers: impl IntoIterator<Item = &'b [u8]>) -> Self {
        let mut trace = JoinedTrace::default();
        for b in buffers {
            trace.bytes.extend_from_slice(b);
            trace.ends.push(trace.bytes.len());
        }
        trace
    }
}

impl std::ops::Deref for JoinedTrace {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The decoder of one queue's trace, producing perf's states one at a time.
pub(crate) struct QueueDecoder<'a> {
    trace: &'a [u8],
    decoder: BlockDecoder<'a>,
    phase: Phase,
    ready: VecDeque<State>,
    pending: Option<Pending>,
    block: Block,
    last_sync: Option<usize>,
    /// perf's `timestamp_insn_cnt`, approximated per block: instructions since the clock's
    /// epoch `insn_epoch` began.
    insns: u64,
    insn_epoch: u64,
    /// The PSB segment the flow is in: set when the flow consumes a PSB+ (not when the
    /// packet layer reads it ahead), so blocks walked up to a PSB+ belong to the segment
    /// before it, as a decode of that segment alone walks them.
    segment: Option<usize>,
    /// A segment consumed before the flow reached its PSB's IP: (segment, IP).
    next_segment: Option<(Option<usize>, u64)>,
    /// Decoding a run of segments alone (the PSB offsets `start..end`): stop once their
    /// states are all out.
    only: Option<(usize, usize)>,
    /// Resume after errors as perf does ([`BlockConfig::perf_resync`]).
    perf_resync: bool,
    /// Where the last perf resync resumed: the next one scans from after it at least, so
    /// every resync consumes trace.
    resumed_at: usize,
}

impl<'a> QueueDecoder<'a> {
    /// The trace being decoded.
    pub fn trace(&self) -> &'a [u8] {
        self.trace
    }

    pub fn new(trace: &'a [u8], image: &'a dyn Image, mut config: BlockConfig) -> Self {
        // perf reports every taken branch, direct ones included: one branch per block.
        config.end_on_call = true;
        config.end_on_jump = true;
        QueueDecoder {
            trace,
            decoder: BlockDecoder::new(trace, image, config),
            phase: Phase::NeedSync,
            ready: VecDeque::new(),
            pending: None,
            block: Block::default(),
            last_sync: None,
            insns: 0,
            insn_epoch: 0,
            segment: None,
            next_segment: None,
            only: None,
            perf_resync: config.perf_resync,
            resumed_at: 0,
        }
    }

    /// Binds TIP.PGDs as perf does with an address filter ([`BlockDecoder::with_pgd_filter`]).
    pub fn with_pgd_filter(mut self, filter: &'a dyn PgdFilter) -> Self {
        self.decoder = self.decoder.with_pgd_filter(filter);
        self
    }

    /// As [`Self::new`], over a queue's joined buffers.
    pub fn over(trace: &'a JoinedTrace, image: &'a dyn Image, config: BlockConfig) -> Self {
        let mut decoder = QueueDecoder::new(trace, image, config);
        decoder.decoder.set_buffer_ends(&trace.ends);
        decoder
    }

    /// Decodes only the PSB segments whose PSB lies in `start..end`, from the PSB at `start`
    /// on, as one stream: [`Self::next_state`] stops once the flow has moved past them.
    pub fn only_segments(&mut self, start: usize, end: usize) {
        let psb = start;
        self.only = Some((start, end));
        match self.decoder.sync_set(psb) {
            Ok(status) => {
                self.last_sync = Some(psb);
                self.segment = Some(psb);
                self.phase = Phase::Running(status);
            }
            Err(kind) => {
                self.segment = Some(psb);
                self.push_error(kind, perf_code(kind), 0);
                self.phase = Phase::Done;
            }
        }
    }

    /// Whether `segment` is one of those [`Self::only_segments`] decodes (every segment
    /// when decoding the whole stream).
    pub fn wanted(&self, segment: Option<usize>) -> bool {
        match self.only {
            None => true,
            Some((start, end)) => segment.is_some_and(|s| (start..end).contains(&s)),
        }
    }

    /// With [`Self::only_segments`]: whether the flow has left the segments and no state of
    /// them is held back.
    fn left_segment(&self) -> bool {
        self.only.is_some()
            && !self.wanted(self.segment)
            && self.pending.is_none_or(|p| !self.wanted(p.segment))
            && self.ready.iter().all(|s| !self.wanted(s.segment))
    }

    /// Sets the address space code is read in from now on.
    pub fn set_space(&mut self, space: u64) {
        self.decoder.set_space(space);
    }

    /// The next state; `None` at the end of the trace. `on_block` sees every block decoded,
    /// with its segment.
    pub fn next_state(&mut self, on_block: &mut dyn FnMut(&Block, Option<usize>)) -> Option<State> {
        loop {
            if let Some(state) = self.ready.pop_front() {
                return Some(state);
            }
            if matches!(self.phase, Phase::Done) || self.left_segment() {
                return None;
            }
            self.step(on_block);
        }
    }

    fn tsc(&self) -> u64 {
        self.decoder.tsc().unwrap_or(0)
    }

    /// perf's estimate at `tsc` after `insns` instructions without timing.
    fn estimate(&self, tsc: u64, insns: u64) -> u64 {
        match self.decoder.perf_clock() {
            Some(clock) => clock.estimate(tsc, insns),
            None => tsc,
        }
    }

    /// Instructions since perf last zeroed its count (at a timing packet).
    fn insns_since_timing(&mut self) -> u64 {
        if let Some(clock) = self.decoder.perf_clock() {
            if clock.epoch() != self.insn_epoch {
                self.insn_epoch = clock.epoch();
                self.insns = 0;
            }
        }
        self.insns
    }

    fn push_branch(&mut self, from: u64, to: u64, flags: u32, tsc: u64) {
        let insns = self.insns_since_timing();
        let est = self.estimate(tsc, insns);
        self.ready.push_back(State {
            kind: StateKind::Branch {
                from,
                to,
                flags: BranchFlags(flags),
            },
            tsc,
            est,
            segment: self.segment,
        });
    }

    /// As [`Self::push_branch`], for a branch of an earlier block's segment.
    fn push_branch_in(&mut self, segment: Option<usize>, from: u64, to: u64, flags: u32, tsc: u64) {
        self.push_branch(from, to, flags, tsc);
        if let Some(state) = self.ready.back_mut() {
            state.segment = segment;
        }
    }

    /// Emits the held branch as it is (tracing went on after it).
    fn flush_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            self.push_branch_in(p.segment, p.from, p.to, p.flags, p.tsc);
        }
    }

    fn push_error(&mut self, kind: ErrorKind, code: u32, ip: u64) {
        // perf samples an error at the time of every packet read up to it.
        let tsc = match self.decoder.perf_clock() {
            Some(clock) => clock.timestamp(),
            None => self.tsc(),
        };
        self.push_error_at(kind, code, ip, tsc);
    }

    fn push_error_at(&mut self, kind: ErrorKind, code: u32, ip: u64, tsc: u64) {
        self.flush_pending();
        let insns = self.insns_since_timing();
        let est = self.estimate(tsc, insns);
        self.ready.push_back(State {
            kind: StateKind::Error {
                code,
                ip,
                offset: self.decoder.offset() as u64,
                detail: kind.to_string(),
            },
            tsc,
            est,
            segment: self.segment,
        });
    }

    fn step(&mut self, on_block: &mut dyn FnMut(&Block, Option<usize>)) {
        match self.phase {
            Phase::Done => {}
            Phase::NeedSync => match self.decoder.sync_forward() {
                Ok(status) => {
                    self.last_sync = self.decoder.sync_offset();
                    self.segment = self.last_sync;
                    self.next_segment = None;
                    self.phase = Phase::Running(status);
                }
                Err(ErrorKind::Eos) => self.finish(),
                Err(kind) => {
                    self.push_error(kind, perf_code(kind), 0);
                    let now = self.decoder.sync_offset();
                    if now.is_none() || now <= self.last_sync {
                        self.finish();
                    } else {
                        self.last_sync = now;
                    }
                }
            },
            Phase::Resync(walk) => self.resync_step(walk),
            Phase::Running(status) => {
                if status.event_pending() {
                    let ip = self.decoder.ip();
                    match self.decoder.event() {
                        Ok((event, next)) => {
                            self.phase = Phase::Running(next);
                            self.on_event(&event, ip);
                        }
                        Err(kind) => self.fail(kind, ip),
                    }
                    return;
                }
                if status.eos() {
                    self.finish();
                    return;
                }
                let mut block = self.block;
                let result = self.decoder.next_block(&mut block);
                self.block = block;
                self.insns_since_timing();
                self.insns += u64::from(block.ninsn);
                if let Some((segment, at)) = self.next_segment {
                    if block.ip == at {
                        self.segment = segment;
                        self.next_segment = None;
                    }
                }
                on_block(&block, self.segment);
                match result {
                    Ok(next) => {
                        self.on_block(&block, true);
                        self.phase = Phase::Running(next);
                    }
                    Err(ErrorKind::Eos) => {
                        self.on_block(&block, false);
                        self.finish();
                    }
                    Err(kind) => {
                        self.on_block(&block, false);
                        // perf reports a bad packet at the IP its walk had reached.
                        let ip = if self.perf_resync && self.decoder.bad_packet_at().is_some() {
                            self.decoder.ip()
                        } else if self.perf_resync
                            && perf_code(kind) == error_code::MISMAT
                            && block.ninsn > 0
                        {
                            // perf stops at the branch the trace does not fit (a return
                            // without a matching TNT bit included).
                            block.end_ip
                        } else {
                            crate::pt::flow::error_ip(&mut self.decoder, &block, kind)
                        };
                        self.fail(kind, ip);
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        self.flush_pending();
        self.phase = Phase::Done;
    }

    fn fail(&mut self, kind: ErrorKind, ip: u64) {
        if kind == ErrorKind::Eos {
            self.finish();
            return;
        }
        let code = perf_code(kind);
        if self.perf_resync && code == error_code::BADPKT {
            // A PSB+ with a FUP perf walks to the FUP first (`intel_pt_psb_with_fup`); a bad
            // packet in the rest of that PSB+ is then a mismatch at the FUP's IP and sends it
            // scanning from the next byte (`intel_pt_fup_in_psb`), its return stack emptied.
            if let (Some(at), Some(Some(fup))) = (
                self.decoder.bad_packet_at(),
                self.decoder.bad_packet_in_psb(),
            ) {
                self.push_error(kind, error_code::MISMAT, fup);
                self.decoder.clear_return_stack();
                let mut walk = self.decoder.perf_walk_at(at + 1, Some(fup));
                walk.pos = walk.pos.max(self.resumed_at);
                self.phase = Phase::Resync(walk);
                return;
            }
        }
        self.push_error(kind, code, ip);
        self.phase = Phase::NeedSync;
        if !self.perf_resync {
            return;
        }
        // perf 6.1 (intel-pt-decoder.c): a packet it cannot decode leaves its state as it was
        // (`intel_pt_bad_packet`) and it reads on from the next byte; code it cannot get
        // (`intel_pt_walk_insn`: `INTEL_PT_STATE_NO_IP`) or trace that does not fit the code
        // (`INTEL_PT_STATE_ERR_RESYNC`) sends it scanning for the next IP packet
        // (`intel_pt_sync_ip`); anything else (`intel_pt_bug`) for the next PSB.
        if code == error_code::BADPKT && self.decoder.bad_packet_at().is_some() {
            match self.decoder.skip_bad_packet() {
                Ok(status) => self.phase = Phase::Running(status),
                Err(kind) => self.fail(kind, self.decoder.ip()),
            }
            return;
        }
        let mut walk = match code {
            error_code::NOINSN => self.decoder.perf_walk(None),
            error_code::MISMAT | error_code::NELOOP | error_code::BADPKT => {
                self.decoder.perf_walk(Some(ip))
            }
            _ => return,
        };
        walk.pos = walk.pos.max(self.resumed_at);
        self.phase = Phase::Resync(walk);
    }

    /// One step of perf's scan for an IP after an error (`intel_pt_walk_to_ip`).
    fn resync_step(&mut self, mut walk: PerfWalk) {
        use BranchFlags as F;
        let step = self.decoder.perf_walk_step(&mut walk);
        self.phase = Phase::Resync(walk);
        let resumed = match step {
            WalkStep::End => {
                self.finish();
                return;
            }
            // perf reports it with the IP it has (0 after a missing instruction) and scans on.
            WalkStep::Bad(_) => {
                self.push_error(ErrorKind::BadOpc, error_code::BADPKT, walk.ip);
                return;
            }
            WalkStep::Psb(at) => {
                // As a decode of that PSB's segment starts.
                let result = self.decoder.sync_set(at);
                self.last_sync = Some(at);
                self.segment = Some(at);
                self.next_segment = None;
                result
            }
            WalkStep::Ovf(at) => self.decoder.perf_resume_at_overflow(&walk, at),
            WalkStep::Ip(kind) => {
                // perf samples the IP it resumes at as a trace start (`from_ip` 0), a trace
                // end too at a TIP.PGD.
                let mut flags = F::BRANCH | F::TRACE_BEGIN;
                if kind == ResyncIp::Disable {
                    flags |= F::TRACE_END;
                }
                self.flush_pending();
                let tsc = match self.decoder.perf_clock() {
                    Some(clock) => clock.timestamp(),
                    None => self.tsc(),
                };
                self.push_branch(0, walk.ip, flags, tsc);
                self.decoder.perf_resume(&walk, kind)
            }
        };
        self.resumed_at = self.resumed_at.max(walk.pos);
        match resumed {
            Ok(status) => self.phase = Phase::Running(status),
            Err(ErrorKind::Eos) => self.finish(),
            Err(kind) => {
                let ip = self.decoder.ip();
                self.fail(kind, ip);
            }
        }
    }

    /// The branch a block ends with, if it was taken.
    fn on_block(&mut self, block: &Block, completed: bool) {
        if block.ninsn == 0 {
            return;
        }
        let Some(last) = block.last else { return };
        let Some(kind) = last.branch_kind() else {
            return;
        };
        let flags = insn_flags(kind);
        if flags == 0 {
            return;
        }
        // A block that failed did not complete a branch needing trace.
        let direct = last.next_ip_without_trace().is_ok();
        if !completed && !direct {
            return;
        }
        let to = if direct {
            last.next_ip_without_trace().unwrap_or(0)
        } else if self.decoder.target_suppressed() {
            0
        } else {
            self.decoder.ip()
        };
        if last.class == InsnClass::CondJump && Some(to) != last.target {
            return;
        }
        self.flush_pending();
        self.pending = Some(Pending {
            from: last.ip,
            to,
            direct,
            flags,
            // perf samples a branch at the time of the packet that decided it.
            tsc: block.tsc.unwrap_or(0),
            segment: self.segment,
        });
    }

    fn on_event(&mut self, event: &Event, ip_before: u64) {
        use BranchFlags as F;
        if event.status_update {
            // A PSB+ the flow consumed: the next segment starts where its FUP says the PSB
            // was (the flow may reach the PSB+ before walking there).
            let next = self.decoder.sync_offset();
            match event.kind {
                EventKind::Enabled { ip: Some(at), .. } if at != ip_before => {
                    self.next_segment = Some((next, at));
                }
                _ if self.next_segment.is_some_and(|(s, _)| s == next) => {}
                _ => {
                    self.segment = next;
                    self.next_segment = None;
                }
            }
            return;
        }
        let tsc = event.tsc.unwrap_or_else(|| self.tsc());
        match event.kind {
            // perf skips a TIP.PGE without an IP ("Skipping zero TIP.PGE").
            EventKind::Enabled { ip: None, .. } if self.perf_resync => {}
            EventKind::Enabled { ip, .. } => {
                self.flush_pending();
                self.push_branch(0, ip.unwrap_or(0), F::BRANCH | F::TRACE_BEGIN, tsc);
            }
            // perf's trace end is sampled at the TIP.PGD. Its target: a direct branch's own (one
            // leaving the filter region), else the TIP.PGD's IP if it has one. A conditional
            // branch leaving the region (only an address filter binds one) perf 6.1 reports
            // from its target: it moves its IP there first.
            EventKind::Disabled { ip } => match self.pending.take() {
                Some(p) => {
                    let (from, to) = if p.flags & F::CONDITIONAL != 0 {
                        (p.to, p.to)
                    } else if p.direct {
                        (p.from, p.to)
                    } else {
                        (p.from, ip.unwrap_or(0))
                    };
                    self.push_branch_in(p.segment, from, to, p.flags | F::TRACE_END, tsc)
                }
                None => self.push_branch(ip_before, 0, F::BRANCH | F::TRACE_END, tsc),
            },
            EventKind::AsyncDisabled { at, .. } => {
                self.flush_pending();
                self.push_branch(at, 0, F::BRANCH | F::ASYNC | F::TRACE_END, tsc);
            }
            EventKind::AsyncBranch { from, to } => {
                self.flush_pending();
                self.push_branch(
                    from,
                    to.unwrap_or(0),
                    F::BRANCH | F::CALL | F::ASYNC | F::INTERRUPT,
                    tsc,
                );
            }
            EventKind::Overflow { ip } => {
                self.flush_pending();
                // perf zeroes its instruction count at an overflow.
                self.insns = 0;
                // perf reports the IP its walk had reached: after the last TNT bit used.
                self.push_error_at(ErrorKind::Internal, error_code::OVR, ip_before, tsc);
                if let Some(State {
                    kind: StateKind::Error { detail, .. },
                    ..
                }) = self.ready.back_mut()
                {
                    *detail = "overflow".to_owned();
                }
                if let Some(ip) = ip {
                    self.push_branch(0, ip, F::BRANCH | F::TRACE_BEGIN, tsc);
                }
            }
            EventKind::Tsx {
                ip: Some(ip),
                aborted: true,
                ..
            } => {
                self.flush_pending();
                self.push_branch(ip, 0, F::BRANCH | F::TX_ABORT, tsc);
            }
            _ => {}
        }
    }
}
