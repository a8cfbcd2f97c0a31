//! A partition's input on a cluster instance (`run --nats`): the readings of one stream
//! partition in stream order and the clock ticks its owners wrote into it, each with its
//! stream timestamp as its arrival time. Time comes from the stream, not from the clock of
//! the machine reading it, so a partition's pipeline computes the same warnings from the
//! same stream whichever instance runs it and whenever: the instance that takes a partition
//! over computes exactly what the one before it did.

use super::replay::{Downstream, Ticks};
use crate::flow::{Closed, Message};
use crate::metrics::Metrics;

/// One item of a partition's stream.
#[derive(Debug)]
pub(crate) enum Fed {
    /// A reading, `at_ms` its stream timestamp.
    Message(Message),
    /// The partition's owner wrote a tick at this stream time (epoch ms).
    Tick(i64),
}

/// Feeds a partition's stream downstream until its sender is dropped; ticks go to the
/// decode workers at each whole second the stream's time passes.
pub(crate) fn feed(
    items: &crossbeam_channel::Receiver<Fed>,
    downstream: &mut dyn Downstream,
    metrics: &Metrics,
) -> Result<u64, Closed> {
    let mut ticks = Ticks::default();
    let mut count = 0;
    for item in items.iter() {
        let at_ms = match &item {
            Fed::Message(msg) => msg.at_ms,
            Fed::Tick(at_ms) => *at_ms,
        };
        ticks.through(at_ms, downstream)?;
        if let Fed::Message(mut msg) = item {
            msg.arrived_ns = metrics.now_ns();
            metrics.messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            downstream.message(msg)?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Vec<String>);

    impl Downstream for Seen {
        fn message(&mut self, msg: Message) -> Result<(), Closed> {
            self.0.push(format!("msg {}", msg.at_ms));
            Ok(())
        }
        fn tick(&mut self, now_ms: i64) -> Result<(), Closed> {
            self.0.push(format!("tick {now_ms}"));
            Ok(())
        }
    }

    fn message(at_ms: i64) -> Message {
        Message {
            at_ms,
            topic: "city/a/water/w1".to_string(),
            payload: bytes::Bytes::from_static(b"{}"),
            recorded_invalid: false,
            arrived_ns: 0,
            received_ms: 0,
            seq: 0,
            rebuild: false,
        }
    }

    #[test]
    fn stream_time_drives_the_ticks_whether_readings_or_ticks_carry_it() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for item in [
            Fed::Message(message(10_500)),
            Fed::Tick(11_000),
            Fed::Tick(11_400),
            Fed::Message(message(13_200)),
        ] {
            tx.send(item).unwrap();
        }
        drop(tx);
        let mut seen = Seen::default();
        let metrics = Metrics::new();
        assert_eq!(feed(&rx, &mut seen, &metrics).unwrap(), 2);
        assert_eq!(
            seen.0,
            ["msg 10500", "tick 11000", "tick 12000", "tick 13000", "msg 13200"]
        );
        assert_eq!(metrics.messages_in.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
