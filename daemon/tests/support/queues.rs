//! Shared by the tests of segments decoded apart (`parallel.rs`, `segments.rs`): branch events
//! grouped by AUX queue. Segments decoded again or in parallel come queue by queue, a full
//! decode in perf's order across queues; within a queue both are in trace order.

use std::collections::BTreeMap;

use ptlens::decode::BranchEvent;

/// The events of each queue (its CPU, or its thread when per-thread), in order.
pub fn per_queue(
    events: impl IntoIterator<Item = BranchEvent>,
) -> BTreeMap<(i32, i32), Vec<BranchEvent>> {
    let mut out: BTreeMap<(i32, i32), Vec<BranchEvent>> = BTreeMap::new();
    for e in events {
        let o = &e.origin;
        let key = if o.cpu == -1 {
            (-1, o.tid)
        } else {
            (o.cpu, -1)
        };
        out.entry(key).or_default().push(e);
    }
    out
}
