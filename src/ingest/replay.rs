//! Replaying a fixture into the pipeline: at recorded speed, scaled (`--speed 60`) or as
//! fast as possible. The fixture's `at` offsets are the virtual clock; clock ticks go to
//! every decode worker once per virtual second so silent tables can close their windows.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fixture::{FixtureError, LineRead};
use crate::flow::{Closed, Ingest, LineAt, LineBlock, Message};
use crate::metrics::Metrics;
use crate::queue::{Bursts, Handoff, LineBursts};

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the pipeline takes it.
    Max,
    /// This many times the recorded speed (1 = real time).
    Factor(f64),
    /// A fixed rate in messages per second, whatever the recording's timing (`20000/s`):
    /// open-loop load for latency measurement.
    Rate(f64),
}

/// How a speed reads in messages: `maximum`, `60×`, `20000 messages/s`.
impl std::fmt::Display for Speed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Speed::Max => write!(f, "maximum"),
            Speed::Factor(x) => write!(f, "{x}×"),
            Speed::Rate(r) => write!(f, "{r} messages/s"),
        }
    }
}

impl std::str::FromStr for Speed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        if let Some(rate) = s.strip_suffix("/s") {
            return match rate.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => Ok(Speed::Rate(r)),
                _ => Err(format!(
                    "rate must be a positive number of messages per second, got `{s}`"
                )),
            };
        }
        match s.trim_end_matches('x').parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "speed must be a factor (60), a rate (20000/s) or `max`, got `{s}`"
            )),
        }
    }
}

/// Virtual milliseconds between clock ticks.
pub(crate) const TICK_MS: i64 = 1_000;

impl Speed {
    /// When the `count`-th message (from 0), recorded at `at_ms`, is due after the start of a
    /// replay whose first message was recorded at `origin_ms`; `None` as fast as possible.
    pub(crate) fn due(&self, at_ms: i64, origin_ms: i64, count: u64) -> Option<Duration> {
        match *self {
            Speed::Max => None,
            Speed::Factor(factor) => Some(Duration::from_secs_f64(
                ((at_ms - origin_ms).max(0) as f64 / 1_000.0) / factor,
            )),
            Speed::Rate(rate) => Some(Duration::from_secs_f64(count as f64 / rate)),
        }
    }
}

/// The virtual clock's ticks: one at each whole second the stream's time passes.
#[derive(Debug, Default)]
pub(crate) struct Ticks {
    next: Option<i64>,
}

impl Ticks {
    /// A clock that goes on where another stopped: `next` is the whole second it ticks at next.
    pub(crate) fn resumed(next: Option<i64>) -> Self {
        Ticks { next }
    }

    /// The whole second this clock ticks at next (`None` before the first time seen).
    pub(crate) fn next(&self) -> Option<i64> {
        self.next
    }

    /// The ticks up to `at_ms`, in order (the first at the second after the first time seen).
    fn due_through(&mut self, at_ms: i64) -> impl Iterator<Item = i64> + '_ {
        let next = self.next.get_or_insert(at_ms - at_ms.rem_euclid(TICK_MS) + TICK_MS);
        std::iter::from_fn(move || {
            (*next <= at_ms).then(|| {
                *next += TICK_MS;
                *next - TICK_MS
            })
        })
    }

    /// Sends the ticks up to `at_ms` downstream.
    pub(crate) fn through(&mut self, at_ms: i64, downstream: &mut dyn Downstream) -> Result<(), Closed> {
        for tick in self.due_through(at_ms) {
            downstream.tick(tick)?;
        }
        Ok(())
    }

    /// Passes the ticks up to `at_ms` without sending them (messages skipped on a resume).
    pub(crate) fn skip_through(&mut self, at_ms: i64) {
        self.due_through(at_ms).for_each(drop);
    }
}

/// A replay that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    #[error(transparent)]
    Closed(#[from] Closed),
}

/// Where a source hands its messages and clock ticks: straight into the decode queues, or
/// through the write-ahead log (`wal::Intake`).
pub(crate) trait Downstream {
    fn message(&mut self, msg: Message) -> Result<(), Closed>;
    fn tick(&mut self, now_ms: i64) -> Result<(), Closed>;
    /// A new block of fixture lines begins: the `line`s that follow lie in it.
    fn block(&mut self, _block: &LineBlock) -> Result<(), Closed> {
        Ok(())
    }
    /// A fixture line read in place in `block`; unless taken as it is, a message of its own.
    fn line(&mut self, block: &Bytes, line: LineAt) -> Result<(), Closed> {
        self.message(line.message_in(block))
    }
    /// Whether it takes lines whose payload was cut, not scanned (`LineAt::cut`): only
    /// where every line reaches a decode worker as it is, since the decoder checks the cut.
    fn takes_cut_lines(&self) -> bool {
        false
    }
    /// Hands over what is held back (see `Bursting`): before the source waits or ends.
    fn flush(&mut self) -> Result<(), Closed> {
        Ok(())
    }
}

impl Downstream for &Handoff {
    fn message(&mut self, msg: Message) -> Result<(), Closed> {
        let worker = self.worker_for(msg.topic.as_bytes());
        self.send(worker, Ingest::Message(msg))
    }

    fn tick(&mut self, now_ms: i64) -> Result<(), Closed> {
        self.broadcast(|| Ingest::Tick { now_ms })
    }
}

/// The decode workers' queues, a burst of messages at a time: one queue operation (and
/// one look at the queue by its worker) per `Bursts::MAX` messages of a worker instead of
/// one per message. A tick, a flush and the replay's end hand every burst over first, so
/// each worker sees messages and ticks in the same order as before. For sources whose
/// user flushes before it waits: a paced replay after each message, a file replay at its
/// end, a partition's feed whenever its stream has nothing more for now (a channel source,
/// which may block on its next message, hands over one at a time).
/// Fixture lines read in place go the same way, as `LineBurst`s: a burst of messages and
/// one of lines are never pending for a worker at once, so its order holds.
pub(crate) struct Bursting<'h> {
    handoff: &'h Handoff,
    bursts: Bursts,
    lines: LineBursts,
}

impl<'h> Bursting<'h> {
    pub(crate) fn new(handoff: &'h Handoff) -> Self {
        Bursting {
            handoff,
            bursts: Bursts::new(handoff),
            lines: LineBursts::new(handoff),
        }
    }

    /// The queues it hands over to.
    pub(crate) fn handoff(&self) -> &'h Handoff {
        self.handoff
    }
}

impl Downstream for Bursting<'_> {
    fn message(&mut self, msg: Message) -> Result<(), Closed> {
        self.lines.flush(self.handoff)?;
        let worker = self.handoff.worker_for(msg.topic.as_bytes());
        self.bursts.push(self.handoff, worker, msg)
    }

    fn tick(&mut self, now_ms: i64) -> Result<(), Closed> {
        self.flush()?;
        self.handoff.broadcast(|| Ingest::Tick { now_ms })
    }

    fn block(&mut self, block: &LineBlock) -> Result<(), Closed> {
        self.lines.begin(self.handoff, block)
    }

    fn line(&mut self, block: &Bytes, line: LineAt) -> Result<(), Closed> {
        if !self.bursts.is_empty() {
            self.bursts.flush(self.handoff)?;
        }
        let worker = self.handoff.worker_for(&block[line.topic.0..line.topic.1]);
        self.lines.push(self.handoff, worker, line)
    }

    fn flush(&mut self) -> Result<(), Closed> {
        self.bursts.flush(self.handoff)?;
        self.lines.flush(self.handoff)
    }

    fn takes_cut_lines(&self) -> bool {
        true
    }
}

/// At full speed, the clock is read for every this many messages: a message's arrival is
/// when its run began, tens of microseconds early at most (its latency, if anything,
/// overstated), where a reading each cost the reader a twentieth of its time.
const STAMP_EVERY: u64 = 32;

/// Feeds every message downstream (the caller ends the stream), after skipping the first
/// `skip` (a run on a state directory resumes a fixture where its log ends). A line whose
/// envelope is broken goes to `on_bad_line` and the replay goes on.
pub(crate) fn replay(
    reads: &mut dyn Iterator<Item = Result<LineRead, FixtureError>>,
    downstream: &mut dyn Downstream,
    speed: Speed,
    metrics: &Metrics,
    skip: u64,
    on_bad_line: &mut dyn FnMut(FixtureError),
) -> Result<u64, ReplayError> {
    let mut skipped = 0;
    let started = Instant::now();
    let started_ns = metrics.now_ns();
    let mut first_at: Option<i64> = None;
    let mut ticks = Ticks::default();
    let mut count = 0;
    let mut stamped_ns = 0;
    // The block the lines read in place lie in.
    let mut block = Bytes::new();
    for next in reads {
        let read = match next {
            Ok(LineRead::Block(next)) => {
                downstream.block(&next)?;
                block = next.bytes;
                continue;
            }
            Ok(read) => read,
            Err(FixtureError::Line { .. }) if skipped < skip => continue,
            Err(bad @ FixtureError::Line { .. }) => {
                on_bad_line(bad);
                continue;
            }
            Err(other) => return Err(other.into()),
        };
        let at_ms = read.at_ms().unwrap_or_default();
        if skipped < skip {
            skipped += 1;
            ticks.skip_through(at_ms);
            continue;
        }
        let origin = *first_at.get_or_insert(at_ms);
        // When paced, a message's arrival is when it was due, not when the source got to it:
        // a pipeline that falls behind shows it in its latency (no coordinated omission).
        let due = speed.due(at_ms, origin, count);
        if let Some(due) = due
            && let Some(wait) = due.checked_sub(started.elapsed())
            && wait > Duration::from_micros(100)
        {
            std::thread::sleep(wait);
        }
        ticks.through(at_ms, downstream)?;
        let arrived_ns = match due {
            Some(due) => started_ns + due.as_nanos() as u64,
            None => {
                if count % STAMP_EVERY == 0 {
                    stamped_ns = metrics.now_ns();
                }
                stamped_ns
            }
        };
        metrics.messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match read {
            LineRead::Line(mut line) => {
                line.arrived_ns = arrived_ns;
                downstream.line(&block, line)?;
            }
            LineRead::Message(mut msg) => {
                msg.arrived_ns = arrived_ns;
                downstream.message(msg)?;
            }
            LineRead::Block(_) => {}
        }
        // Paced, a message is due now: it goes at once, not with a burst.
        if due.is_some() {
            downstream.flush()?;
        }
        count += 1;
    }
    downstream.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::ingest::fixture::FixtureReader;
    use crate::schema::Catalog;
    use crate::topic::TopicPattern;

    /// What one worker's queue received: messages by `at_ms`, ticks as `tick N`.
    fn received(queue: &crossbeam_channel::Receiver<Ingest>) -> Vec<String> {
        let mut seen = Vec::new();
        for item in queue.try_iter() {
            match item {
                Ingest::Message(m) => seen.push(format!("msg {}", m.at_ms)),
                Ingest::Messages(ms) => seen.push(format!(
                    "burst {}",
                    ms.iter().map(|m| m.at_ms.to_string()).collect::<Vec<_>>().join(",")
                )),
                Ingest::Lines(burst) => seen.push(format!(
                    "lines {}",
                    burst
                        .received()
                        .map(|m| format!("{} {}", m.at_ms, String::from_utf8_lossy(m.payload)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Ingest::Tick { now_ms } => seen.push(format!("tick {now_ms}")),
                other => seen.push(format!("{other:?}")),
            }
        }
        seen
    }

    fn water(at_ms: i64) -> Message {
        Message {
            at_ms,
            topic: "city/a/water/w1".to_string(),
            ..Message::default()
        }
    }

    #[test]
    fn a_replay_at_maximum_speed_hands_messages_over_in_bursts_that_end_at_each_tick() {
        let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").unwrap();
        let metrics = Metrics::new();
        let (handoff, queues) = Handoff::new(1, pattern, Catalog::builtin(), 64, Arc::new(Metrics::new()));
        let at = [100, 200, 900, 1_100, 1_500];
        let mut messages = at.iter().map(|&at_ms| Ok(LineRead::Message(water(at_ms))));
        let mut bursting = Bursting::new(&handoff);
        let count = replay(&mut messages, &mut bursting, Speed::Max, &metrics, 0, &mut |_| {}).unwrap();
        assert_eq!(count, 5);
        assert_eq!(
            received(&queues[0]),
            ["burst 100,200,900", "tick 1000", "burst 1100,1500"]
        );
        // Paced, each message goes at once.
        let mut messages = at.iter().map(|&at_ms| Ok(LineRead::Message(water(at_ms))));
        let mut bursting = Bursting::new(&handoff);
        replay(
            &mut messages,
            &mut bursting,
            Speed::Factor(1e6),
            &metrics,
            0,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            received(&queues[0]),
            ["msg 100", "msg 200", "msg 900", "tick 1000", "msg 1100", "msg 1500"]
        );
    }

    #[test]
    fn fixture_lines_go_in_bursts_of_lines_in_file_order_with_the_messages_between_them() {
        let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").unwrap();
        let metrics = Metrics::new();
        let (handoff, queues) = Handoff::new(1, pattern, Catalog::builtin(), 64, Arc::new(Metrics::new()));
        let text = "{\"at\": 100, \"topic\": \"city/a/water/w1\", \"payload\": {\"ts\": 1}}\n\
                    {\"at\": 150, \"topic\": \"city/a/water/w2\", \"payload\": {\"ts\": 1}}\n\
                    {\"at\": 200, \"topic\": \"city/a/water/w1\", \"raw\": \"x\"}\n\
                    {\"at\": 300, \"topic\": \"city/a/water/w1\", \"payload\": {\"ts\": 2}}\n\
                    {\"at\": 1100, \"topic\": \"city/a/water/w1\", \"payload\": {\"ts\": 3}}\n";
        let mut reader = FixtureReader::from_reader(Box::new(text.as_bytes()), "test".to_string());
        let mut bursting = Bursting::new(&handoff);
        let count = replay(&mut reader.reads(), &mut bursting, Speed::Max, &metrics, 0, &mut |_| {}).unwrap();
        assert_eq!(count, 5);
        assert_eq!(
            received(&queues[0]),
            [
                r#"lines 100 {"ts": 1}, 150 {"ts": 1}"#,
                "msg 200",
                r#"lines 300 {"ts": 2}"#,
                "tick 1000",
                r#"lines 1100 {"ts": 3}"#
            ]
        );
    }

    #[test]
    fn speed_parses_max_and_factors() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("60".parse::<Speed>(), Ok(Speed::Factor(60.0)));
        assert_eq!("2.5x".parse::<Speed>(), Ok(Speed::Factor(2.5)));
        assert_eq!("20000/s".parse::<Speed>(), Ok(Speed::Rate(20_000.0)));
        assert!("0".parse::<Speed>().is_err());
        assert!("-5/s".parse::<Speed>().is_err());
        assert!("fast".parse::<Speed>().is_err());
    }
}
