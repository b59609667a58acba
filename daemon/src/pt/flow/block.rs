//! The block decoder: walks code from event to event, consuming TNT and TIP in code order.
//!
//! One [`BlockDecoder::next_block`] call proceeds from the current IP to the next instruction
//! that needs trace (or to the location an event binds to) and returns the [`Block`] it walked;
//! [`BlockDecoder::event`] hands out the event that is due there. The status flags tell which
//! to call, as in libipt's block decoder, whose semantics (event binding, deferred TIPs, return
//! compression, resynchronisation) this follows.

use super::errata::{AddrFilter, Errata};
use super::events::{Event, EventConfig, EventDecoder, EventKind, PerfWalk, WalkStep};
use super::image::{Context, Image};
use super::insn::{Cache, ExecMode, Insn, InsnClass, InsnKind, RunEnd};
use super::pgd::PgdFilter;
use super::ErrorKind;
use crate::pt::packets::BlockContext;

/// What the caller should do next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status(u8);

impl Status {
    const EVENT_PENDING: u8 = 1;
    const IP_SUPPRESSED: u8 = 2;
    const EOS: u8 = 4;

    /// Only [`Status::event_pending`] set.
    pub fn pending() -> Self {
        Status(Self::EVENT_PENDING)
    }

    /// An event is due: call [`BlockDecoder::event`].
    pub fn event_pending(self) -> bool {
        self.0 & Self::EVENT_PENDING != 0
    }
    /// Tracing is disabled: there is no current IP.
    pub fn ip_suppressed(self) -> bool {
        self.0 & Self::IP_SUPPRESSED != 0
    }
    /// The trace has ended; blocks may still be decoded until trace is needed.
    pub fn eos(self) -> bool {
        self.0 & Self::EOS != 0
    }
}

/// A run of instructions executed in sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Block {
    /// The first instruction's IP.
    pub ip: u64,
    /// The last instruction's IP.
    pub end_ip: u64,
    /// How many instructions (0: an empty block).
    pub ninsn: u32,
    pub mode: ExecMode,
    /// Executed inside a transaction (TSX).
    pub speculative: bool,
    /// The last instruction.
    pub last: Option<Insn>,
    /// The address space the block ran in.
    pub ctx: Context,
    /// The TSC of the last trace packet the flow used up to the block's end: for a branch
    /// that needed trace, the packet that decided it (perf's sample time for the branch).
    pub tsc: Option<u64>,
}

/// Options of the block decoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockConfig {
    pub events: EventConfig,
    /// End a block after each near call.
    pub end_on_call: bool,
    /// End a block after each near jump.
    pub end_on_jump: bool,
    /// Erratum workarounds (see [`Errata::for_cpu`]).
    pub errata: Errata,
    /// The address ranges tracing was configured with (perf's `--filter`).
    pub filter: AddrFilter,
    /// Read damaged trace as perf 6.1 does and offer its recovery after an error (a bad
    /// packet skipped by one byte; after a mismatch or missing code the next IP packet, see
    /// [`BlockDecoder::perf_walk`]) instead of libipt's resync at the next PSB. The perf
    /// pipeline's choice; the decoder's driver acts on it.
    pub perf_resync: bool,
}

/// Most instructions in one block (libipt counts them in 16 bits).
const BLOCK_MAX_INSNS: u32 = u16::MAX as u32;

/// Instructions decoded without consuming an event before the decoder gives up: without trace
/// only a cycle of direct jumps runs this long, and it never reaches the next event.
const MAX_STEPS_WITHOUT_EVENT: u64 = 1 << 20;

/// The return stack for compressed returns: 64 entries, the oldest overwritten when full.
#[derive(Debug, Clone, Copy)]
struct ReturnStack {
    stack: [u64; 65],
    top: usize,
    bottom: usize,
}

impl ReturnStack {
    fn new() -> Self {
        ReturnStack {
            stack: [0; 65],
            top: 0,
            bottom: 0,
        }
    }

    fn push(&mut self, ip: u64) {
        self.stack[self.top] = ip;
        self.top = (self.top + 1) % self.stack.len();
        if self.top == self.bottom {
            self.bottom = (self.bottom + 1) % self.stack.len();
        }
    }

    fn pop(&mut self) -> Result<u64, ErrorKind> {
        if self.top == self.bottom {
            return Err(ErrorKind::RetstackEmpty);
        }
        self.top = (self.top + self.stack.len() - 1) % self.stack.len();
        Ok(self.stack[self.top])
    }
}

/// Decodes the instruction flow of one trace buffer over an [`Image`].
pub struct BlockDecoder<'a> {
    image: &'a dyn Image,
    evdec: EventDecoder<'a>,
    config: BlockConfig,
    /// Where a TIP.PGD binds, as perf decides it (see [`Self::with_pgd_filter`]).
    pgd: Option<&'a dyn PgdFilter>,
    /// The event due next, or the error that ended the event stream.
    event: Result<Event, ErrorKind>,
    /// Trace offset of the packet `event` came from.
    event_offset: usize,
    /// Trace offset of the furthest event whose trace the flow has used since the last sync
    /// (PSB+ status updates do not count): after an error, the next PSB after it starts a
    /// segment whose trace is still unused, even if its PSB+ was already read.
    used: Option<usize>,
    /// Trace offset of the last event that did not fit the flow.
    failed_at: Option<usize>,
    ip: u64,
    enabled: bool,
    speculative: bool,
    mode: ExecMode,
    ctx: Context,
    retstack: ReturnStack,
    tsc: Option<u64>,
    /// The TSC of the last event whose trace the flow used (see [`Block::tsc`]).
    used_tsc: Option<u64>,
    cbr: Option<u8>,
    /// An instruction an event was bound to, to be stepped over after the event.
    postponed: Option<Insn>,
    bound_paging: bool,
    bound_vmcs: bool,
    bound_ptwrite: bool,
    /// The last overflow resolved with tracing disabled.
    overflow_disabled: bool,
    steps: u64,
    cache: Cache,
    /// perf mode: reading ahead for a deferred TIP met a packet perf cannot decode; `event`
    /// (the TNT) is still current.
    deferred_bad: bool,
    /// perf mode: what the return stack gave for the last return walked (perf's `ret_addr`:
    /// it pops at every return its walk meets, whatever the trace says next).
    ret_addr: Option<Result<u64, ErrorKind>>,
    /// perf mode: the last block's indirect branch got a TIP without an IP.
    target_suppressed: bool,
}

impl<'a> BlockDecoder<'a> {
    pub fn new(trace: &'a [u8], image: &'a dyn Image, config: BlockConfig) -> Self {
        BlockDecoder {
            image,
            evdec: {
                let evdec = EventDecoder::new(trace, config.events).with_errata(config.errata);
                if config.perf_resync {
                    evdec.with_perf_mode()
                } else {
                    evdec
                }
            },
            config,
            pgd: None,
            event: Err(ErrorKind::Nosync),
            event_offset: 0,
            used: None,
            failed_at: None,
            ip: 0,
            enabled: false,
            speculative: false,
            mode: ExecMode::Unknown,
            ctx: Context::default(),
            retstack: ReturnStack::new(),
            tsc: None,
            used_tsc: None,
            cbr: None,
            postponed: None,
            bound_paging: false,
            bound_vmcs: false,
            bound_ptwrite: false,
            overflow_disabled: false,
            steps: 0,
            cache: Cache::default(),
            deferred_bad: false,
            ret_addr: None,
            target_suppressed: false,
        }
    }

    /// The trace is buffers joined: each ends at one of `ends` (ascending offsets). perf's
    /// clock reads ahead only to the end of the current buffer.
    pub fn set_buffer_ends(&mut self, ends: &'a [usize]) {
        self.evdec.set_buffer_ends(ends);
    }

    /// Uses `cache` (for example one kept from an earlier decoder over the same image).
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = cache;
        self
    }

    /// Binds each TIP.PGD as perf 6.1's decoder does when it has an address filter
    /// (`intel_pt_walk_tip` with `pgd_ip`), not as libipt does: walking from the last packet, to
    /// the first direct branch whose target `filter` says leaves the traced region, else to the
    /// first branch that needs trace; a conditional one binds only when its taken target leaves
    /// (tracing stops at that target), else the trace does not fit ([`ErrorKind::BadQuery`]).
    /// The TIP.PGD's own IP is not used to find the branch.
    pub fn with_pgd_filter(mut self, filter: &'a dyn PgdFilter) -> Self {
        self.pgd = Some(filter);
        self
    }

    /// Gives the decode cache back.
    pub fn into_cache(self) -> Cache {
        self.cache
    }

    /// Sets the caller-defined address-space id of the context code is read in.
    pub fn set_space(&mut self, space: u64) {
        self.ctx.space = space;
    }

    /// The trace offset of the next packet to be processed (where errors are reported).
    pub fn offset(&self) -> usize {
        self.evdec.offset()
    }

    /// The offset of the PSB the decoder last synchronised at.
    pub fn sync_offset(&self) -> Option<usize> {
        self.evdec.sync_offset()
    }

    /// The current IP (the next instruction to execute, when tracing is enabled).
    pub fn ip(&self) -> u64 {
        self.ip
    }

    pub fn mode(&self) -> ExecMode {
        self.mode
    }

    pub fn context(&self) -> Context {
        self.ctx
    }

    /// The TSC of the last event handed out.
    pub fn tsc(&self) -> Option<u64> {
        self.tsc
    }

    /// The last core:bus ratio.
    pub fn cbr(&self) -> Option<u8> {
        self.cbr
    }

    /// perf's clock as of the packets read so far, when [`EventConfig::perf`] selected it.
    ///
    /// [`EventConfig::perf`]: super::events::EventConfig::perf
    pub fn perf_clock(&self) -> Option<super::time::PerfClock> {
        self.evdec.time.perf().copied()
    }

    /// The instruction at `ip` in mode `mode` and the current context, from the cache.
    pub fn insn(&mut self, mode: ExecMode, ip: u64) -> Result<Insn, ErrorKind> {
        let ctx = self.ctx;
        self.cache.insn(self.image, &ctx, mode, ip)
    }

    /// The instruction at `ip` in `block`'s mode and context.
    pub fn block_insn(&mut self, block: &Block, ip: u64) -> Result<Insn, ErrorKind> {
        self.cache.insn(self.image, &block.ctx, block.mode, ip)
    }

    fn reset(&mut self) {
        self.event = Err(ErrorKind::Nosync);
        self.deferred_bad = false;
        self.used = None;
        self.failed_at = None;
        self.ip = 0;
        self.enabled = false;
        self.speculative = false;
        self.mode = ExecMode::Unknown;
        self.ctx = Context {
            space: self.ctx.space,
            ..Context::default()
        };
        self.retstack = ReturnStack::new();
        self.tsc = None;
        self.cbr = None;
        self.overflow_disabled = false;
        self.steps = 0;
        self.clear_postponed();
    }

    fn status(&self, mut flags: u8) -> Status {
        if !self.enabled {
            flags |= Status::IP_SUPPRESSED;
        }
        if self.event == Err(ErrorKind::Eos) {
            flags |= Status::EOS;
        }
        Status(flags)
    }

    /// The offset of a packet perf could not decode, when that is what the decoder stopped at.
    pub fn bad_packet_at(&self) -> Option<usize> {
        if self.deferred_bad {
            return self.evdec.bad_packet_at();
        }
        match self.event {
            Err(ErrorKind::BadOpc | ErrorKind::BadPacket) => self.evdec.bad_packet_at(),
            _ => None,
        }
    }

    /// With [`Self::bad_packet_at`]: whether the bad packet is inside a PSB+, and the IP of
    /// that PSB+'s FUP if one came before it.
    pub fn bad_packet_in_psb(&self) -> Option<Option<u64>> {
        self.bad_packet_at()?;
        self.evdec.bad_packet_in_psb()
    }

    /// perf mode: whether the last block's indirect branch got a TIP without an IP (perf's
    /// branch to 0; the IP stays at the branch).
    pub fn target_suppressed(&self) -> bool {
        self.target_suppressed
    }

    /// Empties the return stack, as perf does at a PSB.
    pub fn clear_return_stack(&mut self) {
        self.retstack = ReturnStack::new();
        self.ret_addr = None;
    }

    /// A [`PerfWalk`] from `pos` (see [`PerfWalk::new`] for `ip`), with the last IP as the
    /// packets read so far left it.
    pub fn perf_walk_at(&self, pos: usize, ip: Option<u64>) -> PerfWalk {
        PerfWalk::new(pos, ip, self.evdec.last_ip())
    }

    /// After [`Self::bad_packet_at`]: goes on one byte further, everything else kept, as
    /// perf's `intel_pt_bad_packet` leaves its decoder.
    pub fn skip_bad_packet(&mut self) -> Result<Status, ErrorKind> {
        if self.bad_packet_at().is_none() {
            return Err(ErrorKind::Internal);
        }
        self.evdec.skip_bad_packet();
        if self.deferred_bad {
            // perf walks to the indirect branch again and reads the next packet for its TIP.
            self.deferred_bad = false;
            return Ok(self.status(0));
        }
        self.next_event();
        self.proceed_trailing_event(None)
    }

    /// perf's resync scan after an error (see [`PerfWalk::new`] for `ip`), from the packet
    /// after the one perf had in hand: the packet of the last event read, or the packet that
    /// failed.
    pub fn perf_walk(&self, ip: Option<u64>) -> PerfWalk {
        let at = match self.event {
            Ok(_) => self.evdec.event_offset(),
            Err(_) => self.evdec.offset(),
        };
        let trace = self.evdec.data();
        let mut next = match crate::pt::packets::decode(trace, at, BlockContext::None) {
            Ok(packet) => at + packet.size(),
            Err(_) => at + 1,
        };
        // A packet read and not used (no deferred TIP where one was due) is perf's packet in
        // hand: it scans from it (`pkt_step = 0`).
        if self.event.is_ok() {
            next = next.max(self.evdec.offset());
        }
        PerfWalk::new(next, ip, self.evdec.last_ip())
    }

    /// The next step of a [`PerfWalk`].
    pub fn perf_walk_step(&mut self, walk: &mut PerfWalk) -> WalkStep {
        self.evdec.perf_walk(walk)
    }

    /// Goes on decoding after a [`PerfWalk`] stopped at an IP packet: at `walk.ip`, with the
    /// packets after it, tracing enabled unless it was a TIP.PGD. The return stack is kept, as
    /// perf keeps its own.
    pub fn perf_resume(
        &mut self,
        walk: &PerfWalk,
        kind: super::events::ResyncIp,
    ) -> Result<Status, ErrorKind> {
        use super::events::ResyncIp;
        self.clear_postponed();
        self.deferred_bad = false;
        self.ip = walk.ip;
        self.enabled = kind != ResyncIp::Disable;
        self.steps = 0;
        // perf's `pge`: set by a TIP or TIP.PGE, cleared by a TIP.PGD, kept by a FUP.
        let pge = match kind {
            ResyncIp::Tip | ResyncIp::Enable => Some(true),
            ResyncIp::Disable => Some(false),
            ResyncIp::Fup => None,
        };
        self.evdec.resume_at(walk, walk.pos, pge);
        self.next_event();
        self.proceed_trailing_event(None)
    }

    /// Goes on decoding with the OVF at `at` a [`PerfWalk`] stopped at.
    pub fn perf_resume_at_overflow(
        &mut self,
        walk: &PerfWalk,
        at: usize,
    ) -> Result<Status, ErrorKind> {
        self.clear_postponed();
        self.deferred_bad = false;
        self.ip = walk.ip;
        self.steps = 0;
        self.evdec.resume_at(walk, at, None);
        self.next_event();
        self.proceed_trailing_event(None)
    }

    /// Synchronises at the next PSB (the first, on the first call).
    pub fn sync_forward(&mut self) -> Result<Status, ErrorKind> {
        self.sync_forward_after(self.used)
    }

    /// As [`Self::sync_forward`], but a PSB whose PSB+ did not fit the flow is not retried
    /// either (libipt's ptxed; [`Self::sync_forward`] retries it, as decoding that segment
    /// alone would).
    pub fn sync_forward_past_failure(&mut self) -> Result<Status, ErrorKind> {
        self.sync_forward_after(self.used.max(self.failed_at))
    }

    fn sync_forward_after(&mut self, used: Option<usize>) -> Result<Status, ErrorKind> {
        // Resume after the trace already used, not after the event layer's read-ahead: a PSB+
        // read ahead while the flow still ran on older trace starts the next segment.
        let from = match (used, self.evdec.synced_at()) {
            (Some(used), _) => Some(used + 1),
            (None, Some(psb)) => Some(psb + 1),
            (None, None) => None,
        };
        self.reset();
        match from {
            Some(from) => self.evdec.sync_from(from)?,
            None => self.evdec.sync_forward()?,
        }
        self.start()
    }

    /// Synchronises at the PSB at `offset`.
    pub fn sync_set(&mut self, offset: usize) -> Result<Status, ErrorKind> {
        self.reset();
        self.evdec.sync_set(offset)?;
        self.start()
    }

    fn start(&mut self) -> Result<Status, ErrorKind> {
        // Read the status updates of the PSB+ ahead, on a copy, to know whether tracing is
        // enabled and where; the caller still gets the same events in order.
        let mut ahead = self.evdec.clone();
        while ahead.position() == self.evdec.position() {
            match ahead.next_event() {
                Err(ErrorKind::Eos) => break,
                Err(error) => return Err(error),
                Ok(event) if !event.status_update => break,
                Ok(Event {
                    kind: EventKind::Enabled { ip, .. },
                    ..
                }) => {
                    self.enabled = true;
                    self.ip = ip.unwrap_or(0);
                    break;
                }
                Ok(_) => {}
            }
        }
        self.next_event();
        self.proceed_trailing_event(None)
    }

    fn next_event(&mut self) {
        self.event = self.evdec.next_event();
        match self.event {
            Ok(_) => self.event_offset = self.evdec.event_offset(),
            Err(ErrorKind::Eos) => {}
            Err(_) => {
                self.event_offset = self.evdec.offset();
                self.failed_at = Some(self.event_offset);
            }
        }
    }

    /// Notes that the flow used trace from the packet at `offset`.
    fn use_trace(&mut self, offset: usize) {
        self.used = Some(self.used.map_or(offset, |used| used.max(offset)));
    }

    fn fetch_event(&mut self) {
        if let Ok(event) = &self.event {
            self.tsc = event.tsc.or(self.tsc);
            // A PSB+ counts too: perf samples its time at every PSB.
            self.used_tsc = event.tsc.or(self.used_tsc);
            if !event.status_update {
                self.use_trace(self.event_offset);
            }
        }
        self.steps = 0;
        self.next_event();
    }

    /// Decodes the next block into `block`. Even on error, `block` holds what was decoded.
    pub fn next_block(&mut self, block: &mut Block) -> Result<Status, ErrorKind> {
        self.target_suppressed = false;
        *block = Block {
            ip: self.ip,
            mode: self.mode,
            speculative: self.speculative,
            ctx: self.ctx,
            ..Block::default()
        };
        let result = self.proceed(block);
        block.tsc = self.used_tsc;
        result
    }

    fn proceed(&mut self, block: &mut Block) -> Result<Status, ErrorKind> {
        let event = match self.event {
            Err(ErrorKind::Eos) => {
                // Out of trace: go on while no trace is needed, so adjacent segments stitch.
                if !self.enabled {
                    return Err(ErrorKind::Eos);
                }
                self.proceed_no_event(block)?;
                return Ok(self.status(Status::EOS));
            }
            Err(error) => return Err(error),
            Ok(event) => event,
        };
        match event.kind {
            EventKind::Tnt { .. } | EventKind::Tip { .. } => {
                if !self.enabled {
                    // perf walks trace from the IP it has, tracing enabled or not.
                    if !self.config.perf_resync {
                        return Err(ErrorKind::NoEnable);
                    }
                    self.enabled = true;
                }
                self.proceed_no_event(block)?;
                self.proceed_trailing_event(Some(block))
            }
            _ => self.proceed_event(block, event),
        }
    }

    fn count_step(&mut self, count: u32) -> Result<(), ErrorKind> {
        self.steps += u64::from(count);
        if self.steps > MAX_STEPS_WITHOUT_EVENT {
            return Err(ErrorKind::NoProgress);
        }
        Ok(())
    }

    /// Decodes the instruction at the current IP into `block`; `None` when the block is full.
    fn one_insn(&mut self, block: &mut Block) -> Result<Option<Insn>, ErrorKind> {
        if block.ninsn >= BLOCK_MAX_INSNS {
            return Ok(None);
        }
        self.count_step(1)?;
        let ctx = self.ctx;
        let insn = self.cache.insn(self.image, &ctx, self.mode, self.ip)?;
        if insn.pushes_return() {
            self.retstack.push(insn.next_ip());
        }
        if self.config.perf_resync && insn.class == InsnClass::Return {
            self.ret_addr = Some(self.retstack.pop());
        }
        block.last = Some(insn);
        block.end_ip = insn.ip;
        block.ninsn += 1;
        Ok(Some(insn))
    }

    fn ends_block(&self, insn: &Insn) -> bool {
        (self.config.end_on_call && insn.class == InsnClass::Call)
            || (self.config.end_on_jump && insn.class == InsnClass::Jump)
    }

    /// Walks without trace to the first instruction satisfying `pred` (returned, not stepped
    /// over). `None`: the block ended first. `Err(BadQuery)`: trace is needed first.
    fn proceed_to_insn(
        &mut self,
        block: &mut Block,
        pred: impl Fn(&Insn) -> bool,
    ) -> Result<Option<Insn>, ErrorKind> {
        loop {
            let Some(insn) = self.one_insn(block)? else {
                return Ok(None);
            };
            if pred(&insn) {
                return Ok(Some(insn));
            }
            self.ip = insn.next_ip_without_trace()?;
            if self.ends_block(&insn) {
                return Ok(None);
            }
        }
    }

    /// Decodes the block from the current IP, without trace, up to `ip` (not included): where a
    /// segment decoded alone ends, the next PSB+ says the flow went. Errors as the sequential
    /// decode would report them there.
    pub fn walk_to(&mut self, block: &mut Block, ip: u64) -> Result<(), ErrorKind> {
        *block = Block {
            ip: self.ip,
            mode: self.mode,
            speculative: self.speculative,
            ctx: self.ctx,
            ..Block::default()
        };
        if !self.enabled {
            return Ok(());
        }
        while !self.proceed_to_ip(block, ip)? {}
        Ok(())
    }

    /// Walks without trace until the current IP is `ip`; false when the block ended first.
    fn proceed_to_ip(&mut self, block: &mut Block, ip: u64) -> Result<bool, ErrorKind> {
        loop {
            if self.ip == ip {
                return Ok(true);
            }
            let Some(insn) = self.one_insn(block)? else {
                return Ok(false);
            };
            self.ip = insn.next_ip_without_trace()?;
            if self.ends_block(&insn) {
                return Ok(self.ip == ip);
            }
        }
    }

    /// Walks to the next instruction that needs trace and applies the trace to it.
    fn proceed_no_event(&mut self, block: &mut Block) -> Result<(), ErrorKind> {
        if self.proceed_cached(block)? {
            return Ok(());
        }
        match self.proceed_to_insn(block, |_| false) {
            Ok(_) => Ok(()),
            Err(ErrorKind::BadQuery) => {
                let insn = block.last.ok_or(ErrorKind::Internal)?;
                self.proceed_with_trace(&insn)
            }
            Err(error) => Err(error),
        }
    }

    /// The cached path of [`Self::proceed_no_event`]; false when the run is not cacheable or
    /// does not fit the block.
    fn proceed_cached(&mut self, block: &mut Block) -> Result<bool, ErrorKind> {
        let ctx = self.ctx;
        let end = RunEnd {
            on_call: self.config.end_on_call,
            on_jump: self.config.end_on_jump,
        };
        let Some(run) = self.cache.run(self.image, &ctx, self.mode, self.ip, end) else {
            return Ok(false);
        };
        if block.ninsn + run.ninsn > BLOCK_MAX_INSNS {
            return Ok(false);
        }
        let (ninsn, last, error, stop_ip, ended) =
            (run.ninsn, run.last, run.error, run.stop_ip, run.ended);
        for &ret in &run.calls {
            self.retstack.push(ret);
        }
        // A run's return is its last instruction, popped when the trace is applied to it.
        self.ret_addr = None;
        self.count_step(ninsn)?;
        block.ninsn += ninsn;
        if let Some(insn) = last {
            block.last = Some(insn);
            block.end_ip = insn.ip;
        }
        self.ip = stop_ip;
        if let Some(error) = error {
            return Err(error);
        }
        if ended {
            // A direct call or jump ended the block: its target is known.
            return Ok(true);
        }
        let insn = last.ok_or(ErrorKind::Internal)?;
        self.proceed_with_trace(&insn)?;
        Ok(true)
    }

    /// The next TNT bit.
    fn cond_branch(&mut self) -> Result<bool, ErrorKind> {
        if let Ok(Event {
            kind: EventKind::Tnt { .. },
            ..
        }) = self.event
        {
            self.use_trace(self.event_offset);
        }
        // The TNT packet decides this branch: its time is the branch's.
        if let Ok(Event { tsc: Some(tsc), .. }) = self.event {
            self.used_tsc = Some(tsc);
        }
        match &mut self.event {
            Ok(Event {
                kind: EventKind::Tnt { bits, size },
                ..
            }) => {
                if *size == 0 {
                    return Err(ErrorKind::Internal);
                }
                *size -= 1;
                Ok(*bits >> *size & 1 == 1)
            }
            _ => Err(ErrorKind::BadQuery),
        }
    }

    /// Applies trace to `insn`, a branch that needs it.
    fn proceed_with_trace(&mut self, insn: &Insn) -> Result<(), ErrorKind> {
        match insn.class {
            InsnClass::CondJump => {
                self.ip = if self.cond_branch()? {
                    insn.target.ok_or(ErrorKind::BadInsn)?
                } else {
                    insn.next_ip()
                };
                return Ok(());
            }
            // perf pops its return stack at every return it walks, before it looks at the
            // trace (`intel_pt_walk_insn`); libipt only at a compressed one.
            InsnClass::Return if self.config.perf_resync => {
                let popped = self.ret_addr.take().unwrap_or_else(|| self.retstack.pop());
                match self.cond_branch() {
                    Ok(true) => {
                        self.ip = popped?;
                        return Ok(());
                    }
                    Ok(false) => return Err(ErrorKind::BadRetcomp),
                    Err(ErrorKind::BadQuery) => {}
                    Err(error) => return Err(error),
                }
            }
            InsnClass::Return => match self.cond_branch() {
                Ok(true) => {
                    self.ip = self.retstack.pop()?;
                    return Ok(());
                }
                Ok(false) => return Err(ErrorKind::BadRetcomp),
                // Not compressed: the return gets a TIP.
                Err(ErrorKind::BadQuery) => {}
                Err(error) => return Err(error),
            },
            InsnClass::Jump | InsnClass::Call => {
                if insn.target.is_some() && insn.kind != InsnKind::Jmpabs {
                    return Err(ErrorKind::Internal);
                }
            }
            InsnClass::FarCall | InsnClass::FarReturn | InsnClass::FarJump => {}
            InsnClass::Other | InsnClass::Ptwrite => return Err(ErrorKind::Internal),
        }
        self.proceed_indirect()
    }

    /// Takes the next TIP as the target of an indirect branch.
    fn proceed_indirect(&mut self) -> Result<(), ErrorKind> {
        match self.event {
            Ok(Event {
                kind: EventKind::Tip { ip },
                ..
            }) => {
                // perf takes a TIP without an IP as a branch to 0 and stays at the branch
                // (`intel_pt_walk_tip`).
                match ip {
                    None if self.config.perf_resync => self.target_suppressed = true,
                    _ => self.ip = ip.ok_or(ErrorKind::BadPacket)?,
                }
                self.fetch_event();
                Ok(())
            }
            Ok(Event {
                kind: EventKind::Tnt { .. },
                ..
            }) => {
                // A deferred TIP: the TIP may follow TNT bits of later conditional branches.
                // Read ahead to it and keep the TNT current.
                let saved = self.evdec.clone();
                match self.evdec.next_event() {
                    Ok(Event {
                        kind: EventKind::Tip { ip },
                        tsc,
                        ..
                    }) => {
                        self.used_tsc = tsc.or(self.used_tsc);
                        self.use_trace(self.evdec.event_offset());
                        self.ip = ip.unwrap_or(0);
                        Ok(())
                    }
                    // perf reads the one packet after the TNT for the TIP, and reports one it
                    // cannot decode as such (`intel_pt_walk_tnt`).
                    Err(error @ (ErrorKind::BadOpc | ErrorKind::BadPacket))
                        if self.config.perf_resync && self.evdec.bad_packet_at().is_some() =>
                    {
                        self.deferred_bad = true;
                        Err(error)
                    }
                    // perf stops there without an error ("No more data").
                    Err(ErrorKind::Eos) if self.config.perf_resync => Err(ErrorKind::Eos),
                    _ => {
                        self.evdec = saved;
                        Err(ErrorKind::BadQuery)
                    }
                }
            }
            _ => Err(ErrorKind::BadQuery),
        }
    }

    fn postpone(&mut self, insn: Insn) -> Result<Status, ErrorKind> {
        if self.postponed.is_some() {
            return Err(ErrorKind::Internal);
        }
        self.postponed = Some(insn);
        Ok(self.status(Status::EVENT_PENDING))
    }

    fn clear_postponed(&mut self) {
        self.postponed = None;
        self.bound_paging = false;
        self.bound_vmcs = false;
        self.bound_ptwrite = false;
    }

    /// Steps over the instruction an event was bound to.
    fn proceed_postponed(&mut self) -> Result<(), ErrorKind> {
        let Some(insn) = self.postponed else {
            return Ok(());
        };
        if self.enabled {
            match insn.next_ip_without_trace() {
                Ok(ip) => self.ip = ip,
                Err(ErrorKind::BadQuery) => self.proceed_with_trace(&insn)?,
                Err(error) => return Err(error),
            }
        }
        self.clear_postponed();
        Ok(())
    }

    /// Whether SKD022's workaround applies to an asynchronous disable at `at`: a VMLAUNCH or
    /// VMRESUME there.
    fn skd022_vm_entry(&mut self, at: u64) -> bool {
        self.config.errata.skd022
            && self
                .insn(self.mode, at)
                .is_ok_and(|insn| matches!(insn.kind, InsnKind::Vmlaunch | InsnKind::Vmresume))
    }

    /// Where tracing is expected to resume after a synchronous disable at `insn`.
    fn set_disable_resume_ip(&mut self, insn: Option<Insn>, pgd_ip: Option<u64>) {
        // perf goes to the TIP.PGD's IP, stays at the branch without one, and goes to the
        // target of a conditional branch that leaves the filtered range.
        if self.config.perf_resync {
            if let Some(insn) = insn {
                self.ip = match insn.class {
                    InsnClass::CondJump => insn.target.unwrap_or(insn.ip),
                    _ => pgd_ip.unwrap_or(insn.ip),
                };
                return;
            }
        }
        self.ip = match insn {
            Some(insn) if matches!(insn.class, InsnClass::Call | InsnClass::FarCall) => {
                insn.next_ip()
            }
            _ => 0,
        };
    }

    /// Walks to the branch a TIP.PGD binds to, as [`Self::with_pgd_filter`] describes; false
    /// when the block ended first (after a direct branch that stays in the region).
    fn proceed_to_pgd(
        &mut self,
        block: &mut Block,
        pgd: &dyn PgdFilter,
        pgd_ip: Option<u64>,
    ) -> Result<bool, ErrorKind> {
        let ctx = self.ctx;
        let leaves = |insn: &Insn| {
            matches!(insn.class, InsnClass::Jump | InsnClass::Call)
                && insn.next_ip_without_trace().is_ok()
                && insn.target.is_some_and(|to| pgd.leaves(&ctx, to))
        };
        match self.proceed_to_insn(block, leaves) {
            Ok(Some(insn)) => {
                // perf's IP is the target then (where an error before the next packet is).
                self.ip = insn.next_ip_without_trace()?;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(ErrorKind::BadQuery) => match block.last {
                Some(insn) if insn.class == InsnClass::CondJump => {
                    let to = insn.target.ok_or(ErrorKind::BadInsn)?;
                    if !pgd.leaves(&ctx, to) {
                        return Err(ErrorKind::BadQuery);
                    }
                    // perf moves its IP to the target before it reports the trace end.
                    self.ip = to;
                    Ok(true)
                }
                last => {
                    self.set_disable_resume_ip(last, pgd_ip);
                    Ok(true)
                }
            },
            Err(error) => Err(error),
        }
    }

    /// Walks to where `event` binds.
    fn proceed_event(&mut self, block: &mut Block, event: Event) -> Result<Status, ErrorKind> {
        let pending = self.status(Status::EVENT_PENDING);
        let reach = |this: &mut Self, block: &mut Block, ip: Option<u64>| match ip {
            Some(ip) => this.proceed_to_ip(block, ip),
            None => Ok(true),
        };
        let reached = match event.kind {
            EventKind::Enabled { .. }
            | EventKind::Overflow { .. }
            | EventKind::Stop
            | EventKind::Pwre { .. }
            | EventKind::Pwrx { .. }
            | EventKind::Tick { .. }
            | EventKind::Cbr { .. }
            | EventKind::Mnt { .. }
            | EventKind::PerfIp { .. } => true,
            EventKind::Disabled { ip } => {
                if event.status_update {
                    true
                } else if let Some(pgd) = self.pgd {
                    self.proceed_to_pgd(block, pgd, ip)?
                } else {
                    // perf walks a TIP.PGD to the next branch whatever IP it carries
                    // (`intel_pt_walk_tip`); libipt to that IP.
                    let to_branch = if self.config.perf_resync { None } else { ip };
                    let result = match to_branch {
                        None => {
                            // SKL014: a direct branch leaving the filtered range may send a
                            // TIP.PGD without its target.
                            let filter = self.config.filter;
                            // perf too ends the trace at a direct branch leaving the range
                            // (`intel_pt_walk_tip` with `pgd_ip`).
                            let skl014 = (self.config.errata.skl014 || self.config.perf_resync)
                                && filter.filters();
                            let leaves = |insn: &Insn| {
                                skl014
                                    && matches!(insn.class, InsnClass::Jump | InsnClass::Call)
                                    && insn.next_ip_without_trace().is_ok()
                                    && insn.target.is_some_and(|to| !filter.allows(to))
                            };
                            self.proceed_to_insn(block, |insn: &Insn| {
                                insn.changes_cr3() || leaves(insn)
                            })
                            .map(|insn| {
                                // perf is at the target of the branch that left the range.
                                if let Some(insn) =
                                    insn.filter(|i| self.config.perf_resync && leaves(i))
                                {
                                    self.ip = insn.target.unwrap_or(insn.ip);
                                }
                                insn.is_some()
                            })
                        }
                        Some(ip) => self.proceed_to_ip(block, ip),
                    };
                    match result {
                        // perf takes a TIP.PGD at a conditional branch only where the branch
                        // leaves the filtered range (`intel_pt_walk_tip`); elsewhere it is
                        // "Trace doesn't match instruction".
                        Err(ErrorKind::BadQuery)
                            if self.config.perf_resync
                                && block.last.is_some_and(|insn| {
                                    insn.class == InsnClass::CondJump
                                        && !(self.config.filter.filters()
                                            && insn
                                                .target
                                                .is_some_and(|to| !self.config.filter.allows(to)))
                                }) =>
                        {
                            return Err(ErrorKind::BadQuery);
                        }
                        // A synchronous disable also binds to a branch that needs trace.
                        Err(ErrorKind::BadQuery) => {
                            self.set_disable_resume_ip(block.last, ip);
                            true
                        }
                        other => other?,
                    }
                }
            }
            EventKind::AsyncDisabled { at, .. } => {
                let reached = self.proceed_to_ip(block, at)?;
                // SKD022: a VM entry that disables tracing may send FUP + TIP.PGD at itself;
                // it executed, so it belongs to the block.
                if reached && self.skd022_vm_entry(at) {
                    self.one_insn(block)?;
                }
                reached
            }
            EventKind::AsyncBranch { from, .. } => self.proceed_to_ip(block, from)?,
            EventKind::Paging { .. } | EventKind::Vmcs { .. } => {
                if !self.enabled {
                    true
                } else {
                    let paging = matches!(event.kind, EventKind::Paging { .. });
                    let pred = if paging {
                        Insn::binds_to_pip
                    } else {
                        Insn::binds_to_vmcs
                    };
                    let Some(insn) = self.proceed_to_insn(block, pred)? else {
                        return Ok(Status::default());
                    };
                    if paging {
                        self.bound_paging = true;
                    } else {
                        self.bound_vmcs = true;
                    }
                    return self.postpone(insn);
                }
            }
            EventKind::AsyncPaging { ip, .. }
            | EventKind::AsyncVmcs { ip, .. }
            | EventKind::ExecMode { ip, .. }
            | EventKind::Tsx { ip, .. } => reach(self, block, ip)?,
            EventKind::Exstop { ip } | EventKind::Mwait { ip, .. } => {
                if self.enabled {
                    reach(self, block, ip)?
                } else {
                    true
                }
            }
            EventKind::Ptwrite { ip, .. } => {
                if !self.enabled {
                    true
                } else {
                    let insn = match ip {
                        None => self.proceed_to_insn(block, Insn::is_ptwrite)?,
                        Some(ip) => {
                            if self.proceed_to_ip(block, ip)? {
                                self.one_insn(block)?
                            } else {
                                None
                            }
                        }
                    };
                    let Some(insn) = insn else {
                        return Ok(Status::default());
                    };
                    self.bound_ptwrite = true;
                    return self.postpone(insn);
                }
            }
            EventKind::Tip { .. } | EventKind::Tnt { .. } | EventKind::Ignore => {
                return Err(ErrorKind::Internal)
            }
        };
        if !reached {
            return Ok(Status::default());
        }
        let _ = pending;
        Ok(self.status(Status::EVENT_PENDING))
    }

    /// After a block or an event: is the next event due here?
    fn proceed_trailing_event(&mut self, block: Option<&Block>) -> Result<Status, ErrorKind> {
        let pending = Status::EVENT_PENDING;
        let event = match self.event {
            Err(error) => {
                self.proceed_postponed()?;
                let flags = if error == ErrorKind::Eos { 0 } else { pending };
                return Ok(self.status(flags));
            }
            Ok(event) => event,
        };
        let ip_differs = |this: &Self, ip: Option<u64>| ip.is_some_and(|ip| this.ip != ip);
        let due = match event.kind {
            EventKind::Tnt { size, .. } => {
                let _ = block;
                if size == 0 {
                    self.fetch_event();
                    return self.proceed_trailing_event(block);
                }
                false
            }
            EventKind::Tip { .. } | EventKind::Ignore => false,
            EventKind::Disabled { ip } => match self.postponed {
                None => {
                    if event.status_update {
                        return Ok(self.status(pending));
                    }
                    false
                }
                Some(insn) => {
                    if ip.is_none() && insn.changes_cr3() {
                        return Ok(self.status(pending));
                    }
                    match insn.next_ip_without_trace() {
                        Err(ErrorKind::BadQuery) => {
                            self.set_disable_resume_ip(Some(insn), ip);
                            return Ok(self.status(pending));
                        }
                        Err(error) => return Err(error),
                        Ok(next) => self.ip = next,
                    }
                    self.clear_postponed();
                    ip == Some(self.ip)
                }
            },
            EventKind::Enabled { .. }
            | EventKind::Overflow { .. }
            | EventKind::Stop
            | EventKind::Pwre { .. }
            | EventKind::Pwrx { .. }
            | EventKind::Tick { .. }
            | EventKind::Cbr { .. }
            | EventKind::Mnt { .. }
            | EventKind::PerfIp { .. } => {
                self.proceed_postponed()?;
                true
            }
            EventKind::AsyncBranch { from: at, .. } => {
                self.proceed_postponed()?;
                self.ip == at
            }
            EventKind::AsyncDisabled { at, .. } => {
                self.proceed_postponed()?;
                // The VM entry of SKD022 goes into a block first.
                self.ip == at && !self.skd022_vm_entry(at)
            }
            EventKind::Paging { .. } | EventKind::Vmcs { .. } => {
                if !self.enabled {
                    return Ok(self.status(pending));
                }
                let paging = matches!(event.kind, EventKind::Paging { .. });
                let bound = if paging {
                    self.bound_paging
                } else {
                    self.bound_vmcs
                };
                match self.postponed {
                    Some(insn)
                        if !bound
                            && (if paging {
                                insn.binds_to_pip()
                            } else {
                                insn.binds_to_vmcs()
                            }) =>
                    {
                        if paging {
                            self.bound_paging = true;
                        } else {
                            self.bound_vmcs = true;
                        }
                        true
                    }
                    _ => false,
                }
            }
            EventKind::AsyncPaging { ip, .. } | EventKind::AsyncVmcs { ip, .. } => {
                self.proceed_postponed()?;
                !ip_differs(self, ip)
            }
            EventKind::ExecMode { ip, .. } => {
                self.proceed_postponed()?;
                !self.enabled || !ip_differs(self, ip)
            }
            EventKind::Tsx { ip, .. } => {
                self.proceed_postponed()?;
                !ip_differs(self, ip)
            }
            EventKind::Exstop { ip } | EventKind::Mwait { ip, .. } => {
                self.proceed_postponed()?;
                !(self.enabled && ip_differs(self, ip))
            }
            EventKind::Ptwrite { ip, .. } => {
                if !self.enabled {
                    return Ok(self.status(pending));
                }
                match self.postponed {
                    Some(insn) if !self.bound_ptwrite && ip.is_none() && insn.is_ptwrite() => {
                        self.bound_ptwrite = true;
                        true
                    }
                    _ => false,
                }
            }
        };
        if due {
            return Ok(self.status(pending));
        }
        self.proceed_postponed()?;
        Ok(self.status(0))
    }

    /// Hands out the event that is due, applies it, and tells what comes next.
    pub fn event(&mut self) -> Result<(Event, Status), ErrorKind> {
        let offset = self.event_offset;
        let result = self.apply_event();
        if result.is_err() {
            self.failed_at = Some(offset);
        }
        result
    }

    fn apply_event(&mut self) -> Result<(Event, Status), ErrorKind> {
        let mut event = self.event?;
        // perf empties its return stack at every PSB (`intel_pt_psb`); libipt's lives on.
        if event.status_update && self.config.perf_resync {
            self.retstack = ReturnStack::new();
        }
        let ip_differs = |this: &Self, ip: Option<u64>| ip.is_some_and(|ip| this.ip != ip);
        match &mut event.kind {
            EventKind::Tnt { .. } | EventKind::Tip { .. } => return Err(ErrorKind::BadQuery),
            EventKind::Ignore => return Err(ErrorKind::Internal),
            EventKind::Enabled { ip, resumed } => {
                *resumed = ip.unwrap_or(0) == self.ip;
                if event.status_update {
                    if !self.enabled {
                        // SKD010: after an overflow without FUP, PSB+ gives the IP.
                        if !(self.config.errata.skd010 && self.overflow_disabled) {
                            return Err(ErrorKind::BadStatusUpdate);
                        }
                        self.ip = ip.ok_or(ErrorKind::Noip)?;
                        self.enabled = true;
                    }
                } else if self.config.perf_resync {
                    // perf takes a TIP.PGE as it comes (`intel_pt_walk_trace`), enabled or not;
                    // one without an IP only enables.
                    if let Some(ip) = *ip {
                        self.ip = ip;
                    }
                    self.enabled = true;
                } else {
                    let ip = ip.ok_or(ErrorKind::Noip)?;
                    if self.enabled {
                        return Err(ErrorKind::BadContext);
                    }
                    self.ip = ip;
                    self.enabled = true;
                }
            }
            EventKind::AsyncDisabled { at, .. } => {
                if self.ip != *at {
                    return Err(ErrorKind::BadQuery);
                }
                self.process_disabled(&event)?;
            }
            EventKind::Disabled { .. } => self.process_disabled(&event)?,
            EventKind::AsyncBranch { from, to } => {
                if self.ip != *from {
                    return Err(ErrorKind::BadQuery);
                }
                if event.status_update || !self.enabled {
                    return Err(ErrorKind::BadContext);
                }
                self.ip = to.unwrap_or(0);
            }
            EventKind::AsyncPaging { cr3, nr, ip } => {
                if ip_differs(self, *ip) {
                    return Err(ErrorKind::BadQuery);
                }
                self.ctx.cr3 = Some(*cr3);
                self.ctx.nr = *nr;
            }
            EventKind::Paging { cr3, nr } => {
                self.ctx.cr3 = Some(*cr3);
                self.ctx.nr = *nr;
            }
            EventKind::AsyncVmcs { base, ip } => {
                if ip_differs(self, *ip) {
                    return Err(ErrorKind::BadQuery);
                }
                self.ctx.vmcs = Some(*base);
            }
            EventKind::Vmcs { base } => self.ctx.vmcs = Some(*base),
            EventKind::Overflow { ip } => {
                if event.status_update {
                    return Err(ErrorKind::BadContext);
                }
                self.overflow_disabled = ip.is_none();
                match ip {
                    None => {
                        self.enabled = false;
                        self.ip = 0;
                    }
                    Some(ip) => {
                        self.enabled = true;
                        self.ip = *ip;
                    }
                }
                self.speculative = false;
            }
            EventKind::ExecMode { mode, ip } => {
                if self.enabled && ip_differs(self, *ip) {
                    return Err(ErrorKind::BadQuery);
                }
                if event.status_update
                    && self.enabled
                    && self.mode != ExecMode::Unknown
                    && self.mode != *mode
                {
                    return Err(ErrorKind::BadStatusUpdate);
                }
                self.mode = *mode;
            }
            EventKind::Tsx {
                ip, speculative, ..
            } => {
                if ip_differs(self, *ip) {
                    return Err(ErrorKind::BadQuery);
                }
                self.speculative = *speculative;
            }
            EventKind::Stop => {
                if event.status_update || self.enabled {
                    return Err(ErrorKind::BadContext);
                }
            }
            EventKind::Exstop { ip } | EventKind::Mwait { ip, .. } => {
                if self.enabled && ip_differs(self, *ip) {
                    return Err(ErrorKind::BadQuery);
                }
            }
            EventKind::Cbr { ratio } => self.cbr = Some(*ratio),
            EventKind::PerfIp { ip } => self.ip = *ip,
            EventKind::Pwre { .. }
            | EventKind::Pwrx { .. }
            | EventKind::Ptwrite { .. }
            | EventKind::Tick { .. }
            | EventKind::Mnt { .. } => {}
        }
        self.fetch_event();
        let status = self.proceed_trailing_event(None)?;
        Ok((event, status))
    }

    fn process_disabled(&mut self, event: &Event) -> Result<(), ErrorKind> {
        if event.status_update {
            if self.enabled {
                return Err(ErrorKind::BadStatusUpdate);
            }
            return Ok(());
        }
        // perf walks to a TIP.PGD whatever the enable state (`intel_pt_walk_tip`).
        if !self.enabled && !self.config.perf_resync {
            return Err(ErrorKind::BadContext);
        }
        self.enabled = false;
        Ok(())
    }

    /// After an error: continues at the next event that gives an IP (or at the PSB when the
    /// error was in PSB+). Without an error before it, this skips the event due now.
    pub fn resync(&mut self) -> Result<Status, ErrorKind> {
        self.clear_postponed();
        let pending = Status::EVENT_PENDING;
        loop {
            let event = self.event?;
            if event.status_update {
                let offset = self.evdec.sync_offset().ok_or(ErrorKind::Nosync)?;
                return self.sync_set(offset);
            }
            match event.kind {
                EventKind::Enabled { .. } => {
                    self.enabled = false;
                    return Ok(self.status(pending));
                }
                EventKind::Disabled { .. } => {
                    self.enabled = true;
                    self.ip = 0;
                    self.process_disabled(&event)?;
                    self.fetch_event();
                    return self.proceed_trailing_event(None);
                }
                EventKind::AsyncDisabled { at, .. } | EventKind::AsyncBranch { from: at, .. } => {
                    self.ip = at;
                    return Ok(self.status(pending));
                }
                EventKind::AsyncPaging { ip: Some(ip), .. }
                | EventKind::AsyncVmcs { ip: Some(ip), .. }
                | EventKind::Exstop { ip: Some(ip) }
                | EventKind::Mwait { ip: Some(ip), .. }
                | EventKind::Tick { ip: Some(ip) } => {
                    self.ip = ip;
                    return Ok(self.status(pending));
                }
                EventKind::AsyncPaging { cr3, nr, ip: None } | EventKind::Paging { cr3, nr } => {
                    self.ctx.cr3 = Some(cr3);
                    self.ctx.nr = nr;
                }
                EventKind::AsyncVmcs { base, ip: None } | EventKind::Vmcs { base } => {
                    self.ctx.vmcs = Some(base)
                }
                EventKind::Overflow { .. } => return Ok(self.status(pending)),
                EventKind::ExecMode { ip, .. } | EventKind::Tsx { ip, .. } => {
                    match ip {
                        None => self.enabled = false,
                        Some(ip) => {
                            self.enabled = true;
                            self.ip = ip;
                        }
                    }
                    return Ok(self.status(pending));
                }
                EventKind::Ptwrite { ip, .. } => {
                    let ip = ip.ok_or(ErrorKind::EventIgnored)?;
                    self.ip = ip;
                    return Ok(self.status(0));
                }
                EventKind::Tip { ip } => {
                    self.ip = ip.unwrap_or(0);
                    self.fetch_event();
                    return self.proceed_trailing_event(None);
                }
                EventKind::Stop
                | EventKind::Exstop { ip: None }
                | EventKind::Mwait { ip: None, .. }
                | EventKind::Tick { ip: None }
                | EventKind::Pwre { .. }
                | EventKind::Pwrx { .. }
                | EventKind::Cbr { .. }
                | EventKind::Mnt { .. }
                | EventKind::PerfIp { .. }
                | EventKind::Tnt { .. }
                | EventKind::Ignore => {}
            }
            self.fetch_event();
        }
    }
}
