//! The packet iterator under every recovery policy, and both packet listings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ptlens::pt::dump::{write_perf_dump, write_ptdump, PtdumpOptions};
use ptlens::pt::packets::{Packets, Recovery};

fuzz_target!(|bytes: &[u8]| {
    for recovery in [Recovery::Stop, Recovery::SkipByte, Recovery::NextPsb] {
        let mut last_offset = None;
        for item in Packets::new(bytes).with_recovery(recovery) {
            if let Ok((offset, _packet)) = item {
                // Offsets only ever move forward: a packet never has size 0.
                assert!(last_offset.map_or(true, |last| offset > last));
                last_offset = Some(offset);
            }
        }
    }
    let _ = write_perf_dump(&mut std::io::sink(), bytes);
    for no_sync in [false, true] {
        let options = PtdumpOptions {
            raw: true,
            last_ip: true,
            exec_mode: true,
            no_sync,
            ..PtdumpOptions::default()
        };
        let _ = write_ptdump(&mut std::io::sink(), bytes, &options);
    }
});
