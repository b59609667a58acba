//! The order perf delivers records in: its ordered-events queue (tools/perf/util/ordered-events.c).
//!
//! Records with a timestamp are queued; a FINISHED_ROUND flushes those at or below the largest
//! timestamp seen by the *previous* round, then remembers the current largest one. Records
//! without a timestamp (time 0, no sample id) and perf's own record types are delivered at
//! once. Ties keep file order. Everything left is flushed at the end.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How one record enters the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Delivered when read.
    Immediate,
    /// Queued by its timestamp (never 0 or `u64::MAX`).
    Timed(u64),
    /// FINISHED_ROUND.
    Round,
}

/// One delivered record: its index in file order and its effective time — the latest
/// timestamp delivered so far, which is when perf applies it (a record delivered late, or one
/// without a timestamp, takes effect at that point, not before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub index: usize,
    pub time: u64,
    /// Its own timestamp was below one already delivered (perf's "out of order event").
    pub late: bool,
}

/// The delivery order of `arrivals` (given in file order).
pub(crate) fn deliver(arrivals: impl IntoIterator<Item = Arrival>) -> Vec<Delivery> {
    let mut out = Vec::new();
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let (mut next_flush, mut max_timestamp, mut last) = (0u64, 0u64, 0u64);
    let flush = |queue: &mut BinaryHeap<Reverse<(u64, usize)>>,
                 limit: u64,
                 last: &mut u64,
                 out: &mut Vec<Delivery>| {
        while let Some(&Reverse((ts, index))) = queue.peek() {
            if ts > limit {
                break;
            }
            queue.pop();
            let late = ts < *last;
            *last = (*last).max(ts);
            out.push(Delivery {
                index,
                time: *last,
                late,
            });
        }
    };
    for (index, arrival) in arrivals.into_iter().enumerate() {
        match arrival {
            Arrival::Immediate => out.push(Delivery {
                index,
                time: last,
                late: false,
            }),
            Arrival::Timed(ts) => {
                max_timestamp = max_timestamp.max(ts);
                queue.push(Reverse((ts, index)));
            }
            // perf does nothing at all, not even note the maximum, while nothing is queued.
            Arrival::Round if queue.is_empty() => {}
            Arrival::Round => {
                // perf skips the flush while the limit is 0 (the first round).
                if next_flush != 0 {
                    flush(&mut queue, next_flush, &mut last, &mut out);
                }
                next_flush = max_timestamp;
            }
        }
    }
    flush(&mut queue, u64::MAX, &mut last, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Arrival::*;

    fn order(a: &[Arrival]) -> Vec<(usize, u64)> {
        deliver(a.iter().copied())
            .into_iter()
            .map(|d| (d.index, d.time))
            .collect()
    }

    #[test]
    fn rounds_flush_up_to_the_previous_rounds_maximum() {
        // Round 1: 30, 10. Round 2: 20, 40. Round 3: 35.
        let a = [
            Timed(30),
            Timed(10),
            Round,
            Timed(20),
            Immediate,
            Timed(40),
            Round,
            Timed(35),
            Round,
        ];
        // At the first round nothing is flushed (limit 0); at the second, up to 30; at the
        // third, up to 40; the immediate record comes when read, at time 0.
        assert_eq!(
            order(&a),
            vec![(4, 0), (1, 10), (3, 20), (0, 30), (7, 35), (5, 40)]
        );
    }

    #[test]
    fn late_records_take_effect_when_delivered() {
        let a = [Timed(50), Round, Round, Timed(20), Round, Immediate];
        let d = deliver(a.iter().copied());
        assert_eq!(d[0].index, 0);
        assert_eq!((d[1].index, d[1].time, d[1].late), (3, 50, true));
        assert_eq!((d[2].index, d[2].time), (5, 50));
    }

    #[test]
    fn an_empty_round_does_not_move_the_limit() {
        // A round with nothing queued changes nothing; 10 sets the limit at the next one.
        let a = [Round, Timed(10), Round, Timed(5), Round];
        assert_eq!(order(&a), vec![(3, 5), (1, 10)]);
    }

    #[test]
    fn ties_keep_file_order() {
        let a = [Timed(5), Timed(5), Timed(1), Timed(5)];
        assert_eq!(order(&a), vec![(2, 1), (0, 5), (1, 5), (3, 5)]);
    }
}
