//! The sideband model against the Skylake recording, the single-thread sample and a small
//! host + guest recording written here; live checks against `perf script` skip (with a printed
//! reason) when perf is missing, unless PTLENS_REQUIRE_PERF=1.

#[path = "perf_support.rs"]
mod support;

use std::process::Command;

use ptlens::perf::PerfData;
use ptlens::sideband::{GuestContext, Model, Vcpu, When};

fn model(path: &std::path::Path) -> Model {
    let data = PerfData::open(path).unwrap();
    let recording = data.recording().unwrap();
    Model::build(&recording)
}

fn skylake() -> Model {
    model(&support::skylake())
}

#[test]
fn skylake_current_threads_from_switch_and_itrace_start() {
    let m = skylake();
    assert!(m.warnings.is_empty(), "{:?}", m.warnings.examples());
    let pt = m.pt.as_ref().unwrap();
    assert!(pt.per_cpu_mmaps);
    assert_eq!(pt.have_sched_switch, 3);
    // CPU 3: `SWITCH_CPU_WIDE OUT next 1760/1760` at 641255848111, nothing before.
    assert_eq!(m.current_tid(3, 641255848110), None);
    assert_eq!(m.current_tid(3, 641255848111), Some(1760));
    assert_eq!(m.current_tid(3, 641255852546), Some(0));
    assert_eq!(m.current_tid(3, 641256031341), Some(8));
    // ITRACE_START pid 3174 at 641256844131 on CPU 3.
    assert_eq!(m.current_tid(3, 641256844131), Some(3174));
    // CPU 0: out next 3174 at 641256032286, out next 0 at 641256116601.
    assert_eq!(m.current_tid(0, 641256032285), None);
    assert_eq!(m.current_tid(0, 641256032286), Some(3174));
    assert_eq!(m.current_tid(0, 641256116600), Some(3174));
    assert_eq!(m.current_tid(0, 641256116601), Some(0));
    let echo = m.current_thread(0, 641256032286).unwrap();
    assert_eq!((echo.pid, echo.tid), (3174, 3174));
    // The COMM before the exec is perf's own; the exec renames it.
    let before = m.instant(641256847597u64);
    let after = m.instant(641256847598u64);
    assert_eq!(echo.comm_at(before), Some("perf"));
    assert_eq!(echo.comm_at(after), Some("echo"));
    assert_eq!(echo.exit, Some(641258039091));
    assert!(m.host().thread(3174, before).unwrap().comms()[1].exec);
}

#[test]
fn skylake_maps_follow_the_mmap_records() {
    let m = skylake();
    let coreutils = 0x5cba63156000u64;
    // MMAP2 of /usr/bin/coreutils at 641256876396.
    assert!(m.map_at(0, 3174, coreutils + 0x123, 641256876395).is_none());
    let map = m.map_at(0, 3174, coreutils + 0x123, 641256876396).unwrap();
    assert_eq!(&*map.filename, "/usr/bin/coreutils");
    assert_eq!((map.start, map.len, map.pgoff), (coreutils, 0x125000, 0));
    assert_eq!(map.file_offset(coreutils + 0x123), 0x123);
    let inode = map.inode.unwrap();
    assert_eq!((inode.maj, inode.min, inode.ino), (0xb3, 5, 26037));
    assert_eq!(map.prot, Some(5));
    assert!(m.map_at(0, 3174, coreutils + 0x125000, u64::MAX).is_none());
    // libc comes later.
    let libc = 0x7fb36c8bb000u64;
    assert!(m.map_at(0, 3174, libc, 641257237772).is_none());
    assert_eq!(
        &*m.map_at(0, 3174, libc + 0x3aafff, 641257237773)
            .unwrap()
            .filename,
        "/lib64/libc-2.23.so"
    );
    // Kernel: the synthesized MMAPs at time 0, with build ids from the BUILD_ID feature.
    let kernel = m
        .map_at(0, 3174, 0xffffffffb9600000 + 0x1234, 0u64)
        .unwrap();
    assert_eq!(&*kernel.filename, "[kernel.kallsyms]_text");
    assert_eq!(kernel.file_offset(0xffffffffb9601234), 0xffffffffb9601234);
    assert_eq!(
        kernel.build_id.unwrap().to_string(),
        "672679ceaecf17b7a879e56c56802afc568aa242"
    );
    let rfcomm = m.map_at(0, -1, 0xffffffffc0676000 + 8, 0u64).unwrap();
    assert_eq!(
        rfcomm.build_id.unwrap().to_string(),
        "74fe22dda1e9e3256d3f95d2655970cbb98f2061"
    );
    // Every kernel MMAP is found at its start and not one byte below (they do not overlap).
    let kernel_maps: Vec<_> = m.host().kernel_space().maps().cloned().collect();
    assert_eq!(kernel_maps.len(), 56);
    for map in &kernel_maps {
        assert_eq!(m.map_at(0, -1, map.start, u64::MAX), Some(map));
        assert_eq!(m.map_at(0, -1, map.end() - 1, u64::MAX), Some(map));
    }
}

#[test]
fn skylake_time_conversion() {
    let m = skylake();
    let tsc = m.clocks.tsc().unwrap();
    // The Skylake file's AUXTRACE_INFO and (old-layout) TIME_CONV agree.
    let tc = m.clocks.time_conv.unwrap();
    assert_eq!(
        (tc.time_shift, tc.time_mult, tc.time_zero),
        (tsc.time_shift, tsc.time_mult, tsc.time_zero)
    );
    // perf prints the first PSB of CPU 3 (its TSC packet 0xbc4cbefc32) at 641.256845844.
    assert_eq!(tsc.tsc_to_perf(0xbc4cbefc32), 641256845844);
    assert_eq!(tsc.tsc_to_perf(0xbc4cc2e7b2), 641257059924);
    // perf_to_tsc rounds down: it lands within two ticks (1.2 per ns here) of the TSC that printed as that time.
    let back = tsc.perf_to_tsc(641256845844);
    assert!(
        back <= 0xbc4cbefc32 && 0xbc4cbefc32 - back <= 2,
        "{back:#x}"
    );
    // A TSC query sees the switch out to 1760 at 641256825226 from its converted TSC on.
    let out_tsc = tsc.perf_to_tsc(641256825226);
    assert_eq!(m.current_tid(3, When::Tsc(out_tsc)), Some(1760));
    assert_eq!(m.current_tid(3, When::Tsc(out_tsc - 1)), Some(3174));
    assert_eq!(m.instant(When::Tsc(out_tsc)), m.instant(641256825226u64));
}

/// `perf script` lines like `  1760/1760  [003]   641.255849446: PERF_RECORD_SWITCH_CPU_WIDE
/// IN ...`, or the psb samples of `--itrace=p`: (pid, tid, cpu, time in ns, rest).
fn perf_script_lines(args: &[&str]) -> Vec<(i32, i32, u32, u64, String)> {
    let out = Command::new("perf")
        .args(args)
        .arg("-i")
        .arg(support::skylake())
        .output()
        .expect("run perf script");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(ids), Some(cpu), Some(time)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some((pid, tid)) = ids.split_once('/') else {
            continue;
        };
        // Samples without a cpu print [-01].
        let Ok(cpu) = cpu.trim_matches(|c| c == '[' || c == ']').parse::<u32>() else {
            continue;
        };
        let (secs, ns) = time.trim_end_matches(':').split_once('.').unwrap();
        let time = secs.parse::<u64>().unwrap() * 1_000_000_000 + ns.parse::<u64>().unwrap();
        let rest: Vec<&str> = words.collect();
        lines.push((
            pid.parse().unwrap(),
            tid.parse().unwrap(),
            cpu,
            time,
            rest.join(" "),
        ));
    }
    lines
}

#[test]
fn skylake_switches_match_perf_script() {
    if !support::have_perf() {
        return;
    }
    let m = skylake();
    let lines = perf_script_lines(&[
        "script",
        "--no-itrace",
        "--show-switch-events",
        "-F",
        "pid,tid,cpu,time",
        "--ns",
    ]);
    let switches: Vec<_> = lines
        .iter()
        .filter(|l| l.4.starts_with("PERF_RECORD_SWITCH_CPU_WIDE"))
        .collect();
    assert_eq!(switches.len(), 152);
    for (pid, tid, cpu, time, rest) in switches {
        // After an OUT the next thread is current; after an IN, the one switched in.
        let expect = if rest.contains(" OUT ") {
            let ids = rest.split("next pid/tid:").nth(1).unwrap().trim();
            ids.split('/')
                .nth(1)
                .unwrap()
                .trim()
                .parse::<i32>()
                .unwrap()
        } else {
            *tid
        };
        let got = m.current_thread(*cpu, *time).unwrap();
        assert_eq!(got.tid, expect, "cpu {cpu} at {time}: {rest}");
        if !rest.contains(" OUT ") {
            assert_eq!(got.pid, *pid);
        }
    }
}

#[test]
fn skylake_psb_threads_and_times_match_perf_script() {
    if !support::have_perf() {
        return;
    }
    let m = skylake();
    let tsc = *m.clocks.tsc().unwrap();
    let psbs: Vec<_> = perf_script_lines(&[
        "script",
        "--itrace=p",
        "-F",
        "pid,tid,cpu,time,event",
        "--ns",
    ])
    .into_iter()
    .filter(|l| l.4.starts_with("psb"))
    .collect();
    assert_eq!(psbs.len(), 10);
    for (pid, tid, cpu, time, _) in &psbs {
        // The psb's time is its TSC converted; the thread is what the sideband said by then.
        let at = When::Tsc(tsc.perf_to_tsc(*time));
        let thread = m.queue_thread(-1, *cpu as i32, at).unwrap();
        assert_eq!(
            (thread.pid, thread.tid),
            (*pid, *tid),
            "cpu {cpu} at {time}"
        );
    }
    // Each psb time is the conversion of the TSC packet after a PSB in `perf script -D`.
    let dump = Command::new("perf")
        .args(["script", "-D", "-i"])
        .arg(support::skylake())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    let mut after_psb = false;
    let mut psb_times = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.ends_with(" PSB") {
            after_psb = true;
        } else if let (true, Some(hex)) = (after_psb, line.split("TSC 0x").nth(1)) {
            psb_times.insert(tsc.tsc_to_perf(u64::from_str_radix(hex.trim(), 16).unwrap()));
            after_psb = false;
        }
    }
    for (_, _, cpu, time, _) in &psbs {
        assert!(psb_times.contains(time), "psb on cpu {cpu} at {time}");
    }
}

#[test]
fn single_thread_sample_is_per_thread() {
    use ptlens::perf::RecordBody;
    // The sample is regenerated now and then (new pid, new times): read them from its records.
    let path = support::repo().join("samples/single-thread/perf.data");
    let data = PerfData::open(&path).unwrap();
    let recording = data.recording().unwrap();
    let m = Model::build(&recording);
    assert!(m.warnings.is_empty(), "{:?}", m.warnings.examples());
    let pt = m.pt.as_ref().unwrap();
    assert!(!pt.per_cpu_mmaps);
    assert_eq!(pt.have_sched_switch, 0);
    let config = pt.config.unwrap();
    assert!(pt.has_tsc() && pt.return_compression() && !pt.timeless_decoding());
    assert_eq!(pt.has_mtc(), config & pt.mtc_bit != 0);
    assert_eq!(pt.has_cyc(), config & pt.cyc_bit != 0);
    assert_eq!(pt.mtc_period(), ((config >> 14) & 0xf) as u32);
    // Per-thread: the queue's tid is the thread; no CPU has a timeline.
    assert_eq!(m.cpu_count(), 0);
    let queues = recording.aux_queues().unwrap();
    let tid = queues.queues[0].tid().unwrap() as i32;
    let (mut mmaps, mut exit, mut comm) = (Vec::new(), None, None);
    for r in recording.records() {
        let r = r.unwrap();
        let time = r.sample_id.time.unwrap_or(0);
        match r.body {
            RecordBody::Mmap2(map) => mmaps.push((time, map)),
            RecordBody::Exit(task) => exit = Some(task.time),
            RecordBody::Comm { comm: c, .. } => {
                comm = Some((time, String::from_utf8_lossy(c).into_owned()))
            }
            _ => {}
        }
    }
    let names: Vec<_> = mmaps
        .iter()
        .map(|(_, m)| String::from_utf8_lossy(m.filename).into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("/single-thread")));
    assert!(names.iter().any(|n| n == "[vdso]"));
    assert!(names.iter().any(|n| n.contains("ld-linux")));
    assert!(names.iter().any(|n| n.contains("libc.so")));
    let (comm_time, comm) = comm.unwrap();
    let thread = m.queue_thread(tid, -1, comm_time).unwrap();
    assert_eq!((thread.pid, thread.tid), (tid, tid));
    assert_eq!(thread.comm_at(m.instant(comm_time)), Some(comm.as_str()));
    assert!(thread.comms()[0].exec);
    assert_eq!(thread.exit, exit);
    let ids = recording.features.build_ids().unwrap();
    for ((time, mmap), name) in mmaps.iter().zip(&names) {
        let ip = mmap.start + mmap.len / 2;
        let map = m.map_at(0, tid, ip, *time).unwrap();
        assert_eq!(&*map.filename, name.as_str());
        assert_eq!(map.file_offset(ip), mmap.pgoff + mmap.len / 2);
        assert!(
            m.map_at(0, tid, ip, *time - 1).is_none(),
            "{name} before its MMAP2"
        );
        let id = ids.iter().find(|b| b.filename == mmap.filename).unwrap();
        assert_eq!(map.build_id.unwrap().as_bytes(), id.id, "{name}");
    }
}

/// A minimal perf.data writer: enough for a host + guest recording as `perf inject
/// --guest-data` lays it out (guest attr with its own ids, ID_INDEX with machine_pid/vcpu,
/// guest cpumodes, guest BUILD_ID entries).
mod writer {
    pub const TID: u64 = 1 << 1;
    pub const TIME: u64 = 1 << 2;
    pub const CPU: u64 = 1 << 7;
    pub const IDENTIFIER: u64 = 1 << 16;
    pub const SAMPLE_TYPE: u64 = TID | TIME | CPU | IDENTIFIER;

    #[derive(Default)]
    pub struct File {
        /// (type, config, ids)
        pub attrs: Vec<(u32, u64, Vec<u64>)>,
        pub records: Vec<u8>,
        /// (pid, cpumode, build id, filename)
        pub build_ids: Vec<(i32, u16, [u8; 20], String)>,
    }

    fn pad8(v: &mut Vec<u8>) {
        while v.len() % 8 != 0 {
            v.push(0);
        }
    }

    impl File {
        /// A record: header, body, then the sample id (pid, tid, time, cpu, id) if given.
        pub fn record(
            &mut self,
            type_: u32,
            misc: u16,
            body: &[u8],
            sid: Option<(i32, i32, u64, u32, u64)>,
        ) {
            let mut r = body.to_vec();
            pad8(&mut r);
            if let Some((pid, tid, time, cpu, id)) = sid {
                r.extend((pid as u32).to_le_bytes());
                r.extend((tid as u32).to_le_bytes());
                r.extend(time.to_le_bytes());
                r.extend(cpu.to_le_bytes());
                r.extend(0u32.to_le_bytes());
                r.extend(id.to_le_bytes());
            }
            self.records.extend(type_.to_le_bytes());
            self.records.extend(misc.to_le_bytes());
            self.records.extend(((r.len() + 8) as u16).to_le_bytes());
            self.records.extend(r);
        }

        pub fn bytes(&self) -> Vec<u8> {
            let attr_size = 64u64;
            let attrs_at = 104u64;
            let ids_at = attrs_at + (attr_size + 16) * self.attrs.len() as u64;
            let id_bytes: u64 = self.attrs.iter().map(|a| 8 * a.2.len() as u64).sum();
            let data_at = ids_at + id_bytes;
            let data_size = self.records.len() as u64;
            let mut f = Vec::new();
            f.extend(b"PERFILE2");
            f.extend(104u64.to_le_bytes());
            f.extend((attr_size + 16).to_le_bytes());
            f.extend(attrs_at.to_le_bytes());
            f.extend(((attr_size + 16) * self.attrs.len() as u64).to_le_bytes());
            f.extend(data_at.to_le_bytes());
            f.extend(data_size.to_le_bytes());
            f.extend([0u8; 16]); // event types
            f.extend((1u64 << 2).to_le_bytes()); // features: BUILD_ID
            f.extend([0u8; 24]);
            let mut ids_off = ids_at;
            for (type_, config, ids) in &self.attrs {
                let mut a = vec![0u8; attr_size as usize];
                a[0..4].copy_from_slice(&type_.to_le_bytes());
                a[4..8].copy_from_slice(&(attr_size as u32).to_le_bytes());
                a[8..16].copy_from_slice(&config.to_le_bytes());
                a[24..32].copy_from_slice(&SAMPLE_TYPE.to_le_bytes());
                a[40..48].copy_from_slice(&(1u64 << 18).to_le_bytes()); // sample_id_all
                f.extend(a);
                f.extend(ids_off.to_le_bytes());
                f.extend((8 * ids.len() as u64).to_le_bytes());
                ids_off += 8 * ids.len() as u64;
            }
            for (_, _, ids) in &self.attrs {
                for id in ids {
                    f.extend(id.to_le_bytes());
                }
            }
            f.extend(&self.records);
            let mut feature = Vec::new();
            for (pid, cpumode, id, name) in &self.build_ids {
                let mut e = Vec::new();
                e.extend(pid.to_le_bytes());
                e.extend(id);
                e.extend([0u8; 4]);
                e[24] = 20; // size byte @32 of the entry
                e.extend(name.as_bytes());
                e.push(0);
                pad8(&mut e);
                feature.extend(2u32.to_le_bytes());
                feature.extend((cpumode | 0x8000).to_le_bytes());
                feature.extend(((e.len() + 8) as u16).to_le_bytes());
                feature.extend(e);
            }
            let feature_at = f.len() as u64 + 16;
            f.extend(feature_at.to_le_bytes());
            f.extend((feature.len() as u64).to_le_bytes());
            f.extend(feature);
            f
        }
    }
}

#[test]
fn guest_threads_per_vcpu() {
    use writer::File;
    let (vm, host_cpu_ids, guest_ids) = (5000i32, [1u64], [101u64, 102]);
    let mut f = File::default();
    f.attrs.push((8, 0x400, host_cpu_ids.to_vec()));
    f.attrs.push((1, 9, guest_ids.to_vec()));
    let u64s = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // AUXTRACE_INFO: Intel PT, per-CPU, CPU-wide switches; TSC = perf time.
    let mut info = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
    info.extend(u64s(&[8, 0, 1, 0, 1, 0x400, 0x800, 3, 0, 1]));
    f.record(70, 0, &info, None);
    // ID_INDEX: the host id on CPU 0; the guest ids for VCPUs 0 and 1, on host threads 5001/2.
    let mut index = u64s(&[3]);
    index.extend(u64s(&[1, 0, 0, u64::MAX]));
    index.extend(u64s(&[101, 0, u64::MAX, 5001]));
    index.extend(u64s(&[102, 0, u64::MAX, 5002]));
    index.extend(u64s(&[0, 0, vm as u64, 0, vm as u64, 1]));
    f.record(69, 0, &index, None);
    let comm = |pid: i32, tid: i32, name: &str| {
        let mut b = Vec::new();
        b.extend(pid.to_le_bytes());
        b.extend(tid.to_le_bytes());
        b.extend(name.as_bytes());
        b.push(0);
        b
    };
    // Host: the VM's VCPU threads.
    f.record(
        3,
        0,
        &comm(vm, 5001, "CPU 0/KVM"),
        Some((vm, 5001, 10, 0, 1)),
    );
    f.record(
        3,
        0,
        &comm(vm, 5002, "CPU 1/KVM"),
        Some((vm, 5002, 11, 0, 1)),
    );
    // Guest (cpumode guest user 5, cpu 0 as perf 6.1 leaves it): a program and its map.
    f.record(
        3,
        5,
        &comm(300, 300, "guestprog"),
        Some((300, 300, 20, 0, 101)),
    );
    let mut mmap2 = Vec::new();
    mmap2.extend(300i32.to_le_bytes());
    mmap2.extend(300i32.to_le_bytes());
    mmap2.extend(u64s(&[0x400000, 0x1000, 0x2000, 0, 0, 0]));
    mmap2.extend(5u32.to_le_bytes());
    mmap2.extend(2u32.to_le_bytes());
    mmap2.extend(b"/bin/guestprog\0");
    f.record(10, 5, &mmap2, Some((300, 300, 25, 0, 101)));
    // Host CPU 0 switches to VCPU 0's thread at 30; the guest switches 300 in on VCPU 0 at
    // 40 and 400 in on VCPU 1 at 45 (both records say cpu 0).
    let next = |pid: i32, tid: i32| [pid.to_le_bytes(), tid.to_le_bytes()].concat();
    f.record(15, 1 << 13, &next(vm, 5001), Some((0, 0, 30, 0, 1)));
    f.record(15, 4, &next(0, 0), Some((300, 300, 40, 0, 101)));
    f.record(15, 4, &next(0, 0), Some((400, 400, 45, 0, 102)));
    f.record(68, 0, &[], None);
    // Host CPU 0 goes idle at 60; the guest switches 300 out at 58 (ignored, as perf does).
    f.record(15, 4 | 1 << 13, &next(0, 0), Some((300, 300, 58, 0, 101)));
    f.record(15, 1 << 13, &next(0, 0), Some((vm, 5001, 60, 0, 1)));
    let exit = [77u32, 77, 77, 77].map(u32::to_le_bytes).concat();
    f.record(
        4,
        0,
        &[exit, u64s(&[70])].concat(),
        Some((77, 77, 70, 0, 1)),
    );
    f.build_ids
        .push((vm, 5, [0xab; 20], "/bin/guestprog".into()));

    let data = PerfData::from_bytes("guest.data", f.bytes());
    let recording = data.recording().unwrap();
    let m = Model::build(&recording);

    assert_eq!(m.machines().len(), 2);
    assert!(m.machine(vm).is_some());
    assert_eq!(
        m.vcpu_of_host_thread(5001),
        Some(Vcpu {
            machine_pid: vm,
            vcpu: 0
        })
    );
    assert_eq!(m.vcpu_of_host_thread(5002).map(|v| v.vcpu), Some(1));
    assert_eq!(m.current_tid(0, 30), Some(5001));
    assert_eq!(m.current_thread(0, 30).unwrap().pid, vm);
    assert!(m.guest_thread(vm, 0, 39).is_none());
    let g = m.guest_thread(vm, 0, 40).unwrap();
    assert_eq!((g.pid, g.tid, g.comm()), (300, 300, Some("guestprog")));
    assert_eq!(m.guest_thread(vm, 1, 45).unwrap().tid, 400);
    assert_eq!(m.guest_thread(vm, 0, 59).unwrap().tid, 300);
    assert_eq!(m.guest_context(0, 35), None);
    assert_eq!(
        m.guest_context(0, 50),
        Some(GuestContext {
            machine_pid: vm,
            vcpu: 0,
            pid: 300,
            tid: 300
        })
    );
    assert_eq!(m.guest_context(0, 60), None);
    // The guest's map, in the guest machine only, with the guest BUILD_ID entry's id.
    let map = m.map_at(vm, 300, 0x400010, 25).unwrap();
    assert_eq!(map.file_offset(0x400010), 0x2010);
    assert_eq!(map.cpumode, 5);
    assert_eq!(map.build_id.unwrap().as_bytes(), &[0xab; 20]);
    assert!(m.map_at(vm, 300, 0x400010, 24).is_none());
    assert!(m.map_at(0, 300, 0x400010, 25).is_none());
    // The EXIT of a thread nobody mentioned is counted, not fatal.
    assert_eq!(m.warnings.total(), 1, "{:?}", m.warnings.examples());
}

#[test]
fn fork_exec_and_tid_reuse() {
    use writer::File;
    let mut f = File::default();
    f.attrs.push((1, 9, vec![1]));
    let u64s = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ids = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mmap2 = |pid: i32, start: u64, name: &str| {
        let mut b = ids(&[pid, pid]);
        b.extend(u64s(&[start, 0x1000, 0, 0, 0, 0]));
        b.extend(ids(&[5, 2]));
        b.extend(name.as_bytes());
        b.push(0);
        b
    };
    let comm = |pid: i32, tid: i32, name: &str| {
        [ids(&[pid, tid]), name.as_bytes().to_vec(), vec![0]].concat()
    };
    let task = |pid: i32, ppid: i32, tid: i32, ptid: i32, time: u64| {
        [ids(&[pid, ppid, tid, ptid]), u64s(&[time])].concat()
    };
    let sid = |pid: i32, tid: i32, time: u64| Some((pid, tid, time, 0, 1));
    f.record(3, 0, &comm(100, 100, "shell"), sid(100, 100, 10));
    f.record(10, 2, &mmap2(100, 0x10000, "/bin/sh"), sid(100, 100, 11));
    // A new process (200) and a thread of it (201).
    f.record(7, 0, &task(200, 100, 200, 100, 20), sid(200, 200, 20));
    f.record(7, 0, &task(200, 200, 201, 200, 21), sid(200, 201, 21));
    // The child execs: new comm, new program over the old one's addresses.
    f.record(3, 1 << 13, &comm(200, 200, "ls"), sid(200, 200, 30));
    f.record(10, 2, &mmap2(200, 0x10000, "/bin/ls"), sid(200, 200, 31));
    f.record(4, 0, &task(200, 100, 200, 100, 40), sid(200, 200, 40));
    f.record(4, 0, &task(200, 200, 201, 200, 40), sid(200, 201, 40));
    // tid 200 comes back as a new process.
    f.record(7, 0, &task(200, 100, 200, 100, 50), sid(200, 200, 50));
    let data = PerfData::from_bytes("fork.data", f.bytes());
    let m = Model::build(&data.recording().unwrap());
    assert!(m.warnings.is_empty(), "{:?}", m.warnings.examples());
    let name = |pid: i32, t: u64| m.map_at(0, pid, 0x10100, t).map(|m| m.filename.to_string());
    assert_eq!(name(200, 19), None);
    assert_eq!(
        name(200, 20).as_deref(),
        Some("/bin/sh"),
        "inherited at fork"
    );
    assert_eq!(name(200, 31).as_deref(), Some("/bin/ls"));
    assert_eq!(
        name(100, 31).as_deref(),
        Some("/bin/sh"),
        "the parent keeps its own"
    );
    assert_eq!(
        name(200, 50).as_deref(),
        Some("/bin/sh"),
        "the new process copies anew"
    );
    let host = m.host();
    let at = |t: u64| m.instant(t);
    let child = host.thread(200, at(35)).unwrap();
    assert_eq!(child.comm_at(at(25)), Some("shell"));
    assert_eq!(child.comm_at(at(35)), Some("ls"));
    assert_eq!((child.ppid, child.exit), (Some(100), Some(40)));
    let thread = host.thread(201, at(35)).unwrap();
    assert_eq!((thread.pid, thread.comm_at(at(25))), (200, Some("shell")));
    let again = host.thread(200, at(50)).unwrap();
    assert_eq!((again.start, again.exit), (50, None));
    assert_eq!(host.thread(200, at(45)).unwrap().start, 20);
}

#[test]
fn the_model_is_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Model>();
}

#[test]
fn damaged_files_never_panic() {
    let bytes = std::fs::read(support::skylake()).unwrap();
    // Cut inside the data section, and flip bytes in the records.
    for cut in [0x2200usize, 0x6600, 0x29c8] {
        let data = PerfData::from_bytes("cut.data", bytes[..cut].to_vec());
        if let Ok(recording) = data.recording() {
            let m = Model::build(&recording);
            let _ = m.current_thread(3, u64::MAX);
        }
    }
    let mut seed = 0x2545f4914f6cdd1du64;
    for _ in 0..50 {
        let mut copy = bytes.clone();
        for _ in 0..20 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = 0x2148 + (seed as usize % (0x7788 - 0x2148));
            copy[at] ^= (seed >> 32) as u8 | 1;
        }
        let data = PerfData::from_bytes("flipped.data", copy);
        if let Ok(recording) = data.recording() {
            let m = Model::build(&recording);
            for cpu in 0..4 {
                let _ = m.current_thread(cpu, u64::MAX);
                let _ = m.guest_context(cpu, 641256900000);
            }
            let _ = m.map_at(0, 3174, 0x7fb36c8bb000, u64::MAX);
        }
    }
}
