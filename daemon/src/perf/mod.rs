//! Reading perf.data files. Knows nothing of Intel PT packets.
