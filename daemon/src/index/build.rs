//! An [`Index`] of a whole recording, its PSB segments decoded on every core.

use crate::debuginfo::BinaryCache;
use crate::decode::{self, DecodeError, DecodeOptions, DecodeStats, ParallelOptions};
use crate::perf::Recording;
use crate::sideband::Model;

use super::{Index, IndexBuilder};

/// Decodes `recording` with [`decode::decode_parallel`] and counts it: exactly the index one
/// [`IndexBuilder`] over the sequential [`decode::decode`] builds (a test holds it to that on
/// every sample).
pub fn build(
    recording: &Recording<'_>,
    model: &Model,
    binaries: &BinaryCache,
    options: &DecodeOptions,
    parallel: &ParallelOptions,
) -> Result<(Index, DecodeStats), DecodeError> {
    let mut index = Index::default();
    // Chunks arrive in (queue, offset) order: each settles what the one before left pending.
    let mut last: Option<IndexBuilder> = None;
    let stats = decode::decode_parallel(
        recording,
        model,
        binaries,
        options,
        parallel,
        IndexBuilder::new,
        |builder| {
            if let Some(mut before) = last.replace(builder) {
                if let Some(now) = &last {
                    before.settle(now);
                }
                index.merge(before.finish());
            }
        },
    )?;
    if let Some(builder) = last {
        index.merge(builder.finish());
    }
    Ok((index, stats))
}
