//! Bulk mode: Intel PT recordings of any size for decoder benchmarks, valid by construction.
//!
//! Single-stepping a real program runs at only ~60k steps/s, so a GB-sized trace is made from a walk
//! over a large binary's control-flow graph instead: basic blocks decoded with iced-x86 from the
//! executable sections, entered at function starts (symbol tables, `.eh_frame_hdr`, the entry point).
//! At each conditional branch a seeded PRNG chooses the outcome (each branch has its own bias, as real
//! branches do); direct jumps and calls are followed; returns go through a modelled call stack (the
//! encoder compresses them when the matching call is on its stack since the last PSB, else a TIP);
//! indirect jumps and calls go to a known function start (a TIP), or now and then end the path
//! (TIP.PGD); a return with an empty stack goes to a known return site. Syscalls end the path the way
//! they do under user-only tracing (TIP.PGD); what the walk cannot follow (invalid bytes, far transfers,
//! `ud2`, the end of a section) ends it asynchronously just before (FUP, TIP.PGD). A path then restarts
//! at another function start (TIP.PGE). The trace ends the same way, before the next block.
//!
//! One rule keeps every asynchronous end exact: a decoder walks from its last packet to the FUP's IP
//! and stops at the first arrival, so the walk only ends a path at an instruction it has not executed
//! since the last packet-producing branch. A chain of direct jumps and calls that would come back to
//! such an instruction (a loop without packets, which perf would also call a never-ending loop) is cut
//! just before it.
//!
//! The recording is per-thread (one AUXTRACE queue) with a single MMAP2 of the binary's executable
//! segment, a build-id cache, TSC/MTC/TMA timing (and CYC with `cyc`) as [`crate::encode`] writes it,
//! split into AUXTRACE buffers; it is streamed to disk with bounded memory. Beside it,
//! `expected-counts.bin` (see [`Counts`]) says what a decoder must find.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderOptions, FlowControl};

use crate::buildid::{self, BuildIdError};
use crate::elf::{self, CodeImage, ElfError};
use crate::encode::{self, Stats, Stream};
use crate::insn::{self, Kind};
use crate::perfdata::{PerfData, PerfDataFile, SampleId};
use crate::recording::{self, TimeConv, PERF_DATA};
use crate::trace::Mapping;

/// The expected-counts file beside the perf.data.
pub const COUNTS: &str = "expected-counts.bin";
/// Its first 8 bytes.
pub const COUNTS_MAGIC: &[u8; 8] = b"PTLBULK1";

/// Where a position-independent binary is loaded (where Linux puts the first PIE without ASLR).
const PIE_BASE: u64 = 0x5555_5555_4000;
/// The process id and thread id of the recording.
const PID: i32 = 4242;
/// Deepest modelled call stack; a call beyond ends the path.
const MAX_CALL_DEPTH: usize = 512;
/// One indirect branch in this many ends the path (TIP.PGD) instead of going to a function start.
const INDIRECT_STOP_ONE_IN: u64 = 64;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Options {
    /// The binary whose code is walked.
    pub binary: PathBuf,
    /// Bytes of Intel PT trace to write (the trace ends at the first block boundary past this).
    pub size: u64,
    pub seed: u64,
    /// Bytes per AUXTRACE buffer (each ends at a packet boundary at or past this).
    pub aux_buffer: usize,
    pub encode: encode::Config,
}

impl Options {
    pub fn new(binary: impl Into<PathBuf>, size: u64) -> Self {
        Options {
            binary: binary.into(),
            size,
            seed: 1,
            aux_buffer: 4 << 20,
            encode: encode::Config::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    BuildId(#[from] BuildIdError),
    #[error("{0}: no function start to walk from")]
    NoFunctions(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The expected counts: what a decoder of the whole trace must report.
///
/// File format (`expected-counts.bin`, little-endian): the 8-byte magic `PTLBULK1`, then seven u64s —
/// instructions, branches (control transfers executed: conditional, direct, indirect, returns,
/// syscalls), conditional branches executed, conditional branches taken, paths (TIP.PGE), branch
/// sites (N), reserved (0) — then N records of three u64s sorted by address: the address of a control
/// transfer instruction, how many times it executed, and how many of those times it was taken (for
/// anything but a conditional branch, taken = executed). Not-taken = executed − taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub instructions: u64,
    pub branches: u64,
    pub conditional: u64,
    pub conditional_taken: u64,
    pub paths: u64,
    /// (address, executed, taken), sorted by address.
    pub sites: Vec<(u64, u64, u64)>,
}

impl Counts {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + 24 * self.sites.len());
        b.extend_from_slice(COUNTS_MAGIC);
        for v in [
            self.instructions,
            self.branches,
            self.conditional,
            self.conditional_taken,
            self.paths,
            self.sites.len() as u64,
            0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for &(ip, executed, taken) in &self.sites {
            for v in [ip, executed, taken] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    /// Reads the file format back; `None` if it is not one.
    pub fn from_bytes(b: &[u8]) -> Option<Counts> {
        let u = |at: usize| {
            b.get(at..at + 8)
                .map(|x| u64::from_le_bytes(x.try_into().unwrap()))
        };
        if b.get(..8)? != COUNTS_MAGIC {
            return None;
        }
        let n = usize::try_from(u(48)?).ok()?;
        if b.len() != 64 + n.checked_mul(24)? {
            return None;
        }
        let sites = (0..n)
            .map(|i| {
                let at = 64 + 24 * i;
                Some((u(at)?, u(at + 8)?, u(at + 16)?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Counts {
            instructions: u(8)?,
            branches: u(16)?,
            conditional: u(24)?,
            conditional_taken: u(32)?,
            paths: u(40)?,
            sites,
        })
    }

    pub fn read(dir: &Path) -> std::io::Result<Counts> {
        let path = dir.join(COUNTS);
        let bytes = std::fs::read(&path)?;
        Counts::from_bytes(&bytes).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not an expected-counts file", path.display()),
            )
        })
    }
}

/// What was written.
#[derive(Debug)]
pub struct Summary {
    pub perf_data: PathBuf,
    pub binary: String,
    pub build_id: String,
    pub trace_bytes: u64,
    pub file_bytes: u64,
    pub buffers: u64,
    /// Distinct basic blocks decoded (entered at least once).
    pub blocks: usize,
    pub counts: Counts,
    pub stats: Stats,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "{}: {} bytes of trace over {} ({}) in {} AUXTRACE buffer(s), {} bytes in all; {} instructions, \
             {} branches ({} conditional, {} taken) at {} sites in {} distinct blocks, {} paths; {}",
            self.perf_data.display(),
            self.trace_bytes,
            self.binary,
            self.build_id,
            self.buffers,
            self.file_bytes,
            c.instructions,
            c.branches,
            c.conditional,
            c.conditional_taken,
            c.sites.len(),
            self.blocks,
            c.paths,
            self.stats
        )
    }
}

/// How a basic block ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Conditional {
        target: u64,
    },
    Jump {
        target: u64,
    },
    Call {
        target: u64,
        zero_displacement: bool,
    },
    IndirectJump,
    IndirectCall,
    Return,
    Syscall,
    /// The walk cannot follow the instruction at the exit address (invalid bytes, a far transfer, an
    /// exception such as `ud2`, a direct branch out of the code, the end of a section): it does not
    /// execute, and tracing stops just before it.
    Stop,
}

const UNKNOWN: u32 = u32::MAX;

/// One cache line each: the walk is bound by memory latency, as a decoder on the same trace is.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Block {
    start: u64,
    /// Instructions before the exit instruction.
    straight: u32,
    exit_ip: u64,
    exit_len: u8,
    exit: Exit,
    /// Successor blocks once known: [taken or target, fall-through].
    next: [u32; 2],
    /// Taken probability of a conditional exit, in 16ths.
    bias: u8,
    executed: u64,
    taken: u64,
}

impl Block {
    fn end(&self) -> u64 {
        self.exit_ip + u64::from(self.exit_len)
    }
}

/// Hashes code addresses with one multiply (SipHash costs more than the rest of a block's walk).
#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type BuildAddressHasher = std::hash::BuildHasherDefault<AddressHasher>;

/// SplitMix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The control-flow graph walk.
struct Walker<'a> {
    code: &'a [u8],
    image: &'a CodeImage,
    /// Load address minus link-time address.
    bias: u64,
    seed: u64,
    blocks: Vec<Block>,
    by_start: HashMap<u64, u32, BuildAddressHasher>,
    /// Run-time function starts.
    functions: Vec<u64>,
    /// Addresses just after the call instructions decoded so far.
    return_sites: Vec<u64>,
    /// The block of each function start, once decoded.
    function_blocks: Vec<u32>,
    rng: Rng,
    /// The modelled call stack: return addresses and their blocks.
    stack: Vec<(u64, u32)>,
    /// Address ranges executed since the last packet-producing branch.
    stretch: Vec<(u64, u64)>,
    counts: Counts,
}

impl<'a> Walker<'a> {
    fn new(code: &'a [u8], image: &'a CodeImage, bias: u64, seed: u64) -> Self {
        Walker {
            code,
            image,
            bias,
            seed,
            blocks: Vec::new(),
            by_start: HashMap::default(),
            functions: image.function_starts.iter().map(|&a| a + bias).collect(),
            return_sites: Vec::new(),
            function_blocks: vec![UNKNOWN; image.function_starts.len()],
            rng: Rng(seed),
            stack: Vec::new(),
            stretch: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The executable section holding run-time address `ip`: its bytes from `ip` on.
    fn code_at(&self, ip: u64) -> Option<&'a [u8]> {
        let vaddr = ip.wrapping_sub(self.bias);
        let sections = &self.image.exec_sections;
        let i = sections
            .partition_point(|s| s.addr <= vaddr)
            .checked_sub(1)?;
        let s = &sections[i];
        if !s.contains(vaddr) {
            return None;
        }
        let from = (s.offset + (vaddr - s.addr)) as usize;
        let to = (s.offset + s.size) as usize;
        Some(&self.code[from..to])
    }

    fn in_code(&self, ip: u64) -> bool {
        self.code_at(ip).is_some()
    }

    /// Decodes the basic block at `start`.
    fn decode_block(&mut self, start: u64) -> Block {
        let bytes = self.code_at(start).unwrap_or(&[]);
        let mut decoder = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
        let mut straight = 0u32;
        let (exit_ip, exit_len, exit) = loop {
            let ip = decoder.ip();
            if !decoder.can_decode() {
                break (ip, 0, Exit::Stop);
            }
            let instr = decoder.decode();
            if instr.is_invalid() || instr.flow_control() == FlowControl::Exception {
                break (ip, 0, Exit::Stop);
            }
            let len = instr.len() as u8;
            let followable = |t: u64| self.in_code(t);
            let exit = match insn::classify(&instr) {
                Kind::Other => {
                    straight += 1;
                    continue;
                }
                Kind::Conditional => {
                    let target = instr.near_branch_target();
                    if followable(target) {
                        Exit::Conditional { target }
                    } else {
                        Exit::Stop
                    }
                }
                Kind::DirectJump => {
                    let target = instr.near_branch_target();
                    if followable(target) {
                        Exit::Jump { target }
                    } else {
                        Exit::Stop
                    }
                }
                Kind::DirectCall { zero_displacement } => {
                    let target = instr.near_branch_target();
                    if followable(target) {
                        Exit::Call {
                            target,
                            zero_displacement,
                        }
                    } else {
                        Exit::Stop
                    }
                }
                Kind::IndirectJump => Exit::IndirectJump,
                Kind::IndirectCall => Exit::IndirectCall,
                Kind::Return => Exit::Return,
                Kind::Syscall => Exit::Syscall,
                Kind::Far => Exit::Stop,
            };
            break (ip, if exit == Exit::Stop { 0 } else { len }, exit);
        };
        if matches!(exit, Exit::Call { .. } | Exit::IndirectCall) {
            self.return_sites.push(exit_ip + u64::from(exit_len));
        }
        // Each branch's own bias, from its address and the seed: mostly one-sided, as real branches are.
        const BIASES: [u8; 8] = [1, 2, 4, 8, 8, 12, 14, 15];
        let h = Rng(exit_ip ^ self.seed.rotate_left(17)).next();
        Block {
            start,
            straight,
            exit_ip,
            exit_len,
            exit,
            next: [UNKNOWN; 2],
            bias: BIASES[(h & 7) as usize],
            executed: 0,
            taken: 0,
        }
    }

    fn block_at(&mut self, start: u64) -> u32 {
        if let Some(&i) = self.by_start.get(&start) {
            return i;
        }
        let block = self.decode_block(start);
        let i = self.blocks.len() as u32;
        self.blocks.push(block);
        self.by_start.insert(start, i);
        i
    }

    /// The successor in `slot` of block `b`, which goes to `target` there.
    fn successor(&mut self, b: u32, slot: usize, target: u64) -> u32 {
        let known = self.blocks[b as usize].next[slot];
        if known != UNKNOWN {
            return known;
        }
        let n = self.block_at(target);
        self.blocks[b as usize].next[slot] = n;
        n
    }

    /// Asks the CPU to bring block `b` (if known) into the cache.
    #[inline]
    fn prefetch(&self, b: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(block) = self.blocks.get(b as usize) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch only hints the cache; it never faults and changes no memory, and the
            // pointer comes from a live reference. SSE, which it needs, is part of x86-64.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(block).cast());
            }
        }
    }

    /// The block of a function start chosen at random.
    fn random_function(&mut self) -> u32 {
        let i = self.rng.below(self.functions.len() as u64) as usize;
        if self.function_blocks[i] == UNKNOWN {
            self.function_blocks[i] = self.block_at(self.functions[i]);
        }
        self.function_blocks[i]
    }

    fn executed_since_packet(&self, ip: u64) -> bool {
        self.stretch.iter().any(|&(s, e)| (s..e).contains(&ip))
    }

    /// Counts block `b` as executed, with its exit (taken or not).
    fn commit(&mut self, b: u32, taken: bool) {
        let blk = &mut self.blocks[b as usize];
        blk.executed += 1;
        blk.taken += u64::from(taken);
        self.counts.instructions += u64::from(blk.straight) + 1;
        self.counts.branches += 1;
        if let Exit::Conditional { .. } = blk.exit {
            self.counts.conditional += 1;
            self.counts.conditional_taken += u64::from(taken);
        }
    }

    /// Walks until `stream` has written `size` bytes, handing each piece of at least `piece` bytes to
    /// `emit`.
    fn walk(
        &mut self,
        stream: &mut Stream,
        size: u64,
        piece: usize,
        emit: &mut dyn FnMut(&mut Stream) -> std::io::Result<u64>,
    ) -> std::io::Result<()> {
        let mut written = 0u64;
        let mut current: Option<u32> = None;
        // Instructions left before the current path ends anyway (variety, and no endless regions).
        let mut budget: i64 = 0;
        while written + stream.pending() as u64 <= size {
            if stream.pending() >= piece {
                written += emit(stream)?;
            }
            let b = match current {
                Some(b) => b,
                None => {
                    self.stack.clear();
                    self.stretch.clear();
                    budget = 1000 + self.rng.below(200_000) as i64;
                    self.random_function()
                }
            };
            let blk = self.blocks[b as usize];
            // Fetch the likely next blocks while this one is walked and encoded.
            for n in blk.next {
                self.prefetch(n);
            }
            if blk.exit == Exit::Return {
                if let Some(&(_, n)) = self.stack.last() {
                    self.prefetch(n);
                }
            }
            let kind = |exit: Exit| match exit {
                Exit::Conditional { .. } => Kind::Conditional,
                Exit::Jump { .. } => Kind::DirectJump,
                Exit::Call {
                    zero_displacement, ..
                } => Kind::DirectCall { zero_displacement },
                Exit::IndirectJump => Kind::IndirectJump,
                Exit::IndirectCall => Kind::IndirectCall,
                Exit::Return => Kind::Return,
                Exit::Syscall => Kind::Syscall,
                Exit::Stop => Kind::Far,
            };
            let calls = matches!(blk.exit, Exit::Call { .. } | Exit::IndirectCall);
            // Ending here, before the block, is exact: its start has not run since the last packet.
            let end_before_block = budget <= 0
                || (calls && self.stack.len() >= MAX_CALL_DEPTH)
                || (blk.exit == Exit::Stop && self.executed_since_packet(blk.exit_ip));
            if end_before_block {
                stream.stop_before(blk.start);
                current = None;
                continue;
            }
            budget -= i64::from(blk.straight) + 1;
            let fallthrough = blk.end();
            match blk.exit {
                Exit::Stop => {
                    self.counts.instructions += u64::from(blk.straight);
                    stream.straight(blk.start, u64::from(blk.straight));
                    stream.stop_before(blk.exit_ip);
                    current = None;
                }
                Exit::Conditional { target } => {
                    let taken = self.rng.below(16) < u64::from(blk.bias);
                    self.commit(b, taken);
                    let next = if taken { target } else { fallthrough };
                    stream.straight(blk.start, u64::from(blk.straight));
                    stream.branch(blk.exit_ip, blk.exit_len, Kind::Conditional, next);
                    self.stretch.clear();
                    current = Some(self.successor(b, usize::from(!taken), next));
                }
                Exit::Jump { target } | Exit::Call { target, .. } => {
                    // No packet: the decoder follows it. Coming back to code run since the last packet
                    // would be a loop without packets; end the path before this block instead.
                    if self.executed_since_packet(target)
                        || (blk.start..fallthrough).contains(&target)
                    {
                        stream.stop_before(blk.start);
                        current = None;
                        continue;
                    }
                    self.commit(b, true);
                    stream.straight(blk.start, u64::from(blk.straight));
                    stream.branch(blk.exit_ip, blk.exit_len, kind(blk.exit), target);
                    self.stretch.push((blk.start, fallthrough));
                    if calls {
                        let back = self.successor(b, 1, fallthrough);
                        self.stack.push((fallthrough, back));
                    }
                    current = Some(self.successor(b, 0, target));
                }
                Exit::IndirectJump | Exit::IndirectCall | Exit::Return => {
                    // The target and its block.
                    let target = match blk.exit {
                        Exit::Return => self.stack.pop().or_else(|| {
                            (!self.return_sites.is_empty()).then(|| {
                                let n = self.return_sites.len() as u64;
                                let site = self.return_sites[self.rng.below(n) as usize];
                                (site, self.block_at(site))
                            })
                        }),
                        _ if self.rng.below(INDIRECT_STOP_ONE_IN) == 0 => None,
                        _ => {
                            let next = self.random_function();
                            Some((self.blocks[next as usize].start, next))
                        }
                    };
                    self.commit(b, true);
                    stream.straight(blk.start, u64::from(blk.straight));
                    match target {
                        Some((target, next)) => {
                            stream.branch(blk.exit_ip, blk.exit_len, kind(blk.exit), target);
                            self.stretch.clear();
                            if calls {
                                let back = self.successor(b, 1, fallthrough);
                                self.stack.push((fallthrough, back));
                            }
                            current = Some(next);
                        }
                        None => {
                            stream.branch_then_stop(blk.exit_ip, blk.exit_len, kind(blk.exit));
                            current = None;
                        }
                    }
                }
                Exit::Syscall => {
                    self.commit(b, true);
                    stream.straight(blk.start, u64::from(blk.straight));
                    stream.branch_then_stop(blk.exit_ip, blk.exit_len, Kind::Syscall);
                    current = None;
                }
            }
        }
        // The trace ends before the next block: without that FUP a decoder could not know the
        // instructions run since the last packet-producing branch.
        if let Some(b) = current {
            stream.stop_before(self.blocks[b as usize].start);
        }
        Ok(())
    }

    /// The per-site counts, merged by exit address (blocks entered at different starts share exits).
    fn sites(&self) -> Vec<(u64, u64, u64)> {
        let mut by_ip: HashMap<u64, (u64, u64)> = HashMap::new();
        for b in self.blocks.iter().filter(|b| b.executed > 0) {
            let e = by_ip.entry(b.exit_ip).or_default();
            e.0 += b.executed;
            e.1 += b.taken;
        }
        let mut sites: Vec<(u64, u64, u64)> =
            by_ip.into_iter().map(|(ip, (e, t))| (ip, e, t)).collect();
        sites.sort_unstable();
        sites
    }
}

/// Generates a bulk recording into `dir`: perf.data, the build-id cache and `expected-counts.bin`.
pub fn generate(dir: &Path, opts: &Options) -> Result<Summary, BulkError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BulkError::Io { path, source }
    };
    let binary_path = std::fs::canonicalize(&opts.binary).map_err(io_err(&opts.binary))?;
    let binary = binary_path.to_string_lossy().into_owned();
    let code = std::fs::read(&binary_path).map_err(io_err(&binary_path))?;
    let image = elf::parse(&code, &binary)?;
    if image.function_starts.is_empty() {
        return Err(BulkError::NoFunctions(binary));
    }
    let build_id = buildid::read(&code, &binary)?;
    let meta = std::fs::metadata(&binary_path).map_err(io_err(&binary_path))?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    buildid::store(dir, &build_id, &code)?;

    let load_bias = if image.position_independent {
        PIE_BASE
    } else {
        0
    };
    let cfg = &opts.encode;
    let tc = TimeConv::DEFAULT;
    let pmu_type = recording::intel_pt_pmu_type();
    let pt_id = 1;
    let mut pd = PerfData::new(vec![recording::per_thread_attr(cfg, pmu_type, pt_id)]);
    pd.auxtrace_info(&recording::auxtrace_priv(&tc, cfg, false, pmu_type));
    pd.time_conv(tc.shift, tc.mult, tc.zero, true);
    let sid = |tsc: u64| SampleId {
        pid: PID,
        tid: PID,
        time: tc.perf_time(tsc),
        cpu: 0,
        id: pt_id,
    };
    let comm = binary_path
        .file_name()
        .map_or("bulk".into(), |n| n.to_string_lossy().into_owned());
    let start = sid(cfg.tsc_start);
    pd.comm(PID, PID, &comm, true, &start);
    {
        use std::os::unix::fs::MetadataExt;
        for seg in &image.exec_segments {
            let page = |a: u64| a & !0xfff;
            let map = Mapping {
                start: page(seg.vaddr) + load_bias,
                end: (seg.vaddr + seg.memsz).next_multiple_of(0x1000) + load_bias,
                pgoff: page(seg.offset),
                dev_major: libc::major(meta.dev()),
                dev_minor: libc::minor(meta.dev()),
                inode: meta.ino(),
                prot: 5,  // PROT_READ | PROT_EXEC
                flags: 2, // MAP_PRIVATE
                path: binary.clone(),
            };
            pd.mmap2(PID, PID, &map, &start);
        }
    }
    pd.itrace_start(PID, PID, &start);
    pd.add_build_id(crate::perfdata::BuildIdEntry {
        pid: -1,
        misc: crate::perfdata::misc::USER,
        build_id: build_id.clone(),
        filename: binary.clone(),
    });

    let perf_data = dir.join(PERF_DATA);
    let mut file = PerfDataFile::create(&perf_data, pd).map_err(io_err(&perf_data))?;
    file.flush_records().map_err(io_err(&perf_data))?;
    let mut trace_bytes = 0u64;
    let mut buffers = 0u64;
    let mut put = |file: &mut PerfDataFile, bytes: &[u8], tsc: u64| -> std::io::Result<u64> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let pd = file.records();
        pd.aux(trace_bytes, bytes.len() as u64, 0, &sid(tsc));
        pd.auxtrace(bytes, trace_bytes, tsc, 0, PID, -1);
        file.flush_records()?;
        trace_bytes += bytes.len() as u64;
        buffers += 1;
        Ok(bytes.len() as u64)
    };

    let mut walker = Walker::new(&code, &image, load_bias, opts.seed);
    let mut stream = Stream::new(cfg);
    walker
        .walk(&mut stream, opts.size, opts.aux_buffer.max(1), &mut |s| {
            let tsc = s.tsc();
            put(&mut file, &s.take(), tsc)
        })
        .map_err(io_err(&perf_data))?;
    let tsc = stream.tsc();
    let last = stream.finish();
    put(&mut file, &last, tsc).map_err(io_err(&perf_data))?;
    file.records()
        .task(true, PID, PID, PID, PID, &sid(stream.tsc()));
    let file_bytes = file.finish().map_err(io_err(&perf_data))?;

    let stats = stream.stats();
    let mut counts = std::mem::take(&mut walker.counts);
    counts.paths = stats.pge;
    counts.sites = walker.sites();
    let counts_path = dir.join(COUNTS);
    std::fs::File::create(&counts_path)
        .and_then(|mut f| f.write_all(&counts.to_bytes()))
        .map_err(io_err(&counts_path))?;
    Ok(Summary {
        perf_data,
        binary,
        build_id: buildid::hex(&build_id),
        trace_bytes,
        file_bytes,
        buffers,
        blocks: walker.blocks.iter().filter(|b| b.executed > 0).count(),
        counts,
        stats,
    })
}

/// How perf's decoding of a bulk recording compares with its expected counts.
#[derive(Debug)]
pub struct BulkVerdict {
    pub expected_instructions: u64,
    pub decoded_instructions: u64,
    /// perf's decoder errors (`--itrace=e`): there must be none.
    pub errors: Vec<String>,
    /// Branch sites compared.
    pub sites: usize,
    /// Sites whose counts differ: (address, expected executed, perf's executed, expected taken, perf's
    /// taken branch samples).
    pub mismatches: Vec<(u64, u64, u64, u64, u64)>,
}

impl BulkVerdict {
    pub fn is_exact(&self) -> bool {
        self.errors.is_empty()
            && self.mismatches.is_empty()
            && self.expected_instructions == self.decoded_instructions
    }
}

impl std::fmt::Display for BulkVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {} instructions, perf decoded {}; {} decoder errors; {} branch sites compared, {} differ",
            self.expected_instructions,
            self.decoded_instructions,
            self.errors.len(),
            self.sites,
            self.mismatches.len()
        )?;
        for (ip, e, d, et, dt) in self.mismatches.iter().take(5) {
            write!(
                f,
                "\n  {ip:#x}: executed {e} (perf {d}), taken {et} (perf {dt})"
            )?;
        }
        for e in self.errors.iter().take(5) {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Runs `perf --buildid-dir DIR script -i DIR/perf.data ARGS`, handing each output line to `line`
/// without holding the output (it may be gigabytes).
fn perf_script_lines(
    dir: &Path,
    args: &[&str],
    line: &mut dyn FnMut(&str),
) -> Result<(), crate::check::CheckError> {
    use crate::check::CheckError;
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = crate::check::perf_script_command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(CheckError::Spawn)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut reader = std::io::BufReader::with_capacity(1 << 20, stdout);
    let mut buf = String::new();
    loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) => break,
            Ok(_) => line(buf.trim_end()),
            Err(e) => return Err(CheckError::Spawn(e)),
        }
    }
    let out = child.wait_with_output().map_err(CheckError::Spawn)?;
    crate::check::perf_succeeded(&out)
}

/// Decodes the bulk recording in `dir` with perf and compares it with `expected-counts.bin`: the
/// instruction total (`--itrace=i1i`), every branch site's executions (its `i1i` lines) and taken
/// count (its branch samples, `--itrace=b`, less the asynchronous trace ends), and no decoder errors.
pub fn check(dir: &Path) -> Result<BulkVerdict, crate::check::CheckError> {
    use crate::check::CheckError;
    let counts = Counts::read(dir).map_err(|source| CheckError::Io {
        path: dir.join(COUNTS),
        source,
    })?;
    let errors = crate::check::perf_errors(dir)?;
    let mut decoded: HashMap<u64, (u64, u64)> =
        counts.sites.iter().map(|s| (s.0, (0, 0))).collect();
    let mut total = 0u64;
    let mut bad_lines = Vec::new();
    perf_script_lines(
        dir,
        &["--itrace=i1i", "-F", "ip"],
        &mut |l| match u64::from_str_radix(l.trim(), 16) {
            Ok(ip) => {
                total += 1;
                if let Some(c) = decoded.get_mut(&ip) {
                    c.0 += 1;
                }
            }
            Err(_) if l.trim().is_empty() => {}
            Err(_) => bad_lines.push(l.to_string()),
        },
    )?;
    perf_script_lines(dir, &["--itrace=b", "-F", "flags,ip"], &mut |l| {
        if l.contains("async") || l.contains("tr strt") {
            return;
        }
        let ip = l
            .split_whitespace()
            .last()
            .and_then(|t| u64::from_str_radix(t, 16).ok());
        if let Some(c) = ip.and_then(|ip| decoded.get_mut(&ip)) {
            c.1 += 1;
        }
    })?;
    if let Some(l) = bad_lines.first() {
        return Err(CheckError::Parse(l.clone()));
    }
    let mismatches = counts
        .sites
        .iter()
        .filter_map(|&(ip, executed, taken)| {
            let (e, t) = decoded[&ip];
            (e != executed || t != taken).then_some((ip, executed, e, taken, t))
        })
        .collect();
    Ok(BulkVerdict {
        expected_instructions: counts.instructions,
        decoded_instructions: total,
        errors,
        sites: counts.sites.len(),
        mismatches,
    })
}

/// Parses a size: bytes, or a number with K, M or G (binary multiples; an optional trailing B or iB).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 10),
        (i, 'm' | 'M') => (&t[..i], 20),
        (i, 'g' | 'G') => (&t[..i], 30),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_fills_one_cache_line() {
        assert_eq!(std::mem::size_of::<Block>(), 64);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn counts_round_trip() {
        let c = Counts {
            instructions: 10,
            branches: 4,
            conditional: 2,
            conditional_taken: 1,
            paths: 1,
            sites: vec![(0x1000, 2, 1), (0x2000, 2, 2)],
        };
        let b = c.to_bytes();
        assert_eq!(b.len(), 64 + 48);
        assert_eq!(Counts::from_bytes(&b), Some(c));
        assert_eq!(Counts::from_bytes(&b[..70]), None);
    }

    #[test]
    fn walk_over_own_binary_is_varied_and_counted() {
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("ptlens-bulk-unit-{}", std::process::id()));
        let mut opts = Options::new(&exe, 256 << 10);
        opts.aux_buffer = 64 << 10;
        let s = match generate(&dir, &opts) {
            Ok(s) => s,
            // A test binary built without a build-id cannot go into the cache.
            Err(BulkError::BuildId(_)) => return,
            Err(e) => panic!("{e}"),
        };
        assert!(s.trace_bytes >= 256 << 10, "{s}");
        assert!(s.buffers >= 4, "{s}");
        assert!(s.blocks > 1000, "{s}");
        let c = Counts::read(&dir).unwrap();
        assert_eq!(c, s.counts);
        let executed: u64 = c.sites.iter().map(|s| s.1).sum();
        assert_eq!(executed, c.branches);
        assert!(c.conditional_taken > 0 && c.conditional_taken < c.conditional);
        assert!(
            s.stats.compressed_returns > 0 && s.stats.tips > 0 && s.stats.pge > 1,
            "{s}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
