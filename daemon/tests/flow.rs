//! `pt::flow` on hand-built traces: return compression, errors and resynchronisation, and an
//! endless loop without trace that must not hang.

use ptlens::pt::flow::ptxed::{print, PtxedOptions};
use ptlens::pt::flow::{decode, FlowConfig, FlowItem, RawImage};
use ptlens::pt::packets::PSB;

#[path = "support/trace.rs"]
mod trace;

use trace::{ip16, ip48, psb_at, tnt, FUP, OVF, TIP, TIP_PGD};

const BASE: u64 = 0x10_0000;

fn ptxed(trace: &[u8], image: &RawImage) -> Vec<String> {
    let mut out = Vec::new();
    print(&mut out, trace, image, &PtxedOptions::default()).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn compressed_return_and_async_disable() {
    // call l4; jz l5; hlt; l4: ret; l5: nop
    let mut image = RawImage::new();
    image.add(BASE, vec![0xe8, 3, 0, 0, 0, 0x74, 0x02, 0xf4, 0xc3, 0x90]);
    let mut trace = psb_at(BASE);
    // TNT: ret taken (compressed), jz taken; FUP at l5; TIP.PGD.
    trace.extend_from_slice(&[0x0e, 0x3d, 0x09, 0x00, 0x01]);
    assert_eq!(
        ptxed(&trace, &image),
        [
            "0000000000100000",
            "0000000000100008",
            "0000000000100005",
            "[disabled]"
        ]
    );
}

#[test]

fn missing_image_is_an_error_and_decoding_resumes_at_the_next_psb() {
    let mut image = RawImage::new();
    image.add(BASE, vec![0x90, 0xff, 0xe0]); // nop; jmp rax
    let mut trace = psb_at(BASE);
    trace.extend_from_slice(&[0x4d, 0x00, 0x20, 0x10, 0x00]); // TIP to 0x102000: not mapped
    trace.extend_from_slice(&[0x00; 4]);
    trace.extend_from_slice(&psb_at(BASE));
    trace.extend_from_slice(&[0x3d, 0x01, 0x00, 0x01]); // FUP 0x100001, TIP.PGD
    let lines = ptxed(&trace, &image);
    assert_eq!(lines[0], "0000000000100000");
    assert_eq!(lines[1], "0000000000100001");
    assert!(
        lines[2].ends_with("error: no memory mapped at this address]"),
        "{lines:?}"
    );
    assert_eq!(&lines[3..], ["0000000000100000", "[disabled]"]);

    let mut errors = 0;
    decode(&trace, &image, &FlowConfig::default(), |item| {
        if let FlowItem::Error(error) = item {
            assert_eq!(error.ip, 0x10_2000);
            errors += 1;
        }
    });
    assert_eq!(errors, 1);
}

#[test]
fn endless_jump_without_trace_ends() {
    let mut image = RawImage::new();
    image.add(BASE, vec![0xeb, 0xfe]); // jmp .
    let mut trace = psb_at(BASE);
    trace.extend_from_slice(&[0x3d, 0x05, 0x00, 0x01]); // FUP at an IP never reached, TIP.PGD
    let stats = decode(&trace, &image, &FlowConfig::default(), |_| {});
    assert_eq!(stats.errors, 1);
}

/// FUP at `ip` then TIP.PGD: tracing disabled asynchronously before `ip` executes.
fn disable_at(ip: u64) -> Vec<u8> {
    let mut bytes = ip16(FUP, ip).to_vec();
    bytes.push(TIP_PGD);
    bytes
}

fn ips(range: &[u64]) -> Vec<String> {
    range
        .iter()
        .map(|ip| format!("{:016x}", BASE + ip))
        .collect()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn tnt_with_compressed_returns_through_two_calls() {
    let mut code = vec![0x90u8; 0x14];
    // 00: call 10; 05: call 10; 0a: jnz 00; 0c: hlt; 10: jz 13; 12: nop; 13: ret
    code[..0x0d].copy_from_slice(&[0xe8, 0x0b, 0, 0, 0, 0xe8, 0x06, 0, 0, 0, 0x75, 0xf4, 0xf4]);
    code[0x10..].copy_from_slice(&[0x74, 0x01, 0x90, 0xc3]);
    let mut image = RawImage::new();
    image.add(BASE, code);
    // jz, ret, jz, ret, jnz; jz, ret, jz, ret, jnz: returns compressed to taken bits.
    let trace = concat(&[
        &psb_at(BASE),
        &[tnt("nttttn"), tnt("tntn")],
        &disable_at(BASE + 0x0c),
    ]);
    let mut expected = ips(&[
        0x00, 0x10, 0x12, 0x13, 0x05, 0x10, 0x13, 0x0a, 0x00, 0x10, 0x12, 0x13, 0x05, 0x10, 0x12,
        0x13, 0x0a,
    ]);
    expected.push("[disabled]".into());
    assert_eq!(ptxed(&trace, &image), expected);
}

#[test]
fn a_compressed_return_without_a_call_is_an_error() {
    let mut image = RawImage::new();
    image.add(BASE, vec![0xc3]); // ret
    let trace = concat(&[&psb_at(BASE), &[tnt("t")]]);
    let lines = ptxed(&trace, &image);
    assert_eq!(lines[0], "0000000000100000");
    assert!(
        lines[1].ends_with("error: compressed return without call]"),
        "{lines:?}"
    );
}

#[test]
fn deferred_tip_after_the_tnt_of_later_branches() {
    // 00: jmp rax; 10: jz 13; 12: nop; 13: nop
    let mut code = vec![0x90u8; 0x14];
    code[..2].copy_from_slice(&[0xff, 0xe0]);
    code[0x10..0x12].copy_from_slice(&[0x74, 0x01]);
    let mut image = RawImage::new();
    image.add(BASE, code);
    // The TNT bit of the jz at the target comes before the jmp's TIP.
    let trace = concat(&[
        &psb_at(BASE),
        &[tnt("t")],
        &ip16(TIP, BASE + 0x10),
        &disable_at(BASE + 0x13),
    ]);
    let mut expected = ips(&[0x00, 0x10]);
    expected.push("[disabled]".into());
    assert_eq!(ptxed(&trace, &image), expected);
}

#[test]
fn fup_and_tip_are_an_interrupt() {
    let mut code = vec![0x90u8; 0x110];
    code[0x02] = 0xf4; // hlt: never reached
    let mut image = RawImage::new();
    image.add(BASE, code);
    let trace = concat(&[
        &psb_at(BASE),
        &ip16(FUP, BASE + 0x01),
        &ip16(TIP, BASE + 0x100),
        &disable_at(BASE + 0x102),
    ]);
    let mut expected = ips(&[0x00]);
    expected.push("[interrupt]".into());
    expected.extend(ips(&[0x100, 0x101]));
    expected.push("[disabled]".into());
    assert_eq!(ptxed(&trace, &image), expected);

    let options = PtxedOptions {
        event_ip: true,
        ..PtxedOptions::default()
    };
    let mut out = Vec::new();
    print(&mut out, &trace, &image, &options).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("[interrupt, from: 0000000000100001, to: 0000000000100100]"),
        "{out}"
    );
}

#[test]
fn overflow_resumes_at_the_fup() {
    let mut image = RawImage::new();
    image.add(BASE, vec![0x90u8; 0x20]);
    let trace = concat(&[
        &psb_at(BASE),
        &OVF,
        &ip48(FUP, BASE + 0x10),
        &disable_at(BASE + 0x12),
    ]);
    let mut expected = vec!["[overflow]".to_owned()];
    expected.extend(ips(&[0x10, 0x11]));
    expected.push("[disabled]".into());
    assert_eq!(ptxed(&trace, &image), expected);
}

#[test]
fn overflow_with_tracing_disabled_resumes_at_tip_pge() {
    let mut image = RawImage::new();
    image.add(BASE, vec![0x90u8; 0x20]);
    let trace = concat(&[
        &psb_at(BASE),
        &OVF,
        &ip48(0x11, BASE + 0x10), // TIP.PGE
        &disable_at(BASE + 0x11),
    ]);
    let mut expected = vec!["[overflow]".to_owned(), "[enabled]".to_owned()];
    expected.extend(ips(&[0x10]));
    expected.push("[disabled]".into());
    assert_eq!(ptxed(&trace, &image), expected);
}

#[test]
fn garbage_between_psbs_is_an_error_and_decoding_resumes_at_the_next_psb() {
    let mut image = RawImage::new();
    image.add(BASE, vec![0x90u8; 0x20]);
    // 02 77 is no packet.
    let trace = concat(&[
        &psb_at(BASE),
        &[0x02, 0x77, 0xff, 0xff],
        &psb_at(BASE + 0x08),
        &disable_at(BASE + 0x0a),
    ]);
    let lines = ptxed(&trace, &image);
    assert!(lines[0].ends_with("error: unknown opcode]"), "{lines:?}");
    let mut expected = ips(&[0x08, 0x09]);
    expected.push("[disabled]".into());
    assert_eq!(lines[1..], expected);

    let mut errors = Vec::new();
    let stats = decode(&trace, &image, &FlowConfig::default(), |item| {
        if let FlowItem::Error(error) = item {
            errors.push(error);
        }
    });
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].offset, psb_at(0).len());
    assert_eq!(stats.instructions, 2);
}

#[test]
fn mode_exec_applies_at_the_tip_it_precedes() {
    // 00: jmp rax (64-bit); 100: 48 90 = dec eax; nop in 32-bit code, one insn in 64-bit.
    let mut code = vec![0x90u8; 0x110];
    code[..2].copy_from_slice(&[0xff, 0xe0]);
    code[0x100] = 0x48;
    let mut image = RawImage::new();
    image.add(BASE, code);
    let trace = concat(&[
        &psb_at(BASE),
        &[0x99, 0x02], // MODE.Exec 32-bit
        &ip16(TIP, BASE + 0x100),
        &disable_at(BASE + 0x102),
    ]);
    let lines = ptxed(&trace, &image);
    assert_eq!(lines.first().map(String::as_str), Some("0000000000100000"));
    assert_eq!(
        lines.iter().filter(|line| !line.starts_with('[')).count(),
        3,
        "two 32-bit instructions at the target: {lines:?}"
    );
    assert!(lines.contains(&"0000000000100101".to_owned()), "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("[disabled]"));

    // The same bytes without the mode change: one 64-bit instruction.
    let trace = concat(&[
        &psb_at(BASE),
        &ip16(TIP, BASE + 0x100),
        &disable_at(BASE + 0x102),
    ]);
    let stats = decode(&trace, &image, &FlowConfig::default(), |_| {});
    assert_eq!((stats.instructions, stats.errors), (2, 0));
}

/// Fuzz finding: with `--resync-on-error`, an error that resynchronising does not get past
/// (OVF, MODE.TSX, then FUPs with tracing disabled) must not repeat forever.
#[test]
fn resync_on_error_does_not_repeat_an_error_forever() {
    let mut image = RawImage::new();
    image.add(BASE, vec![0x90]);
    let trace = concat(&[
        &PSB,
        &[0x99, 0x01, 0x02, 0x23], // MODE.Exec 64-bit, PSBEND
        &OVF,
        &[0x99, 0x21], // MODE.TSX begin
        &ip48(FUP, 0x1000),
        &ip16(FUP, 0x1001),
        &[TIP_PGD],
    ]);
    let options = PtxedOptions {
        resync_on_error: true,
        ..PtxedOptions::default()
    };
    let mut out = Vec::new();
    print(&mut out, &trace, &image, &options).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.lines().count() < 10, "{out}");
}
