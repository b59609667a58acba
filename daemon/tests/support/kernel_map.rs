//! Shared by the kernel tests (`kernel.rs`, `kernel_lines.rs`).

use std::sync::Arc;

use ptlens::sideband::Map;

/// A kernel map as perf records it: pid -1, `[kernel.kallsyms]_text`, `pgoff` the run-time
/// address of `_text`.
pub fn kernel_map(start: u64, len: u64) -> Map {
    Map {
        start,
        len,
        pgoff: start,
        filename: Arc::from("[kernel.kallsyms]_text"),
        prot: None,
        flags: None,
        inode: None,
        build_id: None,
        cpumode: 1,
        time: 0,
    }
}
