//! Table tests for `pt::packets` from the Intel SDM encodings, error cases, and robustness.

use ptlens::pt::dump::write_perf_dump;
use ptlens::pt::packets::*;

fn ip(compression: IpCompression, raw: u64) -> IpPayload {
    IpPayload { compression, raw }
}

/// Every packet kind, encoded as the SDM's "Packet Definitions" lay it out.
fn table() -> Vec<(&'static str, Vec<u8>, BlockContext, Packet)> {
    use IpCompression::*;
    let none = BlockContext::None;
    let mut rows = vec![
        ("PAD", vec![0x00], none, Packet::Pad),
        // Short TNT: stop bit at bit 7, six outcomes T N T T N N (oldest first).
        (
            "TNT short 6",
            vec![0b1101_1000],
            none,
            Packet::Tnt(Tnt {
                bits: 0b101100,
                count: 6,
                long: false,
            }),
        ),
        (
            "TNT short 1",
            vec![0b0000_0110],
            none,
            Packet::Tnt(Tnt {
                bits: 1,
                count: 1,
                long: false,
            }),
        ),
        // Long TNT: stop bit at payload bit 47: 47 outcomes.
        (
            "TNT long 47",
            vec![0x02, 0xa3, 0x01, 0, 0, 0, 0, 0x80],
            none,
            Packet::Tnt(Tnt {
                bits: 1,
                count: 47,
                long: true,
            }),
        ),
        (
            "TNT long 3",
            vec![0x02, 0xa3, 0b1010, 0, 0, 0, 0, 0],
            none,
            Packet::Tnt(Tnt {
                bits: 0b010,
                count: 3,
                long: true,
            }),
        ),
        (
            "PIP NR=0",
            vec![0x02, 0x43, 0x00, 0x34, 0xd4, 0x3f, 0x00, 0x00],
            none,
            Packet::Pip(Pip {
                payload: 0x3fd43400,
            }),
        ),
        (
            "PIP NR=1",
            vec![0x02, 0x43, 0x01, 0x34, 0xd4, 0x3f, 0x00, 0x00],
            none,
            Packet::Pip(Pip {
                payload: 0x3fd43401,
            }),
        ),
        (
            "MODE.Exec 64",
            vec![0x99, 0x01],
            none,
            Packet::ModeExec(ModeExec { bits: 1 }),
        ),
        (
            "MODE.Exec 32 IF",
            vec![0x99, 0x06],
            none,
            Packet::ModeExec(ModeExec { bits: 6 }),
        ),
        (
            "MODE.TSX",
            vec![0x99, 0x21],
            none,
            Packet::ModeTsx(ModeTsx { bits: 1 }),
        ),
        (
            "TSC",
            vec![0x19, 0xe8, 0xcf, 0xd2, 0x4c, 0xbc, 0x00, 0x00],
            none,
            Packet::Tsc { tsc: 0xbc4cd2cfe8 },
        ),
        ("MTC", vec![0x59, 0x94], none, Packet::Mtc { ctc: 0x94 }),
        (
            "TMA",
            vec![0x02, 0x73, 0x12, 0x34, 0x00, 0x56, 0x01],
            none,
            Packet::Tma(Tma {
                ctc: 0x3412,
                reserved: 0,
                fast_counter_raw: 0x156,
            }),
        ),
        (
            "CYC 1 byte",
            vec![0b1010_1011],
            none,
            Packet::Cyc {
                cycles: 0b10101,
                size: 1,
            },
        ),
        (
            "CYC 3 bytes",
            vec![0b0000_1111, 0b0000_0011, 0b0000_0100],
            none,
            Packet::Cyc {
                cycles: 1 | 1 << 5 | 2 << 12,
                size: 3,
            },
        ),
        (
            "VMCS",
            vec![0x02, 0xc8, 0xcd, 0xab, 0x00, 0x00, 0x00],
            none,
            Packet::Vmcs { payload: 0xabcd },
        ),
        ("OVF", vec![0x02, 0xf3], none, Packet::Ovf),
        (
            "CBR",
            vec![0x02, 0x03, 0x24, 0x00],
            none,
            Packet::Cbr { payload: 0x24 },
        ),
        ("PSB", PSB.to_vec(), none, Packet::Psb),
        ("PSBEND", vec![0x02, 0x23], none, Packet::PsbEnd),
        (
            "MNT",
            vec![0x02, 0xc3, 0x88, 1, 2, 3, 4, 5, 6, 7, 8],
            none,
            Packet::Mnt {
                payload: 0x0807060504030201,
            },
        ),
        (
            "PTW 4 IP",
            vec![0x02, 0x92, 0xef, 0xcd, 0xab, 0x90],
            none,
            Packet::Ptw(Ptw {
                payload: 0x90abcdef,
                size: 4,
                ip: true,
            }),
        ),
        (
            "PTW 8",
            vec![0x02, 0x32, 1, 2, 3, 4, 5, 6, 7, 8],
            none,
            Packet::Ptw(Ptw {
                payload: 0x0807060504030201,
                size: 8,
                ip: false,
            }),
        ),
        (
            "EXSTOP",
            vec![0x02, 0x62],
            none,
            Packet::Exstop { ip: false },
        ),
        (
            "EXSTOP IP",
            vec![0x02, 0xe2],
            none,
            Packet::Exstop { ip: true },
        ),
        (
            "MWAIT",
            vec![0x02, 0xc2, 0x0b, 0, 0, 0, 0x01, 0, 0, 0],
            none,
            Packet::Mwait {
                hints: 0xb,
                extensions: 1,
            },
        ),
        (
            "PWRE",
            vec![0x02, 0x22, 0x80, 0x12],
            none,
            Packet::Pwre(Pwre { payload: 0x1280 }),
        ),
        (
            "PWRX",
            vec![0x02, 0xa2, 0x05, 0x01, 0, 0, 0],
            none,
            Packet::Pwrx(Pwrx { payload: 0x105 }),
        ),
        ("STOP", vec![0x02, 0x83], none, Packet::Stop),
        (
            "BBP",
            vec![0x02, 0x63, 0x82],
            none,
            Packet::Bbp(Bbp { bits: 0x82 }),
        ),
        (
            "BIP 4",
            vec![0b0001_0100, 1, 2, 3, 4],
            BlockContext::Items4,
            Packet::Bip {
                id: 2,
                value: 0x04030201,
                size: 4,
            },
        ),
        (
            "BIP 8",
            vec![0b0000_1100, 1, 2, 3, 4, 5, 6, 7, 8],
            BlockContext::Items8,
            Packet::Bip {
                id: 1,
                value: 0x0807060504030201,
                size: 8,
            },
        ),
        ("BEP", vec![0x02, 0x33], none, Packet::Bep { ip: false }),
        ("BEP IP", vec![0x02, 0xb3], none, Packet::Bep { ip: true }),
        (
            "CFE",
            vec![0x02, 0x13, 0x81, 0x0e],
            none,
            Packet::Cfe(Cfe {
                bits: 0x81,
                vector: 14,
            }),
        ),
        (
            "EVD",
            vec![0x02, 0x53, 0x02, 0xaa, 0x0b, 0xf0, 0, 0, 0, 0, 0],
            none,
            Packet::Evd(Evd {
                type_byte: 2,
                payload: 0xf00baa,
            }),
        ),
        (
            "TRIG",
            vec![0xd9, 0x20, 0xa1],
            none,
            Packet::Trig(Trig {
                flags: 0x20,
                trbv: 0xa1,
                icnt: None,
            }),
        ),
        (
            "TRIG ICNT",
            vec![0xd9, 0xe0, 0xa1, 0x17, 0x00],
            none,
            Packet::Trig(Trig {
                flags: 0xe0,
                trbv: 0xa1,
                icnt: Some(0x17),
            }),
        ),
    ];
    // Every IP packet with every defined IP compression.
    type MakeIp = fn(IpPayload) -> Packet;
    let ip_kinds: [(&str, u8, MakeIp); 4] = [
        ("TIP", 0x0d, Packet::Tip),
        ("TIP.PGE", 0x11, Packet::TipPge),
        ("TIP.PGD", 0x01, Packet::TipPgd),
        ("FUP", 0x1d, Packet::Fup),
    ];
    let payload = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    for (name, opcode, make) in ip_kinds {
        for (compression, raw) in [
            (Suppressed, 0),
            (Update16, 0x2211),
            (Update32, 0x44332211),
            (Sext48, 0x665544332211),
            (Update48, 0x665544332211),
            (Full, 0x8877665544332211),
        ] {
            let mut bytes = vec![compression.code() << 5 | opcode];
            bytes.extend_from_slice(&payload[..compression.payload_len()]);
            rows.push((name, bytes, none, make(ip(compression, raw))));
        }
    }
    rows
}

#[test]
fn every_packet_kind_decodes() {
    for (name, bytes, block, expected) in table() {
        let packet = decode(&bytes, 0, block).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(packet, expected, "{name}: {bytes:02x?}");
        assert_eq!(packet.size(), bytes.len(), "{name}: size");
        // Decoding at an offset inside a larger buffer gives the same packet.
        let mut shifted = vec![0u8; 3];
        shifted.extend_from_slice(&bytes);
        shifted.extend_from_slice(&[0x02, 0x23]);
        assert_eq!(decode(&shifted, 3, block), Ok(expected), "{name}: at 3");
    }
}

#[test]
fn every_truncation_is_an_error_with_the_packet_offset() {
    for (name, bytes, block, _) in table() {
        for len in 1..bytes.len() {
            let mut data = vec![0x00, 0x00];
            data.extend_from_slice(&bytes[..len]);
            let result = decode(&data, 2, block);
            assert_eq!(
                result,
                Err(PacketError {
                    offset: 2,
                    kind: PacketErrorKind::Truncated
                }),
                "{name} cut to {len} bytes"
            );
        }
    }
}

#[test]
fn packet_accessors_follow_the_sdm() {
    let pip = Pip {
        payload: 0x3fd43401,
    };
    assert!(pip.nr());
    assert_eq!(pip.cr3(), 0x3fd434000);
    assert_eq!(ModeExec { bits: 1 }.mode(), ExecMode::Bits64);
    assert_eq!(ModeExec { bits: 2 }.mode(), ExecMode::Bits32);
    assert_eq!(ModeExec { bits: 0 }.mode(), ExecMode::Bits16);
    assert_eq!(ModeExec { bits: 3 }.mode(), ExecMode::Invalid);
    assert!(ModeExec { bits: 4 }.interrupt_flag());
    assert!(ModeTsx { bits: 1 }.in_tx() && ModeTsx { bits: 2 }.tx_abort());
    let tnt = Tnt {
        bits: 0b101100,
        count: 6,
        long: false,
    };
    let outcomes: Vec<bool> = tnt.outcomes().collect();
    assert_eq!(outcomes, [true, false, true, true, false, false]);
    let pwre = Pwre { payload: 0x1280 };
    assert!(pwre.hw());
    assert_eq!((pwre.state(), pwre.sub_state()), (1, 2));
    let pwrx = Pwrx { payload: 0x125 };
    assert_eq!((pwrx.last(), pwrx.deepest(), pwrx.wake_reason()), (2, 5, 1));
    assert_eq!(Bbp { bits: 0x82 }.item_size(), 4);
    assert_eq!(Bbp { bits: 0x02 }.item_size(), 8);
    assert_eq!(Bbp { bits: 0x82 }.block_type(), 2);
}

#[test]
fn ip_compression_reconstructs_the_last_ip() {
    use IpCompression::*;
    let last = 0xffff_8000_1234_5678;
    assert_eq!(ip(Suppressed, 0).resolve(last), None);
    assert_eq!(
        ip(Update16, 0xabcd).resolve(last),
        Some(0xffff_8000_1234_abcd)
    );
    assert_eq!(
        ip(Update32, 0xdead_beef).resolve(last),
        Some(0xffff_8000_dead_beef)
    );
    assert_eq!(
        ip(Update48, 0x1111_2222_3333).resolve(last),
        Some(0xffff_1111_2222_3333)
    );
    assert_eq!(
        ip(Sext48, 0x8000_0000_1000).resolve(0),
        Some(0xffff_8000_0000_1000)
    );
    assert_eq!(
        ip(Sext48, 0x7fff_0000_1000).resolve(last),
        Some(0x0000_7fff_0000_1000)
    );
    assert_eq!(
        ip(Full, 0x0123_4567_89ab_cdef).resolve(last),
        Some(0x0123_4567_89ab_cdef)
    );
}

#[test]
fn iterator_tracks_last_ip_and_psb_resets_it() {
    let mut data = PSB.to_vec();
    data.extend_from_slice(&[0x7d, 0x00, 0x10, 0x00, 0xa0, 0x00, 0x00]); // FUP sext48 0xa0001000
    data.extend_from_slice(&[0x2d, 0x34, 0x12]); // TIP update16 0x1234
    data.extend_from_slice(&[0x0d]); // TIP suppressed
    let mut packets = Packets::new(&data);
    let mut seen = Vec::new();
    for item in packets.by_ref() {
        let (offset, _) = item.expect("valid");
        seen.push(offset);
    }
    assert_eq!(seen, [0, 16, 23, 26]);
    // The suppressed TIP leaves the value but makes it unavailable.
    assert_eq!(packets.last_ip().get(), None);
    assert!(packets.last_ip().is_suppressed());

    let mut packets = Packets::new(&data);
    let ips: Vec<Option<u64>> = std::iter::from_fn(|| {
        packets.next()?.ok()?;
        Some(packets.last_ip().get())
    })
    .collect();
    assert_eq!(ips, [None, Some(0xa000_1000), Some(0xa000_1234), None]);

    // A PSB forgets the last IP.
    let mut data = vec![0x7d, 0x00, 0x10, 0x00, 0xa0, 0x00, 0x00];
    data.extend_from_slice(&PSB);
    let mut packets = Packets::new(&data);
    packets.next();
    assert_eq!(packets.last_ip().get(), Some(0xa000_1000));
    packets.next();
    assert!(packets.last_ip().is_empty());
}

#[test]
fn bip_only_inside_a_block() {
    // BBP (4-byte items), BIP, MTC (keeps the block), BIP, BEP, then the same byte is a TNT.
    let data = [
        0x02, 0x63, 0x80, 0x14, 1, 2, 3, 4, 0x59, 0x01, 0x0c, 5, 6, 7, 8, 0x02, 0x33, 0x14,
    ];
    let packets: Vec<Packet> = Packets::new(&data)
        .map(|item| item.expect("valid").1)
        .collect();
    assert!(matches!(packets[1], Packet::Bip { id: 2, size: 4, .. }));
    assert!(matches!(packets[3], Packet::Bip { id: 1, size: 4, .. }));
    assert_eq!(packets[4], Packet::Bep { ip: false });
    assert!(matches!(packets[5], Packet::Tnt(Tnt { count: 3, .. })));
}

fn error_at(data: &[u8], offset: usize) -> PacketErrorKind {
    decode(data, offset, BlockContext::None)
        .expect_err("must be an error")
        .kind
}

#[test]
fn errors_name_the_offset_and_the_reason() {
    use PacketErrorKind::*;
    assert_eq!(error_at(&[0x00, 0xc9], 1), UnknownOpcode);
    assert_eq!(error_at(&[0x05], 0), UnknownOpcode);
    assert_eq!(error_at(&[0x02, 0x04], 0), UnknownOpcode);
    assert_eq!(error_at(&[0x02, 0xc3, 0x00], 0), UnknownOpcode);
    // IP compressions 5 and 7 are reserved, whatever follows.
    for opcode in [0x0d, 0x11, 0x01, 0x1d] {
        assert_eq!(error_at(&[5 << 5 | opcode], 0), ReservedIpCompression(5));
        assert_eq!(
            error_at(&[7 << 5 | opcode, 0, 0], 0),
            ReservedIpCompression(7)
        );
    }
    assert_eq!(error_at(&[0x99, 0x40], 0), Malformed("MODE"));
    assert_eq!(error_at(&[0x02, 0xd2, 0, 0, 0, 0], 0), Malformed("PTW"));
    let mut bad_psb = PSB.to_vec();
    bad_psb[15] = 0x83;
    assert_eq!(error_at(&bad_psb, 0), Malformed("PSB"));
    assert_eq!(error_at(&[0x07; 12], 0), Malformed("CYC"));
    assert_eq!(error_at(&[0x02], 0), Truncated);
    assert_eq!(error_at(&[], 0), Truncated);
    assert_eq!(error_at(&[0x00], 5), Truncated);
    let error = decode(&[0x00, 0x00, 0xc9], 2, BlockContext::None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "Intel PT packet at offset 0x2: unknown opcode"
    );
}

#[test]
fn recovery_policies() {
    // PAD, bad byte, PAD, PSB, PSBEND.
    let mut data = vec![0x00, 0xc9, 0x00];
    data.extend_from_slice(&PSB);
    data.extend_from_slice(&[0x02, 0x23]);

    let stop: Vec<_> = Packets::new(&data).collect();
    assert_eq!(stop.len(), 2);
    assert_eq!(stop[1].unwrap_err().offset, 1);

    let skip: Vec<usize> = Packets::new(&data)
        .with_recovery(Recovery::SkipByte)
        .filter_map(|item| item.ok().map(|(offset, _)| offset))
        .collect();
    assert_eq!(skip, [0, 2, 3, 19]);

    let resync: Vec<usize> = Packets::new(&data)
        .with_recovery(Recovery::NextPsb)
        .filter_map(|item| item.ok().map(|(offset, _)| offset))
        .collect();
    assert_eq!(resync, [0, 3, 19]);

    // Manual recovery after Stop.
    let mut packets = Packets::new(&data);
    assert!(packets.next().unwrap().is_ok());
    assert!(packets.next().unwrap().is_err());
    assert!(packets.next().is_none());
    assert_eq!(packets.resync(), Some(3));
    assert_eq!(packets.next(), Some(Ok((3, Packet::Psb))));
}

#[test]
fn next_psb_finds_the_psb_at_the_end_of_a_run() {
    let mut data = vec![0x00, 0x02, 0x82];
    data.extend_from_slice(&PSB);
    data.push(0x00);
    // `02 82` + PSB: the PSB is the last 16 bytes of the run.
    assert_eq!(next_psb(&data, 0), Some(3));
    assert_eq!(next_psb(&data, 4), None);
    assert_eq!(next_psb(&data, 1000), None);
    assert_eq!(next_psb(&PSB, 0), Some(0));
    assert_eq!(next_psb(&PSB[..15], 0), None);
}

/// A small deterministic generator, so that the fuzz below needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Decodes everything with every recovery policy and both printers; it must not panic, every
/// packet must lie inside the buffer, and offsets must increase.
fn exercise(data: &[u8]) {
    for recovery in [Recovery::SkipByte, Recovery::NextPsb, Recovery::Stop] {
        let mut last = None;
        for item in Packets::new(data).with_recovery(recovery) {
            let offset = match item {
                Ok((offset, packet)) => {
                    assert!(offset + packet.size() <= data.len());
                    offset
                }
                Err(error) => error.offset,
            };
            assert!(last < Some(offset), "offsets must increase");
            last = Some(offset);
        }
    }
    let mut sink = Vec::new();
    write_perf_dump(&mut sink, data).expect("write to a Vec");
    ptlens::pt::dump::write_ptdump(&mut sink, data, &Default::default()).expect("write");
}

#[test]
fn never_panics_on_short_or_random_input() {
    // Every input of one and two bytes, and every three-byte input starting with 02.
    for a in 0..=255u8 {
        exercise(&[a]);
        for b in 0..=255u8 {
            exercise(&[a, b]);
            exercise(&[0x02, a, b]);
        }
    }
    // Random buffers, biased towards opcode-rich bytes so that long packets get exercised.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let interesting = [
        0x02, 0x82, 0x99, 0x19, 0x59, 0xd9, 0x63, 0x14, 0x07, 0xff, 0x00,
    ];
    for _ in 0..3000 {
        let len = (rng.next() % 64) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                if r & 3 == 0 {
                    interesting[(r >> 8) as usize % interesting.len()]
                } else {
                    (r >> 16) as u8
                }
            })
            .collect();
        exercise(&data);
    }
}

fn perf_dump(data: &[u8]) -> String {
    let mut out = Vec::new();
    write_perf_dump(&mut out, data).expect("write to a Vec");
    String::from_utf8(out).expect("ASCII")
}

#[test]
fn perf_dump_folds_pads_and_reports_bad_bytes() {
    let data = [
        0x2d, 0x94, 0xd7, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // TIP + 6 PADs: 4 fold in
        0xc9, // bad
        0x02, 0x43, // PIP cut off by the end of the buffer
    ];
    let expected = [
        ".  00000000:  2d 94 d7 00 00 00 00 00                         TIP 0xd794",
        ".  00000008:  00                                              PAD",
        ".  00000009:  c9                                              Bad packet!",
        ".  0000000a:  02                                              Bad packet!",
        // perf decodes what is left of a cut-off packet afresh: 43 is a CYC.
        ".  0000000b:  43                                              CYC 0x8",
    ];
    assert_eq!(perf_dump(&data), expected.join("\n") + "\n");
}

#[test]
fn perf_dump_describes_every_kind_as_perf_does() {
    let cases: [(&[u8], &str); 14] = [
        (
            &[0x02, 0x43, 0x00, 0x34, 0xd4, 0x3f, 0x00, 0x00],
            "PIP 0x1fea1a00 (NR=0)",
        ),
        (&[0x99, 0x01], "MODE.Exec IF:0 64"),
        (&[0x99, 0x20], "MODE.TSX TXAbort:0 InTX:0"),
        (
            &[0x02, 0x73, 0x12, 0x34, 0x00, 0x56, 0x01],
            "TMA CTC 0x3412 FC 0x156",
        ),
        (&[0xd8], "TNT TNTTNN (6)"),
        (&[0x01], "TIP.PGD no ip"),
        (&[0x02, 0x63, 0x80], "BBP SZ 4-byte Type 0x0"),
        (
            &[0x02, 0x92, 0xef, 0xcd, 0xab, 0x90],
            "PTWRITE 0x90abcdef IP:1",
        ),
        (
            &[0x02, 0xc2, 0x0b, 0, 0, 0, 1, 0, 0, 0],
            "MWAIT 0x10000000b Hints 0xb Extensions 0x1",
        ),
        (
            &[0x02, 0x22, 0x80, 0x12],
            "PWRE 0x1280 HW:1 CState:1 Sub-CState:2",
        ),
        (
            &[0x02, 0xa2, 0x25, 0x01, 0, 0, 0],
            "PWRX 0x125 Last CState:2 Deepest CState:5 Wake Reason 0x1",
        ),
        (&[0x02, 0x13, 0x81, 0x0e], "CFE IP:1 Type 0x01 Vector 0xe"),
        (&[0x02, 0x83], "TraceSTOP"),
        (&[0x02, 0xc8, 0xcd, 0xab, 0, 0, 0], "VMCS 0xabcd"),
    ];
    for (bytes, description) in cases {
        let text = perf_dump(bytes);
        assert_eq!(
            text.get(62..),
            Some(format!("{description}\n").as_str()),
            "{text}"
        );
    }
    // perf 6.1 does not know TRIG: it steps over it byte by byte.
    assert!(perf_dump(&[0xd9, 0x20, 0xa1]).starts_with(".  00000000:  d9"));
    assert!(perf_dump(&[0xd9, 0x20, 0xa1])
        .lines()
        .next()
        .unwrap_or("")
        .ends_with("Bad packet!"));
}
