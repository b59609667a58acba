//! Decoding every PSB segment on its own (`decode_segment`, as a parallel decode does) gives
//! exactly the per-IP instruction counts of one sequential `decode`: on a hand-built trace with
//! several PSBs, and on every libipt case whose trace has more than one.

use std::collections::BTreeMap;

use ptlens::pt::flow::insn::decode as decode_insn;
use ptlens::pt::flow::{decode, decode_segment, FlowConfig, FlowItem, Image, RawImage};
use ptlens::pt::packets::next_psb;

#[path = "support/libipt.rs"]
mod libipt;
#[path = "support/trace.rs"]
mod trace;

use trace::psb_at;

type Counts = BTreeMap<u64, u64>;

/// Adds the instructions of each block to `counts`, by IP.
fn counter<'a>(image: &'a dyn Image, counts: &'a mut Counts) -> impl FnMut(FlowItem<'_>) + 'a {
    move |item| {
        let FlowItem::Block(block) = item else { return };
        let mut ip = block.ip;
        for _ in 0..block.ninsn {
            *counts.entry(ip).or_default() += 1;
            // Inside a block only direct branches and non-branches occur.
            match decode_insn(image, &block.ctx, block.mode, ip) {
                Ok(insn) => ip = insn.target.unwrap_or_else(|| insn.next_ip()),
                Err(_) => break,
            }
        }
    }
}

fn sequential(trace: &[u8], image: &dyn Image) -> Counts {
    let mut counts = Counts::new();
    decode(
        trace,
        image,
        &FlowConfig::default(),
        counter(image, &mut counts),
    );
    counts
}

fn by_segment(trace: &[u8], image: &dyn Image) -> (Counts, usize) {
    let mut counts = Counts::new();
    let mut segments = 0;
    let mut psb = next_psb(trace, 0);
    while let Some(at) = psb {
        decode_segment(
            trace,
            at,
            image,
            &FlowConfig::default(),
            counter(image, &mut counts),
        );
        segments += 1;
        psb = next_psb(trace, at + 1);
    }
    (counts, segments)
}

#[test]
fn segments_sum_to_the_sequential_counts_on_a_hand_built_trace() {
    const BASE: u64 = 0x10_0000;
    // 00: call 10; 05: jnz 00; 07: jmp rax; 10: nop; 11: ret; 20: nop ...
    let mut code = vec![0x90u8; 0x40];
    code[..9].copy_from_slice(&[0xe8, 0x0b, 0, 0, 0, 0x75, 0xf9, 0xff, 0xe0]);
    code[0x11] = 0xc3;
    let mut image = RawImage::new();
    image.add(BASE, code);
    let mut trace = psb_at(BASE);
    // ret (compressed), jnz taken, twice; then a PSB in the middle of the loop.
    trace.push(0b0011_1110);
    trace.extend_from_slice(&psb_at(BASE));
    trace.push(0b0001_1100); // ret taken, jnz not taken
    trace.extend_from_slice(&[0x4d, 0x20, 0x00, 0x10, 0x00]); // TIP 0x100020
    trace.extend_from_slice(&psb_at(BASE + 0x22));
    trace.extend_from_slice(&[0x3d, 0x25, 0x00, 0x01]); // FUP 0x100025, TIP.PGD
                                                        // Garbage, then a segment whose code is not mapped, then a good one.
    trace.extend_from_slice(&[0x02, 0x77]);
    trace.extend_from_slice(&psb_at(BASE + 0x1000));
    trace.extend_from_slice(&psb_at(BASE + 0x30));
    trace.extend_from_slice(&[0x3d, 0x32, 0x00, 0x01]);

    let (segments, count) = by_segment(&trace, &image);
    assert_eq!(count, 5);
    let whole = sequential(&trace, &image);
    assert!(whole.values().sum::<u64>() >= 15, "{whole:x?}");
    assert_eq!(segments, whole);
}

#[test]
fn segments_sum_to_the_sequential_counts_on_libipt_cases() {
    let mut checked = 0;
    for name in libipt::case_names() {
        let case = libipt::Case::load(&name);
        let trace = case.trace();
        let mut image = RawImage::new();
        for (address, bytes) in case.images() {
            image.add(address, bytes);
        }
        let (segments, count) = by_segment(&trace, &image);
        if count < 2 {
            continue;
        }
        checked += 1;
        assert_eq!(segments, sequential(&trace, &image), "{name}");
    }
    assert!(checked >= 17, "only {checked} cases with several PSBs");
}
