//! The whole perf.data reader: header, attrs, features, every record, the AUX queues.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ptlens::perf::PerfData;

fuzz_target!(|bytes: &[u8]| {
    let data = PerfData::from_bytes("fuzz.data", bytes.to_vec());
    let Ok(recording) = data.recording() else {
        return;
    };
    let features = &recording.features;
    let _ = features.build_ids();
    let _ = features.auxtrace_index();
    let _ = features.nr_cpus();
    let _ = features.pmu_mappings();
    let _ = features.dir_format();
    let _ = features.compressed();
    for record in recording.records() {
        if record.is_err() {
            break;
        }
    }
    if let Ok(queues) = recording.aux_queues() {
        let _ = queues;
    }
});
