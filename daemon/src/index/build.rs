//! An [`Index`] of a whole recording, its PSB segments decoded on every core.

use crate::debuginfo::BinaryCache;
use crate::decode::{self, DecodeError, DecodeOptions, DecodeStats, ParallelOptions};
use crate::perf::Recording;
use crate::sideband::Model;

use super::{Index, IndexBuilder};

/// Decodes `recording` with [`decode::decode_parallel`] and counts it: exactly the index one
/// [`IndexBuilder`] over the sequential [`decode::decode`] builds (tests hold it to that on
/// every sample and on damaged copies of them). A damaged recording (decoder errors other than
/// overflows) is decoded again in order, since perf's recovery from damage crosses PSBs.
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
    if stats.errors > stats.overflows {
        // Damage: perf's recovery from it crosses PSBs (see `decode_parallel`).
        tracing::info!(
            errors = stats.errors - stats.overflows,
            "damaged trace: decoding again in order for exact counts"
        );
        let mut builder = IndexBuilder::new();
        let stats = decode::decode(recording, model, binaries, options, &mut builder)?;
        return Ok((builder.finish(), stats));
    }
    Ok((index, stats))
}
