//! `pt::flow` on hand-built traces: return compression, errors and resynchronisation, and an
//! endless loop without trace that must not hang.

use ptlens::pt::flow::ptxed::{print, PtxedOptions};
use ptlens::pt::flow::{decode, FlowConfig, FlowItem, RawImage};
use ptlens::pt::packets::PSB;

const BASE: u64 = 0x10_0000;

/// PSB+ with FUP (sign-extended 48-bit) at `ip`, MODE.Exec 64-bit, PSBEND.
fn psb_at(ip: u64) -> Vec<u8> {
    let mut trace = PSB.to_vec();
    trace.push(0x7d);
    trace.extend_from_slice(&ip.to_le_bytes()[..6]);
    trace.extend_from_slice(&[0x99, 0x01, 0x02, 0x23]);
    trace
}

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
