//! A partition's input on a cluster instance (`run --nats`): the readings of one stream
//! partition in stream order and the clock ticks its owners wrote into it, each with its
//! stream timestamp as its arrival time and its stream sequence as its position. Time comes
//! from the stream, not from the clock of the machine reading it, so a partition's pipeline
//! computes the same warnings from the same stream whichever instance runs it and whenever:
//! the instance that takes a partition over computes exactly what the one before it did.
//!
//! Checkpoints: every `checkpoint_every` the feed puts a cut (`Ingest::Barrier`) behind the
//! last item, carrying its stream sequence and the feed's clock; the rules' snapshots at
//! that cut become the partition's checkpoint. A feed that goes on from a checkpoint gets
//! the stream from the checkpoint's `replay_from`: items up to its `covers_seq` refill the
//! open windows (marked `rebuild`, as a recovery from the write-ahead log does), the ones
//! after go through as they did for the owner before. A stop's handover ends the feed with
//! `Fed::LastCut`: one more cut, through the last item read, so the next owner goes on
//! from exactly there.

use std::time::{Duration, Instant};

use super::replay::{Bursting, Downstream, Ticks};
use crate::flow::{Closed, Cut, Ingest, Message};
use crate::metrics::Metrics;

/// One item of a partition's stream.
#[derive(Debug)]
pub(crate) enum Fed {
    /// A reading: `at_ms` its stream timestamp, `seq` its stream sequence.
    Message(Message),
    /// The partition's owner wrote a tick at this stream time (epoch ms), at stream
    /// sequence `seq`.
    Tick { at_ms: i64, seq: u64 },
    /// The instance hands the partition over (a stop): its consumer has stopped, and a
    /// last checkpoint is cut through the last item before this one.
    LastCut,
}

/// Where a partition's feed goes on from and how often it cuts checkpoints.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FeedPlan {
    /// The checkpoint's last stream sequence (0: none): items up to it only refill windows.
    pub covers_seq: u64,
    /// The checkpoint's clock: the next whole second to tick at.
    pub next_tick_ms: Option<i64>,
    /// The number the next checkpoint gets.
    pub next_checkpoint: u64,
    /// How often to cut a checkpoint (`None`: never).
    pub checkpoint_every: Option<Duration>,
}

/// Where a partition's items go: the decode queues, and cuts to all of them.
pub(crate) trait PartitionDownstream: Downstream {
    fn barrier(&mut self, cut: Cut) -> Result<(), Closed>;
}

impl PartitionDownstream for Bursting<'_> {
    fn barrier(&mut self, cut: Cut) -> Result<(), Closed> {
        self.flush()?;
        self.handoff().broadcast(|| Ingest::Barrier(cut))
    }
}

/// The checkpoint cuts a feed has made.
struct Cuts {
    /// The number of the next checkpoint.
    next_checkpoint: u64,
    /// The stream sequence the last cut went through.
    through_seq: u64,
    /// When the last cut was made.
    at: Instant,
}

impl Cuts {
    /// Cuts the next checkpoint through stream sequence `seq`.
    fn cut(
        &mut self,
        seq: u64,
        next_tick_ms: Option<i64>,
        downstream: &mut dyn PartitionDownstream,
    ) -> Result<(), Closed> {
        downstream.barrier(Cut {
            checkpoint: self.next_checkpoint,
            covers_seq: seq,
            messages: 0,
            next_tick_ms,
        })?;
        self.next_checkpoint += 1;
        self.through_seq = seq;
        self.at = Instant::now();
        Ok(())
    }
}

/// Feeds a partition's stream downstream until its sender is dropped; ticks go to the
/// decode workers at each whole second the stream's time passes. What `downstream` holds
/// back is flushed whenever the stream has nothing more for now. Returns the readings
/// handed on live (not those refilling windows).
pub(crate) fn feed(
    items: &crossbeam_channel::Receiver<Fed>,
    downstream: &mut dyn PartitionDownstream,
    metrics: &Metrics,
    plan: FeedPlan,
) -> Result<u64, Closed> {
    let mut ticks = Ticks::resumed(plan.next_tick_ms);
    let mut count = 0;
    let mut cuts = Cuts {
        next_checkpoint: plan.next_checkpoint,
        through_seq: plan.covers_seq,
        at: Instant::now(),
    };
    // The last stream sequence read, refills included.
    let mut last_seq = plan.covers_seq;
    loop {
        let item = match items.try_recv() {
            Ok(item) => item,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                downstream.flush()?;
                match items.recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
        };
        let (at_ms, seq) = match &item {
            Fed::Message(msg) => (msg.at_ms, msg.seq),
            Fed::Tick { at_ms, seq } => (*at_ms, *seq),
            // Cut again even where the last cut covered as much: its store may have failed.
            Fed::LastCut => {
                if plan.checkpoint_every.is_some() && last_seq > plan.covers_seq {
                    cuts.cut(last_seq, ticks.next(), downstream)?;
                }
                continue;
            }
        };
        last_seq = last_seq.max(seq);
        if seq <= plan.covers_seq {
            // Before the checkpoint's cut: its rows refill the open windows, nothing more.
            ticks.skip_through(at_ms);
            if let Fed::Message(mut msg) = item {
                msg.rebuild = true;
                msg.arrived_ns = metrics.now_ns();
                downstream.message(msg)?;
            }
            continue;
        }
        ticks.through(at_ms, downstream)?;
        if let Fed::Message(mut msg) = item {
            msg.arrived_ns = metrics.now_ns();
            metrics.messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            downstream.message(msg)?;
            count += 1;
        }
        if plan.checkpoint_every.is_some_and(|every| cuts.at.elapsed() >= every) && seq > cuts.through_seq {
            cuts.cut(seq, ticks.next(), downstream)?;
        }
    }
    downstream.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Vec<String>);

    impl Downstream for Seen {
        fn message(&mut self, msg: Message) -> Result<(), Closed> {
            let refill = if msg.rebuild { "refill " } else { "" };
            self.0.push(format!("{refill}msg {} #{}", msg.at_ms, msg.seq));
            Ok(())
        }
        fn tick(&mut self, now_ms: i64) -> Result<(), Closed> {
            self.0.push(format!("tick {now_ms}"));
            Ok(())
        }
    }

    impl PartitionDownstream for Seen {
        fn barrier(&mut self, cut: Cut) -> Result<(), Closed> {
            self.0.push(format!(
                "cut {} through #{} next tick {:?}",
                cut.checkpoint, cut.covers_seq, cut.next_tick_ms
            ));
            Ok(())
        }
    }

    fn message(at_ms: i64, seq: u64) -> Fed {
        Fed::Message(Message {
            at_ms,
            topic: "city/a/water/w1".to_string(),
            payload: bytes::Bytes::from_static(b"{}"),
            recorded_invalid: false,
            arrived_ns: 0,
            received_ms: 0,
            seq,
            rebuild: false,
        })
    }

    fn fed(items: Vec<Fed>, plan: FeedPlan) -> (Vec<String>, u64, u64) {
        let (tx, rx) = crossbeam_channel::unbounded();
        for item in items {
            tx.send(item).unwrap();
        }
        drop(tx);
        let mut seen = Seen::default();
        let metrics = Metrics::new();
        let count = feed(&rx, &mut seen, &metrics, plan).unwrap();
        let counted = metrics.messages_in.load(std::sync::atomic::Ordering::Relaxed);
        (seen.0, count, counted)
    }

    #[test]
    fn stream_time_drives_the_ticks_whether_readings_or_ticks_carry_it() {
        let items = vec![
            message(10_500, 1),
            Fed::Tick { at_ms: 11_000, seq: 2 },
            Fed::Tick { at_ms: 11_400, seq: 3 },
            message(13_200, 4),
        ];
        let (seen, count, counted) = fed(items, FeedPlan::default());
        assert_eq!(
            seen,
            ["msg 10500 #1", "tick 11000", "tick 12000", "tick 13000", "msg 13200 #4"]
        );
        assert_eq!((count, counted), (2, 2));
    }

    #[test]
    fn a_cut_follows_the_item_it_covers_with_the_clock_to_go_on_from() {
        let plan = FeedPlan {
            next_checkpoint: 7,
            checkpoint_every: Some(Duration::ZERO),
            ..FeedPlan::default()
        };
        let items = vec![message(10_500, 3), Fed::Tick { at_ms: 12_100, seq: 5 }];
        let (seen, _, _) = fed(items, plan);
        assert_eq!(
            seen,
            [
                "msg 10500 #3",
                "cut 7 through #3 next tick Some(11000)",
                "tick 11000",
                "tick 12000",
                "cut 8 through #5 next tick Some(13000)",
            ]
        );
    }

    #[test]
    fn a_last_cut_covers_everything_read_and_needs_something_read_since_the_resume() {
        let plan = FeedPlan {
            covers_seq: 5,
            next_tick_ms: Some(13_000),
            next_checkpoint: 2,
            checkpoint_every: Some(Duration::from_secs(3_600)),
        };
        // Only refills: the checkpoint resumed from still holds.
        let (seen, _, _) = fed(vec![message(10_500, 3), Fed::LastCut], plan);
        assert_eq!(seen, ["refill msg 10500 #3"]);
        let items = vec![
            message(10_500, 3),
            message(13_200, 6),
            Fed::Tick { at_ms: 14_100, seq: 9 },
            Fed::LastCut,
        ];
        let (seen, _, _) = fed(items, plan);
        assert_eq!(
            seen,
            [
                "refill msg 10500 #3",
                "tick 13000",
                "msg 13200 #6",
                "tick 14000",
                "cut 2 through #9 next tick Some(15000)",
            ]
        );
        // Checkpoints off: no cut.
        let off = FeedPlan {
            checkpoint_every: None,
            ..plan
        };
        let (seen, _, _) = fed(vec![message(13_200, 6), Fed::LastCut], off);
        assert_eq!(seen, ["tick 13000", "msg 13200 #6"]);
    }

    #[test]
    fn going_on_from_a_checkpoint_refills_up_to_its_cut_then_runs_as_the_owner_before_did() {
        // The owner before cut through #5 with its clock at 13000 (items #3..#5 were read
        // for the windows still open); everything after comes as it came to that owner.
        let plan = FeedPlan {
            covers_seq: 5,
            next_tick_ms: Some(13_000),
            next_checkpoint: 2,
            checkpoint_every: None,
        };
        let items = vec![
            message(10_500, 3),
            Fed::Tick { at_ms: 12_100, seq: 5 },
            message(14_700, 8),
        ];
        let (seen, count, counted) = fed(items, plan);
        assert_eq!(
            seen,
            ["refill msg 10500 #3", "tick 13000", "tick 14000", "msg 14700 #8"]
        );
        assert_eq!((count, counted), (1, 1));
    }
}
