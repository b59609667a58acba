//! `pt::dump::write_perf_dump` against `perf script -D` on a real recording (skylake-echo).
//!
//! The AUXTRACE buffers are found with a minimal scan of the perf.data file written here, so this
//! test does not depend on the perf.data reader. The expected text comes from the installed perf
//! when there is one; without perf, the test compares with a fingerprint of perf 6.1's output
//! recorded when this test was written (or fails, with `PTLENS_REQUIRE_PERF=1`).

use std::path::PathBuf;
use std::process::Command;

use ptlens::pt::dump::write_perf_dump;

const PERF_RECORD_AUXTRACE: u32 = 71;

/// perf 6.1's packet lines for skylake-echo: line count, byte count and 64-bit FNV-1a hash.
const PERF_6_1_LINES: usize = 86_631;
const PERF_6_1_BYTES: usize = 6_579_236;
const PERF_6_1_FNV1A: u64 = 0xbf5c_7b8d_3196_ab75;

fn recording() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/skylake-echo/perf.data")
}

fn u64_at(data: &[u8], offset: usize) -> u64 {
    let bytes = data.get(offset..offset + 8).expect("field inside the file");
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// The AUXTRACE payloads of a little-endian file-mode perf.data, in file order.
fn auxtrace_buffers(file: &[u8]) -> Vec<&[u8]> {
    assert_eq!(
        file.get(..8),
        Some(&b"PERFILE2"[..]),
        "a little-endian perf.data"
    );
    let start = u64_at(file, 40) as usize;
    let end = start + u64_at(file, 48) as usize;
    let mut buffers = Vec::new();
    let mut pos = start;
    while pos + 8 <= end {
        let kind = u32::from_le_bytes(file[pos..pos + 4].try_into().expect("4 bytes"));
        let size = u16::from_le_bytes(file[pos + 6..pos + 8].try_into().expect("2 bytes")) as usize;
        assert!(size >= 8, "record at {pos:#x} has size {size}");
        if kind == PERF_RECORD_AUXTRACE {
            // The payload follows the record and is not counted in its size.
            let payload = u64_at(file, pos + 8) as usize;
            buffers.push(&file[pos + size..pos + size + payload]);
            pos += payload;
        }
        pos += size;
    }
    buffers
}

/// Packet lines of `perf script -D`: `.  ` then 8 hex digits (raw record dumps have 4).
fn is_packet_line(line: &str) -> bool {
    let bytes = line.as_bytes();
    line.starts_with(".  ")
        && bytes.len() > 12
        && bytes[3..11].iter().all(u8::is_ascii_hexdigit)
        && bytes[11] == b':'
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

fn perf_packet_lines() -> Option<String> {
    let output = Command::new("perf")
        .args(["script", "-D", "-i"])
        .arg(recording())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = String::new();
    for line in text.lines().filter(|line| is_packet_line(line)) {
        lines.push_str(line);
        lines.push('\n');
    }
    Some(lines)
}

#[test]
fn skylake_echo_matches_perf_script_dump() {
    let file = std::fs::read(recording()).expect("tests/data/skylake-echo/perf.data");
    let buffers = auxtrace_buffers(&file);
    assert_eq!(
        buffers.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [12_240, 137_728]
    );
    let mut ours = Vec::new();
    for buffer in &buffers {
        write_perf_dump(&mut ours, buffer).expect("write to a Vec");
    }
    let ours = String::from_utf8(ours).expect("ASCII");

    match perf_packet_lines() {
        Some(theirs) => {
            for (number, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
                assert_eq!(a, b, "line {} differs", number + 1);
            }
            assert_eq!(ours.lines().count(), theirs.lines().count());
            println!(
                "matched perf script -D: {} packet lines",
                theirs.lines().count()
            );
        }
        None => {
            assert!(
                std::env::var_os("PTLENS_REQUIRE_PERF").is_none(),
                "perf is required (PTLENS_REQUIRE_PERF) but `perf script -D` did not run"
            );
            println!("perf not available: comparing with perf 6.1's recorded fingerprint");
            assert_eq!(ours.lines().count(), PERF_6_1_LINES);
            assert_eq!(ours.len(), PERF_6_1_BYTES);
            assert_eq!(fnv1a(ours.as_bytes()), PERF_6_1_FNV1A);
        }
    }
    // Our text is perf 6.1's either way (with a newer perf, this separates its changes from ours).
    assert_eq!(fnv1a(ours.as_bytes()), PERF_6_1_FNV1A);
}
