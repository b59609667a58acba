//! The perf.data reader on real recordings (no perf needed): the Skylake Intel PT file, a
//! big-endian copy of it, and the pipe-mode and zstd files in tests/data/perf.

#[path = "perf_support.rs"]
mod support;

use std::collections::BTreeMap;

use ptlens::perf::{Endian, IntelPtInfo, PerfData, RecordBody, Source};

fn counts_by_type(data: &PerfData) -> BTreeMap<&'static str, u64> {
    let recording = data.recording().unwrap();
    let mut counts = BTreeMap::new();
    for record in recording.records() {
        *counts
            .entry(record.unwrap().type_name().unwrap())
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn skylake_header_and_attrs() {
    let data = PerfData::open(support::skylake()).unwrap();
    assert!(data.is_mapped());
    let r = data.recording().unwrap();
    assert_eq!(r.header.endian, Endian::Little);
    assert!(!r.header.pipe);
    assert_eq!((r.header.data.offset, r.header.data.size), (744, 168128));
    let types: Vec<u32> = r.attrs.iter().map(|a| a.type_).collect();
    assert_eq!(types, [6, 0, 1, 1]);
    assert_eq!(r.attrs[0].config, 0x300e601);
    assert_eq!(r.attrs[0].sample_type, 0x10087); // IP|TID|TIME|CPU|IDENTIFIER
    assert_eq!(r.attrs[1].sample_type, 0x10107); // IP|TID|TIME|PERIOD|IDENTIFIER
    assert_eq!(r.attrs[0].ids, [124, 125, 126, 127]);
    assert_eq!(r.attrs[3].ids, [136, 137, 138, 139]);
    assert!(r.attrs.iter().all(|a| a.sample_id_all()));
    assert!(r.attrs[2].flags & ptlens::perf::attr_flags::CONTEXT_SWITCH != 0);
    assert!(r.attrs[3].flags & ptlens::perf::attr_flags::MMAP2 != 0);
    assert_eq!(r.attr_of_id(133), Some(2));
    assert_eq!(r.attr_by_type(6), Some(0));

    let nr = r.features.nr_cpus().unwrap().unwrap();
    assert_eq!((nr.online, nr.available), (4, 4));
    assert_eq!(
        r.features
            .string(ptlens::perf::feature::CPUID)
            .unwrap()
            .as_deref(),
        Some("GenuineIntel,6,78,3")
    );
    let pmus = r.features.pmu_mappings().unwrap();
    assert!(pmus.iter().any(|p| p.name == "intel_pt" && p.type_ == 6));
    let ids = r.features.build_ids().unwrap();
    assert_eq!(ids[0].pid, -1);
    assert_eq!(ids[0].cpumode, 1);
    assert_eq!(ids[0].filename, b"[kernel.kallsyms]");
    assert_eq!(
        ids[0].id,
        b"\x67\x26\x79\xce\xae\xcf\x17\xb7\xa8\x79\xe5\x6c\x56\x80\x2a\xfc\x56\x8a\xa2\x42"
    );
    assert!(!ids.iter().any(|i| i.is_guest()));
}

#[test]
fn skylake_auxtrace_info_and_time_conv() {
    let data = PerfData::open(support::skylake()).unwrap();
    let r = data.recording().unwrap();
    let mut info = None;
    let mut time_conv = None;
    for record in r.records() {
        match record.unwrap().body {
            RecordBody::AuxtraceInfo(i) => {
                assert_eq!(i.priv_.len(), 152 - 16);
                info = i.intel_pt().unwrap();
            }
            RecordBody::TimeConv(t) => time_conv = Some(t),
            _ => {}
        }
    }
    let expected = IntelPtInfo {
        pmu_type: 6,
        time_shift: 31,
        time_mult: 1789569706,
        time_zero: 18446744041015200657,
        cap_user_time_zero: 1,
        tsc_bit: 0x400,
        noretcomp_bit: 0x800,
        have_sched_switch: 3,
        snapshot_mode: 0,
        per_cpu_mmaps: 1,
        mtc_bit: Some(0x200),
        mtc_freq_bits: Some(0x3c000),
        tsc_ctc_ratio_n: Some(100),
        tsc_ctc_ratio_d: Some(2),
        cyc_bit: Some(0x2),
        max_nonturbo_ratio: Some(12),
        filter_str_len: Some(0),
        filter: None,
        cap_event_trace: None,
    };
    assert_eq!(info, Some(expected));
    let t = time_conv.unwrap();
    assert_eq!(
        (t.time_shift, t.time_mult, t.time_zero),
        (31, 1789569706, 18446744041015200657)
    );
    assert_eq!(t.time_cycles, None); // the old 32-byte layout
}

#[test]
fn skylake_aux_queues() {
    let data = PerfData::open(support::skylake()).unwrap();
    let r = data.recording().unwrap();
    let index = r.features.auxtrace_index().unwrap().unwrap();
    assert_eq!(index.len(), 2);
    assert_eq!(index[0].file_offset, 0x29c0);
    let queues = r.aux_queues().unwrap();
    let summary: Vec<(u32, Option<u32>, u64, usize)> = queues
        .queues
        .iter()
        .map(|q| (q.idx, q.cpu(), q.size(), q.buffers[0].auxtrace.data.len()))
        .collect();
    assert_eq!(
        summary,
        [(0, Some(0), 12240, 12240), (3, Some(3), 137728, 137728)]
    );
    let b = &queues.get(3).unwrap().buffers[0];
    assert_eq!((b.record_offset, b.auxtrace.data_offset), (0x7788, 0x77b8));
    assert_eq!(b.auxtrace.tid, 3174);
    // Zero-copy: the payload is a slice of the mapping at its file offset.
    let whole = std::fs::read(support::skylake()).unwrap();
    assert_eq!(b.auxtrace.data, &whole[0x77b8..0x77b8 + 137728]);
}

#[test]
fn skylake_records() {
    let data = PerfData::open(support::skylake()).unwrap();
    // Cross-checked with `perf report -D`'s aggregated stats.
    let expected: BTreeMap<&str, u64> = [
        ("MMAP", 56),
        ("COMM", 3),
        ("EXIT", 1),
        ("SAMPLE", 15),
        ("MMAP2", 10),
        ("AUX", 10),
        ("ITRACE_START", 2),
        ("SWITCH_CPU_WIDE", 152),
        ("FINISHED_ROUND", 4),
        ("AUXTRACE_INFO", 1),
        ("AUXTRACE", 2),
        ("TIME_CONV", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts_by_type(&data), expected);

    let r = data.recording().unwrap();
    let records: Vec<_> = r.records().map(Result::unwrap).collect();
    // `0 641256032286 0x2180 [0x30]: PERF_RECORD_SWITCH_CPU_WIDE OUT next pid/tid: 3174/3174`
    let switch = records.iter().find(|r| r.offset == 0x2180).unwrap();
    assert_eq!(switch.source, Source::File(0));
    assert!(matches!(
        switch.body,
        RecordBody::SwitchCpuWide {
            out: true,
            next_prev_pid: 3174,
            next_prev_tid: 3174,
            ..
        }
    ));
    assert_eq!(switch.sample_id.cpu, Some(0));
    assert_eq!(switch.sample_id.time, Some(641256032286));
    assert_eq!(switch.attr, Some(2));
    // `4294967295 641256820833 0x6440 [0x30]: PERF_RECORD_SAMPLE(IP, 0x1): 3174/3174: 0xffffffffb96071f4 period: 1`
    let sample = records.iter().find(|r| r.offset == 0x6440).unwrap();
    assert_eq!(sample.attr, Some(1));
    assert_eq!(sample.sample_id.time, Some(641256820833));
    assert_eq!(sample.sample_id.tid, Some(3174));
    assert_eq!(sample.sample_id.cpu, None);
    match &sample.body {
        RecordBody::Sample(s) => assert_eq!((s.ip, s.period), (Some(0xffffffffb96071f4), Some(1))),
        other => panic!("{other:?}"),
    }
    let mmap = records.iter().find(|r| r.offset == 0x3a0).unwrap();
    match &mmap.body {
        RecordBody::Mmap(m) => {
            assert_eq!(
                (m.pid as i32, m.start, m.len),
                (-1, 0xffffffffb9600000, 0x6cf0000)
            );
            assert_eq!(m.filename, b"[kernel.kallsyms]_text");
        }
        other => panic!("{other:?}"),
    }
}

/// Byte-swaps the Skylake recording into the file a big-endian perf would have written: every
/// field at its width, the attr flag bitfield bit-reversed per byte, strings and payloads as they
/// are. Covers what the file holds (its record types and the features the reader parses).
fn to_big_endian(le: &[u8]) -> Vec<u8> {
    fn swap(buf: &mut [u8], at: usize, widths: &[usize]) -> usize {
        let mut at = at;
        for &w in widths {
            buf[at..at + w].reverse();
            at += w;
        }
        at
    }
    let u64_at = |at: usize| u64::from_le_bytes(le[at..at + 8].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(le[at..at + 4].try_into().unwrap());
    let mut be = le.to_vec();
    be[0..8].reverse(); // the magic
    swap(&mut be, 8, &[8; 12]);
    let (attrs_off, attrs_size, attr_size) = (
        u64_at(24) as usize,
        u64_at(32) as usize,
        u64_at(16) as usize,
    );
    let mut sample_types = std::collections::HashMap::new();
    for entry in (attrs_off..attrs_off + attrs_size).step_by(attr_size) {
        let attr_sz = u32_at(entry + 4) as usize;
        swap(&mut be, entry, &[4, 4, 8, 8, 8, 8]);
        for b in &mut be[entry + 40..entry + 48] {
            *b = b.reverse_bits();
        }
        swap(&mut be, entry + 48, &[4, 4, 8, 8, 8, 8, 8, 4, 4, 8]);
        if attr_sz >= 112 {
            swap(&mut be, entry + 104, &[4, 2, 2]);
        }
        let ids = entry + attr_size - 16;
        let (ids_off, ids_size) = (u64_at(ids) as usize, u64_at(ids + 8) as usize);
        swap(&mut be, ids, &[8, 8]);
        for k in 0..ids_size / 8 {
            let id = u64_at(ids_off + 8 * k);
            sample_types.insert(id, u64_at(entry + 24));
            // Synthesized records carry id 0 and belong to the first attr.
            sample_types.entry(0).or_insert(u64_at(entry + 24));
            swap(&mut be, ids_off + 8 * k, &[8]);
        }
    }
    let (data_off, data_size) = (u64_at(40) as usize, u64_at(48) as usize);
    let mut at = data_off;
    while at < data_off + data_size {
        let (type_, size) = (
            u32_at(at),
            u16::from_le_bytes([le[at + 6], le[at + 7]]) as usize,
        );
        swap(&mut be, at, &[4, 2, 2]);
        let body = at + 8;
        let mut payload = 0;
        match type_ {
            1 => drop(swap(&mut be, body, &[4, 4, 8, 8, 8])),
            10 => drop(swap(&mut be, body, &[4, 4, 8, 8, 8, 4, 4, 8, 8, 4, 4])),
            3 | 12 | 15 => drop(swap(&mut be, body, &[4, 4])),
            4 | 7 => drop(swap(&mut be, body, &[4, 4, 4, 4, 8])),
            11 => drop(swap(&mut be, body, &[8, 8, 8])),
            9 => drop(swap(&mut be, body, &[8, 8, 4, 4, 8, 8])), // cycles: IDENTIFIER IP TID TIME PERIOD
            68 => {}
            70 => drop(swap(
                &mut be,
                body,
                &[4, 4]
                    .into_iter()
                    .chain(vec![8; (size - 16) / 8])
                    .collect::<Vec<_>>(),
            )),
            71 => {
                payload = u64_at(body) as usize;
                swap(&mut be, body, &[8, 8, 8, 4, 4, 4, 4]);
            }
            79 => drop(swap(&mut be, body, &[8, 8, 8])),
            t => panic!("swapper does not know record type {t}"),
        }
        if type_ < 64 && type_ != 9 {
            let st = sample_types[&u64_at(at + size - 8)];
            let mut widths = Vec::new();
            if st & 2 != 0 {
                widths.extend([4, 4]);
            }
            if st & 4 != 0 {
                widths.push(8);
            }
            if st & 0x80 != 0 {
                widths.extend([4, 4]);
            }
            widths.push(8);
            let len: usize = widths.iter().sum();
            swap(&mut be, at + size - len, &widths);
        }
        at += size + payload;
    }
    // The feature table and the features the reader parses.
    let features: Vec<usize> = (0..256)
        .filter(|&f: &usize| u64_at(72 + 8 * (f / 64)) >> (f % 64) & 1 != 0)
        .collect();
    for (i, f) in features.iter().enumerate() {
        let entry = data_off + data_size + 16 * i;
        let (off, size) = (u64_at(entry) as usize, u64_at(entry + 8) as usize);
        swap(&mut be, entry, &[8, 8]);
        match f {
            2 => {
                let mut e = off;
                while e < off + size {
                    let len = u16::from_le_bytes([le[e + 6], le[e + 7]]) as usize;
                    swap(&mut be, e, &[4, 2, 2, 4]);
                    e += len;
                }
            }
            7 => drop(swap(&mut be, off, &[4, 4])),
            18 => drop(swap(&mut be, off, &vec![8; size / 8])),
            _ => {}
        }
    }
    be
}

#[test]
fn big_endian_reads_the_same() {
    let le_bytes = std::fs::read(support::skylake()).unwrap();
    let le = PerfData::open(support::skylake()).unwrap();
    let be = PerfData::from_bytes("skylake-be.data", to_big_endian(&le_bytes));
    let (l, b) = (le.recording().unwrap(), be.recording().unwrap());
    assert_eq!(b.header.endian, Endian::Big);
    assert_eq!(l.header.data, b.header.data);
    assert_eq!(l.header.features, b.header.features);
    for (x, y) in l.attrs.iter().zip(&b.attrs) {
        assert_eq!(
            (x.type_, x.size, x.config, x.sample_type, x.flags, &x.ids),
            (y.type_, y.size, y.config, y.sample_type, y.flags, &y.ids)
        );
    }
    assert_eq!(
        l.features.build_ids().unwrap(),
        b.features.build_ids().unwrap()
    );
    assert_eq!(l.features.nr_cpus().unwrap(), b.features.nr_cpus().unwrap());
    assert_eq!(
        l.aux_queues().unwrap().queues.len(),
        b.aux_queues().unwrap().queues.len()
    );
    let (lq, bq) = (l.aux_queues().unwrap(), b.aux_queues().unwrap());
    for (x, y) in lq.queues.iter().zip(&bq.queues) {
        assert_eq!((x.idx, x.cpu(), x.size()), (y.idx, y.cpu(), y.size()));
        assert_eq!(x.buffers[0].auxtrace.data, y.buffers[0].auxtrace.data);
    }
    let mut n = 0;
    for (x, y) in l.records().zip(b.records()) {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(
            (x.offset, x.header, x.attr, x.sample_id),
            (y.offset, y.header, y.attr, y.sample_id)
        );
        // Bodies borrow different bytes; their Debug forms show the decoded values.
        let strip = |s: String| s.replace("endian: Little", "").replace("endian: Big", "");
        if !matches!(x.body, RecordBody::AuxtraceInfo(_)) {
            assert_eq!(
                strip(format!("{:?}", x.body)),
                strip(format!("{:?}", y.body)),
                "at {:#x}",
                x.offset
            );
        }
        n += 1;
    }
    assert_eq!(n, 257);
}

#[test]
fn pipe_mode_file() {
    let data = PerfData::open(support::repo().join("tests/data/perf/pipe.data")).unwrap();
    let r = data.recording().unwrap();
    assert!(r.header.pipe);
    assert_eq!(r.attrs.len(), 1);
    assert!(!r.attrs[0].ids.is_empty());
    assert!(r
        .features
        .string(ptlens::perf::feature::HOSTNAME)
        .unwrap()
        .is_some());
    let counts = counts_by_type(&data);
    // `perf report -D -i pipe.data`
    assert_eq!(counts["HEADER_ATTR"], 1);
    assert_eq!(counts["HEADER_FEATURE"], 19);
    assert_eq!(counts["FINISHED_INIT"], 1);
    assert_eq!(counts["ID_INDEX"], 1);
    assert_eq!(counts.values().sum::<u64>(), 38);
    for record in r.records() {
        if let RecordBody::IdIndex(index) = record.unwrap().body {
            let e: Vec<_> = index.entries().collect();
            assert_eq!(e.len() as u64, index.nr);
            assert!(e.iter().all(|e| e.tid > 0 && e.machine_pid.is_none()));
        }
    }
}

#[test]
fn zstd_file() {
    let data = PerfData::open(support::repo().join("tests/data/perf/z.data")).unwrap();
    let r = data.recording().unwrap();
    assert!(r.is_compressed());
    assert_eq!(r.features.compressed().unwrap().unwrap().type_, 1);
    let counts = counts_by_type(&data);
    // `perf report -D -i z.data`: 21 records, 1 of them COMPRESSED.
    assert_eq!(counts["COMPRESSED"], 1);
    assert_eq!(counts["MMAP2"], 6);
    assert_eq!(counts["SAMPLE"], 3);
    assert_eq!(counts.values().sum::<u64>(), 21);
    let decompressed = r
        .records()
        .filter(|r| matches!(r.as_ref().unwrap().source, Source::Decompressed(0)))
        .count();
    assert!(decompressed > 0);
}
