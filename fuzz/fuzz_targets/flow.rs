#![no_main]
//! The flow decoder on arbitrary bytes: as trace over a small fixed image (whole buffer, each
//! PSB segment alone, and ptxed's resync-on-error path), and with the first part of the input
//! as code. Must not panic or hang.

use libfuzzer_sys::fuzz_target;
use ptlens::pt::flow::ptxed::{print, PtxedOptions};
use ptlens::pt::flow::{decode, decode_segment, FlowConfig, RawImage};
use ptlens::pt::packets::next_psb;

fuzz_target!(|data: &[u8]| {
    let config = FlowConfig::default();
    // call +3; jz +2; hlt; ret; nop; jmp rax; jmp .
    let mut fixed = RawImage::new();
    fixed.add(0x1000, vec![0xe8, 3, 0, 0, 0, 0x74, 0x02, 0xf4, 0xc3, 0x90, 0xff, 0xe0, 0xeb, 0xfe]);
    decode(data, &fixed, &config, |_| {});
    let mut psb = next_psb(data, 0);
    for _ in 0..4 {
        let Some(at) = psb else { break };
        decode_segment(data, at, &fixed, &config, |_| {});
        psb = next_psb(data, at + 1);
    }
    let options = PtxedOptions {
        resync_on_error: true,
        event_ip: true,
        ..PtxedOptions::default()
    };
    let _ = print(&mut std::io::sink(), data, &fixed, &options);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (code, trace) = data.split_at(split);
    let mut image = RawImage::new();
    image.add(0x1000, code.to_vec());
    decode(trace, &image, &config, |_| {});
});
