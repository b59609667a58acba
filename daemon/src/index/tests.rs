use std::sync::Arc;

use super::*;
use crate::pt::flow::BranchKind;

fn addr(offset: u64) -> CodeAddr {
    CodeAddr {
        binary: BinaryKey {
            machine_pid: 0,
            id: BinaryId::Path(Arc::from("/bin/prog")),
        },
        offset,
    }
}

fn shape(size: u8, branch: Option<BranchKind>) -> InsnShape {
    InsnShape { size, branch }
}

/// A little loop: a block of three instructions ending in a jcc, then its target or fall-through.
fn feed(builder: &mut IndexBuilder, blocks: &[(u64, bool, bool)]) {
    let body = [
        (0, shape(3, None)),
        (3, shape(4, None)),
        (7, shape(2, Some(BranchKind::Conditional))),
    ];
    for &(start, entered, taken) in blocks {
        builder.count_block((1, 1), &addr(start), &body);
        if entered {
            builder.count_entry((1, 1), &addr(start));
        }
        if taken {
            builder.count_taken((1, 1), Some(&addr(start + 7)), true, None);
        }
    }
}

#[test]
fn counts_blocks_and_taken_branches() {
    let mut b = IndexBuilder::new();
    feed(&mut b, &[(0x100, true, true), (0x100, true, false)]);
    b.count_taken((1, 1), None, false, None);
    let index = b.finish();
    let jcc = index.counts[&addr(0x107)];
    assert_eq!(jcc.instructions, 2);
    assert_eq!(jcc.cond_branches, 2);
    assert_eq!(jcc.taken, 1);
    assert_eq!(jcc.not_taken(), 1);
    assert_eq!(index.counts[&addr(0x100)].entries, 2);
    assert_eq!(index.counts[&addr(0x103)].entries, 0);
    assert_eq!(index.unmapped.taken, 1);
    assert_eq!(index.threads[&(1, 1)][&addr(0x107)], jcc);
}

#[test]
fn split_streams_merge_to_the_same_index() {
    let stream: Vec<(u64, bool, bool)> = (0..40)
        .map(|i| (0x100 + (i % 3) * 0x10, i % 2 == 0, i % 5 != 0))
        .collect();
    let mut whole = IndexBuilder::new();
    feed(&mut whole, &stream);
    let whole = whole.finish();
    for cut in [0, 1, 17, 39, 40] {
        let (a, b) = stream.split_at(cut);
        let mut first = IndexBuilder::new();
        feed(&mut first, a);
        let mut second = IndexBuilder::new();
        feed(&mut second, b);
        let mut merged = first.finish();
        merged.merge(second.finish());
        // An empty half adds an empty thread entry only when it saw blocks.
        merged.threads.retain(|_, m| !m.is_empty());
        assert_eq!(merged, whole, "cut at {cut}");
    }
}
