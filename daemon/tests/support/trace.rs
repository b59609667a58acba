//! Intel PT packets for hand-built traces, shared by the `flow*` tests.
#![allow(dead_code)]

use ptlens::pt::packets::PSB;

/// PSB+ with FUP (sign-extended 48-bit) at `ip`, MODE.Exec 64-bit, PSBEND.
pub fn psb_at(ip: u64) -> Vec<u8> {
    let mut trace = PSB.to_vec();
    trace.push(0x7d);
    trace.extend_from_slice(&ip.to_le_bytes()[..6]);
    trace.extend_from_slice(&[0x99, 0x01, 0x02, 0x23]);
    trace
}

/// Short TNT with `bits` ('t' taken, 'n' not taken), oldest first; at most 6.
pub fn tnt(bits: &str) -> u8 {
    assert!((1..=6).contains(&bits.len()));
    let value = bits
        .bytes()
        .fold(1u8, |acc, bit| acc << 1 | u8::from(bit == b't'));
    value << 1
}

/// An IP packet `opcode` (TIP 0x0d, TIP.PGE 0x11, TIP.PGD 0x01, FUP 0x1d) with the low 16 bits
/// of `ip` (IP compression 1: the upper bits come from the last IP).
pub fn ip16(opcode: u8, ip: u64) -> [u8; 3] {
    let [lo, hi, ..] = ip.to_le_bytes();
    [opcode | 1 << 5, lo, hi]
}

/// An IP packet with the whole IP (IP compression 3, 48 bits sign-extended), as hardware
/// sends after an overflow (which forgets the last IP).
pub fn ip48(opcode: u8, ip: u64) -> Vec<u8> {
    let mut bytes = vec![opcode | 3 << 5];
    bytes.extend_from_slice(&ip.to_le_bytes()[..6]);
    bytes
}

pub const TIP: u8 = 0x0d;
pub const TIP_PGD: u8 = 0x01;
pub const FUP: u8 = 0x1d;
pub const OVF: [u8; 2] = [0x02, 0xf3];
