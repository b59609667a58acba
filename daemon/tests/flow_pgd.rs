//! `pt::flow` with a [`PgdFilter`]: a TIP.PGD bound as perf 6.1 binds it with an address filter
//! (the first direct branch whose target leaves the region, a conditional one only when its
//! target leaves), not at the TIP.PGD's IP as libipt does.

use ptlens::pt::flow::{
    AddrFilter, AddrRange, AddrRangeKind, Block, BlockConfig, BlockDecoder, ErrorKind, EventKind,
    PgdFilter, RawImage,
};

#[path = "support/trace.rs"]
mod trace;

use trace::{ip16, psb_at, tnt, TIP_PGD};

const BASE: u64 = 0x10_0000;

/// 00: call 10; 05: jz 20; 07: jmp 100; 10: ret; 20: jz 200 (near); 100: ret; elsewhere hlt.
fn image() -> RawImage {
    let mut code = vec![0xf4u8; 0x210];
    code[..0x0c].copy_from_slice(&[0xe8, 0x0b, 0, 0, 0, 0x74, 0x19, 0xe9, 0xf4, 0, 0, 0]);
    code[0x10] = 0xc3;
    code[0x20..0x26].copy_from_slice(&[0x0f, 0x84, 0xda, 0x01, 0, 0]);
    code[0x100] = 0xc3;
    let mut image = RawImage::new();
    image.add(BASE, code);
    image
}

/// Traced: `BASE..=BASE + last`.
fn filter(last: u64) -> AddrFilter {
    let mut filter = AddrFilter::default();
    filter.ranges[0] = AddrRange {
        kind: AddrRangeKind::Filter,
        start: BASE,
        end: BASE + last,
    };
    filter
}

/// The blocks (first and last instruction, relative to BASE), disables (with the IP after them,
/// 0 for none)
/// and the error that ended the walk, one branch per block as perf's decoder reports them.
fn walk(trace: &[u8], pgd: Option<&dyn PgdFilter>) -> Vec<String> {
    let image = image();
    let config = BlockConfig {
        end_on_call: true,
        end_on_jump: true,
        ..BlockConfig::default()
    };
    let mut decoder = BlockDecoder::new(trace, &image, config);
    if let Some(pgd) = pgd {
        decoder = decoder.with_pgd_filter(pgd);
    }
    let mut out = Vec::new();
    let mut status = decoder.sync_forward().unwrap();
    for _ in 0..100 {
        if status.event_pending() {
            match decoder.event() {
                Ok((event, next)) => {
                    if let EventKind::Disabled { .. } = event.kind {
                        let ip = decoder.ip();
                        let rel = if ip == 0 { 0 } else { ip - BASE };
                        out.push(format!("disabled, then {rel:x}"));
                    }
                    status = next;
                }
                Err(error) => {
                    out.push(format!("error: {error}"));
                    break;
                }
            }
            continue;
        }
        let mut block = Block::default();
        let result = decoder.next_block(&mut block);
        if block.ninsn > 0 {
            out.push(format!("{:x}..{:x}", block.ip - BASE, block.end_ip - BASE));
        }
        match result {
            Ok(next) => status = next,
            Err(ErrorKind::Eos) => break,
            Err(error) => {
                out.push(format!("error: {error}"));
                break;
            }
        }
    }
    out
}

#[test]
fn a_direct_branch_leaving_the_region_binds_the_disable() {
    // call (stays in), ret compressed, jz not taken, jmp 100 leaves: TIP.PGD at 100.
    let trace = [
        psb_at(BASE),
        vec![tnt("tn")],
        ip16(TIP_PGD, BASE + 0x100).to_vec(),
    ]
    .concat();
    let inside = filter(0x1f);
    let expected = ["0..0", "10..10", "5..5", "7..7", "disabled, then 100"];
    assert_eq!(walk(&trace, Some(&inside)), expected);
    // libipt's binding (at the TIP.PGD's IP) finds the same branch on a trace that fits the
    // filter.
    assert_eq!(walk(&trace, None), expected);
}

#[test]
fn the_filter_not_the_pgd_ip_decides_where_tracing_stopped() {
    let trace = [
        psb_at(BASE),
        vec![tnt("tn")],
        ip16(TIP_PGD, BASE + 0x100).to_vec(),
    ]
    .concat();
    // A filter that says 100 is traced: perf walks on past the jmp, to the ret there (which
    // needs trace, and takes the TIP.PGD).
    let wide = filter(0x1ff);
    assert_eq!(
        walk(&trace, Some(&wide)),
        [
            "0..0",
            "10..10",
            "5..5",
            "7..7",
            "100..100",
            "disabled, then 0"
        ]
    );
    // The filter is asked only once the TIP.PGD is the next packet: with it right after the
    // PSB+, a filter that says everything leaves ends tracing at the call already (perf's IP is
    // then the call's target); one that keeps the call in goes on to the ret.
    let trace = [psb_at(BASE), ip16(TIP_PGD, BASE + 0x10).to_vec()].concat();
    let everything_leaves = |_: &ptlens::pt::flow::Context, _: u64| true;
    assert_eq!(
        walk(&trace, Some(&everything_leaves)),
        ["0..0", "disabled, then 10"]
    );
    assert_eq!(
        walk(&trace, Some(&filter(0x1f))),
        ["0..0", "10..10", "disabled, then 0"]
    );
}

#[test]
fn a_conditional_branch_binds_only_when_its_target_leaves() {
    // jz 200 taken out of the region: no TNT bit, TIP.PGD with the target.
    let trace = [psb_at(BASE + 0x20), ip16(TIP_PGD, BASE + 0x200).to_vec()].concat();
    let inside = filter(0x1f);
    // perf moves its IP to the target.
    assert_eq!(
        walk(&trace, Some(&inside)),
        ["20..20", "disabled, then 200"]
    );
    // A filter that keeps the target traced: a conditional branch where trace says tracing
    // stopped does not fit (perf: "Conditional branch when expecting indirect branch").
    let wide = filter(0x3ff);
    assert_eq!(
        walk(&trace, Some(&wide)),
        ["20..20", "error: trace stream does not match query"]
    );
}
