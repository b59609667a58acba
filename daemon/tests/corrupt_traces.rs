//! Damaged recordings through the whole pipeline (`ptlens branches` and `ptlens lines`, the
//! built binary): every sample in `samples/*/perf.data` is copied and damaged in four ways:
//!
//! - `bad`: a packet boundary inside an AUXTRACE payload overwritten with `02 ff`, a packet no
//!   decoder knows (seeded positions). Expected: exit 0, the events before the damage exactly
//!   the undamaged sample's, and an error event.
//! - `flip`: bytes XORed at seeded positions anywhere in a payload. Intel PT has no checksums,
//!   so a flip may decode as other valid packets and misdecode silently until the code and the
//!   trace disagree; only "no panic, a clean exit" holds without perf.
//! - `short`: the last payload cut in half, its record's size rewritten and the file's later
//!   offsets (data size, feature sections) moved so the file is otherwise well formed.
//!   Expected: each thread's events before the cut are the undamaged sample's.
//! - `cut`: the file cut in the middle of the last payload (as a full disk leaves it).
//!
//! Where perf runs (and agrees with ptlens on the undamaged sample), it decodes the same
//! damaged copies and the whole streams are compared, every event to the end (thread, flags,
//! addresses, error codes and IPs; not times): ptlens decodes damaged trace as perf 6.1 does
//! (a bad packet is code 3 and decoding goes on one byte later; a mismatch or missing code
//! sends it to the next IP packet, with a `tr strt` there, see `decode/queue.rs`). Asserted
//! equal: every `short` copy, and every `bad` copy of the recordings of one thread. Compared
//! and printed, not asserted (the test's last line counts them): `bad` copies of the
//! multi-thread recordings (see `bad_equals_perf`) and `flip` copies (see `FLIPS_EQUAL_PERF`).
//! PTLENS_CORRUPT_SEEDS=N runs N seeds of each instead; PTLENS_KEEP_DAMAGED=DIR keeps the
//! copies.
//!
//! On a cut file `perf script` dies of SIGBUS (see ARCHITECTURE.md); ptlens refuses the file
//! with one error naming it and the record's offset.

#[path = "support/branch_stream.rs"]
mod branch_stream;
#[path = "perf_support.rs"]
mod perf_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use branch_stream::{first_difference, parse_perf, parse_ptlens, Event, PERF_SCRIPT_ARGS};
use perf_support::samples;

/// An AUXTRACE record: where the record starts, where its payload starts, its payload size.
#[derive(Debug, Clone, Copy)]
struct Aux {
    record: usize,
    payload: usize,
    size: usize,
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
}

fn put_u64(data: &mut [u8], at: usize, v: u64) {
    data[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The data section's (offset, size) of a little-endian perf.data file.
fn data_section(data: &[u8]) -> (usize, usize) {
    assert_eq!(
        &data[..8],
        b"PERFILE2",
        "samples are little-endian file-mode perf.data"
    );
    (u64_at(data, 40) as usize, u64_at(data, 48) as usize)
}

/// The AUXTRACE records (type 71) of the data section; their payloads follow the 48-byte
/// record and are not counted in its header size.
fn aux_records(data: &[u8]) -> Vec<Aux> {
    let (start, size) = data_section(data);
    let mut out = Vec::new();
    let mut at = start;
    while at + 8 <= start + size {
        let kind = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        let len = usize::from(u16::from_le_bytes(data[at + 6..at + 8].try_into().unwrap()));
        assert!(len >= 8, "record at {at}");
        let mut next = at + len;
        if kind == 71 {
            let payload = u64_at(data, at + 8) as usize;
            out.push(Aux {
                record: at,
                payload: next,
                size: payload,
            });
            next += payload;
        }
        at = next;
    }
    out
}

/// Offsets of the packets of a payload, as the packet layer splits it (after its first PSB).
fn packet_starts(payload: &[u8]) -> Vec<usize> {
    let from = ptlens::pt::packets::next_psb(payload, 0).unwrap_or(0);
    let mut packets = ptlens::pt::packets::Packets::new(&payload[from..]);
    let mut starts = Vec::new();
    while let Some(Ok((offset, _))) = packets.next() {
        starts.push(from + offset);
    }
    starts
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Asserts that `index::build` (PSB segments in parallel, a chunk per segment, two threads)
/// counts the damaged recording `file` exactly as the decode in order does (it decodes a
/// damaged recording again in order: perf's recovery runs across PSBs).
fn parallel_counts_as_sequential(file: &Path, buildid_dir: &Path, what: &str) {
    use ptlens::decode::{DecodeOptions, ParallelOptions};
    let data = ptlens::perf::PerfData::open(file).unwrap();
    let recording = data.recording().unwrap();
    let model = ptlens::sideband::Model::build(&recording);
    let binaries = ptlens::debuginfo::BinaryCache::new(
        ptlens::debuginfo::SearchPaths::new().with_buildid_dir(buildid_dir),
    );
    let options = DecodeOptions::default();
    let mut builder = ptlens::index::IndexBuilder::new();
    let Ok(_) = ptlens::decode::decode(&recording, &model, &binaries, &options, &mut builder)
    else {
        return;
    };
    let whole = builder.finish();
    let parallel = ParallelOptions {
        jobs: 2,
        chunk_bytes: Some(1),
    };
    let (index, _) =
        ptlens::index::build(&recording, &model, &binaries, &options, &parallel).unwrap();
    assert_eq!(
        index.threads, whole.threads,
        "{what}: parallel counts per thread"
    );
    assert_eq!(index, whole, "{what}: parallel index");
}

fn ptlens(args: &[&str], file: &Path, buildid_dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ptlens"))
        .args(args)
        .arg(file)
        .arg("--buildid-dir")
        .arg(buildid_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ptlens")
}

/// Runs `branches` and, with `with_lines`, `lines` on `file` (side by side): no panic, and either
/// success or an error line naming the file and an offset. Returns the branch events when
/// `branches` succeeded.
fn run_clean(file: &Path, buildid_dir: &Path, with_lines: bool) -> Option<Vec<Event>> {
    let all = [
        &["branches", "--format", "jsonl"][..],
        &["lines", "--format", "json"][..],
    ];
    // `lines` reads the DWARF, a second or two per run in a debug build: it runs on one copy
    // of each kind of damage, which keeps the test near its 20 s budget.
    let commands = &all[..if with_lines { 2 } else { 1 }];
    let children: Vec<_> = commands
        .iter()
        .map(|args| ptlens(args, file, buildid_dir))
        .collect();
    let mut events = None;
    for (args, child) in commands.iter().zip(children) {
        let out: Output = child.wait_with_output().expect("wait for ptlens");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && out.status.code().is_some(),
            "{args:?} on {}: {stderr}",
            file.display()
        );
        if out.status.success() {
            if args[0] == "branches" {
                // Compared as perf's would be without time: thread, CPU, flags, from, to.
                events = Some(
                    parse_ptlens(&String::from_utf8_lossy(&out.stdout))
                        .iter()
                        .map(Event::timeless)
                        .collect(),
                );
            } else {
                let json = String::from_utf8_lossy(&out.stdout);
                assert!(json.contains("\"schema\""), "lines json: {json}");
            }
        } else {
            let error = stderr.lines().rfind(|l| !l.is_empty()).unwrap_or("");
            assert!(
                error.contains(&*file.to_string_lossy()) && error.contains("offset"),
                "{args:?} failed without naming the file and offset: {stderr}"
            );
        }
    }
    events
}

/// Starts `perf script` on `file`, to run beside ptlens.
fn perf_child(file: &Path, buildid_dir: &Path) -> Option<std::process::Child> {
    Command::new("perf")
        .arg("--buildid-dir")
        .arg(buildid_dir)
        .args(["script", "-i"])
        .arg(file)
        .args(PERF_SCRIPT_ARGS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

/// perf's events, thread by thread's fields (no CPU, no time), when it succeeded.
fn perf_wait(child: Option<std::process::Child>) -> Option<Vec<Event>> {
    let out = child?.wait_with_output().ok()?;
    out.status.success().then(|| {
        parse_perf(&String::from_utf8_lossy(&out.stdout))
            .iter()
            .map(Event::timeless)
            .collect()
    })
}

fn perf_events(file: &Path, buildid_dir: &Path) -> Option<Vec<Event>> {
    perf_wait(perf_child(file, buildid_dir))
}

/// Compares ptlens's stream on a damaged copy with perf's, the whole stream: asserted equal
/// when `must_equal`, else a difference is printed. Returns whether they are equal.
fn against_perf(ours: &[Event], theirs: Option<Vec<Event>>, what: &str, must_equal: bool) -> bool {
    let Some(theirs) = theirs else {
        eprintln!("{what}: perf script failed on the copy");
        assert!(!must_equal, "{what}: perf script failed on the copy");
        return false;
    };
    match first_difference(&theirs, ours) {
        None => true,
        Some(diff) => {
            assert!(!must_equal, "{what}: ptlens differs from perf {diff}");
            eprintln!("{what}: ptlens differs from perf (reported, not asserted) {diff}");
            false
        }
    }
}

/// Writes `data` as `dir/NAME/perf.data`.
fn write_copy(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let file = sub.join("perf.data");
    std::fs::write(&file, data).unwrap();
    file
}

/// Removes `cut` bytes at `at` in the data section and moves what the header locates after it
/// (the data size, the feature section table's offsets), so the file stays well formed.
fn remove_in_data(data: &mut Vec<u8>, at: usize, cut: usize) {
    let (start, size) = data_section(data);
    data.drain(at..at + cut);
    put_u64(data, 48, (size - cut) as u64);
    // The feature table follows the data section: one (offset, size) per feature bit set.
    let features: u32 = (0..4).map(|i| u64_at(data, 72 + 8 * i).count_ones()).sum();
    let table = start + size - cut;
    for i in 0..features as usize {
        let entry = table + 16 * i;
        let offset = u64_at(data, entry);
        if offset as usize > at {
            put_u64(data, entry, offset - cut as u64);
        }
    }
}

/// The undamaged events of the sample, the reference.
struct Reference {
    events: Vec<Event>,
}

impl Reference {
    /// The damaged stream equals the reference before its first error, and the reference
    /// holds as many events there (the damage does not make earlier events vanish).
    fn check_prefix(&self, damaged: &[Event], what: &str) {
        Self::check_prefix_of(damaged, &self.events, what);
    }

    /// As `check_prefix`, thread by thread on each CPU: where a queue ends early (a short
    /// payload), the other queues' later events take its place in the global order, and a
    /// thread that also ran on another CPU goes on there after what the short queue lost.
    fn check_prefix_per_thread(&self, damaged: &[Event], what: &str) {
        let mut runs: Vec<(i32, i32)> = self.events.iter().map(|e| (e.tid(), e.cpu())).collect();
        runs.sort_unstable();
        runs.dedup();
        for (t, c) in runs {
            let of = |events: &[Event]| -> Vec<Event> {
                events
                    .iter()
                    .filter(|e| e.tid() == t && e.cpu() == c)
                    .cloned()
                    .collect()
            };
            Self::check_prefix_of(
                &of(damaged),
                &of(&self.events),
                &format!("{what}, tid {t} on CPU {c}"),
            );
        }
    }

    fn check_prefix_of(damaged: &[Event], reference: &[Event], what: &str) {
        let first_error = damaged
            .iter()
            .position(Event::is_error)
            .unwrap_or(damaged.len());
        assert!(
            first_error <= reference.len() && damaged[..first_error] == reference[..first_error],
            "{what}: events before the first error differ from the undamaged sample's: {:?}",
            first_difference(reference, damaged)
        );
    }
}

/// Damaged copies per kind and sample (each a few hundred ms of ptlens and perf).
const BAD_SEEDS: u32 = 3;
const FLIP_SEEDS: u32 = 1;
/// Random flips are compared with perf and the differences printed, not asserted: after a
/// flip perf's instruction decoder takes bytes iced-x86 refuses (`1f` as a one-byte
/// instruction), reads code past the end of a binary's executable segment, and reports
/// MODE.TSX state in its flags, none of which ptlens does.
const FLIPS_EQUAL_PERF: bool = false;

/// `n`, or PTLENS_CORRUPT_SEEDS when set (to explore more damage locally).
fn seeds(n: u32) -> u32 {
    std::env::var("PTLENS_CORRUPT_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

/// How many damaged copies were compared with perf, and how many equalled it.
#[derive(Default)]
struct Tally {
    bad: u32,
    bad_equal: u32,
    flip: u32,
    flip_equal: u32,
    short: u32,
    short_equal: u32,
}

#[test]
fn damaged_samples_decode_up_to_the_damage_and_resume() {
    let perf = perf_support::have_perf();
    let tmp = tempfile::tempdir().unwrap();
    // PTLENS_KEEP_DAMAGED=DIR keeps the damaged copies there, to look at a difference.
    let kept = std::env::var_os("PTLENS_KEEP_DAMAGED").map(PathBuf::from);
    let tmp_path = kept.as_deref().unwrap_or(tmp.path());
    let mut tally = Tally::default();
    for dir in samples() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let buildid_dir = dir.clone();
        let original = std::fs::read(dir.join("perf.data")).unwrap();
        let aux = aux_records(&original);
        assert!(!aux.is_empty(), "{name} has trace");
        let reference = Reference {
            events: run_clean(&dir.join("perf.data"), &buildid_dir, false)
                .expect("undamaged decodes"),
        };
        // perf and ptlens agree on the undamaged stream of this sample (branches_perf.rs).
        // Bad packets in a recording of more than one thread (per-CPU queues) are compared
        // and not asserted: there the order of the queues' events after an error follows
        // perf's estimated timestamps, which ptlens approximates per block, and after a
        // switch to the idle thread (tid 0) perf fails to get code one branch earlier.
        let mut tids: Vec<i32> = reference.events.iter().map(Event::tid).collect();
        tids.sort_unstable();
        tids.dedup();
        let bad_equals_perf = tids.len() == 1;
        let perf_agrees = perf
            && perf_events(&dir.join("perf.data"), &buildid_dir).as_ref()
                == Some(&reference.events);
        let mut rng = Rng(0x5eed_0000 + name.len() as u64);

        // Bad packets at packet boundaries.
        for seed in 0..seeds(BAD_SEEDS) {
            let a = aux[rng.below(aux.len())];
            let payload = &original[a.payload..a.payload + a.size];
            let starts = packet_starts(payload);
            // Past the first PSB+ (the first few packets), so that something precedes it.
            let candidates = &starts[starts.len().min(8)..];
            let Some(&at) = candidates.get(rng.below(candidates.len())) else {
                continue;
            };
            if at + 2 > payload.len() {
                continue;
            }
            let mut data = original.clone();
            data[a.payload + at] = 0x02;
            data[a.payload + at + 1] = 0xff;
            let what = format!("{name}: bad packet at payload offset {at} (seed {seed})");
            let file = write_copy(tmp_path, &format!("{name}-bad{seed}"), &data);
            let theirs = perf_agrees.then(|| perf_child(&file, &buildid_dir));
            let events = run_clean(&file, &buildid_dir, seed == 0)
                .unwrap_or_else(|| panic!("{what}: failed"));
            assert!(
                events.iter().any(Event::is_error),
                "{what}: no error reported"
            );
            reference.check_prefix(&events, &what);
            if seed == 0 {
                parallel_counts_as_sequential(&file, &buildid_dir, &what);
            }
            // perf reports the damage as a bad packet (code 3) and reads on one byte later;
            // whatever that decodes to, the two must agree to the end.
            if let Some(child) = theirs {
                tally.bad += 1;
                if against_perf(&events, perf_wait(child), &what, bad_equals_perf) {
                    tally.bad_equal += 1;
                }
            }
        }

        // Random flips anywhere.
        for seed in 0..seeds(FLIP_SEEDS) {
            let mut data = original.clone();
            for _ in 0..3 {
                let a = aux[rng.below(aux.len())];
                let at = a.payload + rng.below(a.size);
                data[at] ^= 1 << rng.below(8);
            }
            let what = format!("{name}: flipped bits (seed {seed})");
            let file = write_copy(tmp_path, &format!("{name}-flip{seed}"), &data);
            let theirs = perf_agrees.then(|| perf_child(&file, &buildid_dir));
            let events = run_clean(&file, &buildid_dir, false);
            parallel_counts_as_sequential(&file, &buildid_dir, &what);
            if let (Some(events), Some(child)) = (events, theirs) {
                tally.flip += 1;
                if against_perf(&events, perf_wait(child), &what, FLIPS_EQUAL_PERF) {
                    tally.flip_equal += 1;
                }
            }
        }

        // The last payload cut in half, the file otherwise consistent.
        let last = *aux.last().unwrap();
        if last.size >= 64 {
            let keep = last.size / 2;
            let mut data = original.clone();
            put_u64(&mut data, last.record + 8, keep as u64);
            remove_in_data(&mut data, last.payload + keep, last.size - keep);
            let what = format!("{name}: last payload cut to {keep} bytes");
            let file = write_copy(tmp_path, &format!("{name}-short"), &data);
            let theirs = perf_agrees.then(|| perf_child(&file, &buildid_dir));
            let events = run_clean(&file, &buildid_dir, true).unwrap_or_else(|| panic!("{what}"));
            reference.check_prefix_per_thread(&events, &what);
            assert!(
                events.len() < reference.events.len(),
                "{what}: nothing lost"
            );
            if let Some(child) = theirs {
                tally.short += 1;
                if against_perf(&events, perf_wait(child), &what, true) {
                    tally.short_equal += 1;
                }
            }
        }

        // The file cut in the middle of the last payload. ptlens refuses such a file with
        // one error naming it and the record's offset (`run_clean` checks the line), where
        // `perf script` dies of SIGBUS reading the payload (see ARCHITECTURE.md), so there is
        // no perf stream to compare with.
        let data = &original[..last.payload + last.size / 2];
        let file = write_copy(tmp_path, &format!("{name}-cut"), data);
        run_clean(&file, &buildid_dir, true);
    }
    eprintln!(
        "equal to perf to the end: bad packets {}/{}, flips {}/{}, short payloads {}/{}",
        tally.bad_equal, tally.bad, tally.flip_equal, tally.flip, tally.short_equal, tally.short
    );
}
