//! Telling a session takeover from an ordinary connection loss. A broker that accepts a
//! connection and closes it again within moments, over and over, is almost always handing
//! the client id to another client (MQTT allows one connection per id): two instances with
//! one id would otherwise disconnect each other forever, reconnecting every 100 ms. The
//! MQTT source reports it plainly, with the fix, and backs off instead of flapping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A connection closed sooner than this after it was accepted counts as cut short.
pub(crate) const SHORT_SESSION: Duration = Duration::from_secs(2);
/// This many short sessions within `WITHIN` are taken for a takeover.
const SHORT_SESSIONS: usize = 3;
const WITHIN: Duration = Duration::from_secs(30);
/// While a takeover lasts it is reported again at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(300);
/// Once a takeover is suspected, only a connection lasting this long clears it: the other
/// client, backing off too, may stay away for up to the source's longest backoff (30 s).
const STABLE_SESSION: Duration = Duration::from_secs(90);

/// What a dropped connection looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// No connection had come up (the broker is down or refuses): keep backing off.
    NotConnected,
    /// The connection had been up for a while: an ordinary loss.
    Ordinary,
    /// Closed right after it was accepted, not (yet) often enough to say why.
    CutShort,
    /// Closed right after it was accepted, again and again: `report` when it is time to
    /// say so (the first time, then every few minutes); `cuts` within the last 30 s.
    Takeover { report: bool, cuts: usize },
}

/// The recent history of one source's connections.
#[derive(Debug, Default)]
pub(crate) struct TakeoverWatch {
    connected_at: Option<Instant>,
    cuts: VecDeque<Instant>,
    reported_at: Option<Instant>,
}

impl TakeoverWatch {
    /// The broker accepted a connection.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// Whether a takeover was reported and no connection since has lasted.
    pub(crate) fn suspected(&self) -> bool {
        self.reported_at.is_some()
    }

    /// The connection was lost at `now`.
    pub(crate) fn dropped(&mut self, now: Instant) -> Dropped {
        let Some(since) = self.connected_at.take() else {
            return Dropped::NotConnected;
        };
        let lasted = now.duration_since(since);
        if lasted >= STABLE_SESSION || (lasted >= SHORT_SESSION && !self.suspected()) {
            self.cuts.clear();
            self.reported_at = None;
            return Dropped::Ordinary;
        }
        self.cuts.push_back(now);
        while self.cuts.front().is_some_and(|at| now.duration_since(*at) > WITHIN) {
            self.cuts.pop_front();
        }
        if self.cuts.len() < SHORT_SESSIONS && !self.suspected() {
            return Dropped::CutShort;
        }
        let report = self.reported_at.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if report {
            self.reported_at = Some(now);
        }
        Dropped::Takeover {
            report,
            cuts: self.cuts.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_quick_cuts_are_a_takeover_reported_once() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut watch = TakeoverWatch::default();
        let mut verdicts = Vec::new();
        for i in 0..5 {
            watch.connected(at(i * 500));
            verdicts.push(watch.dropped(at(i * 500 + 50)));
        }
        assert_eq!(
            verdicts,
            [
                Dropped::CutShort,
                Dropped::CutShort,
                Dropped::Takeover { report: true, cuts: 3 },
                Dropped::Takeover { report: false, cuts: 4 },
                Dropped::Takeover { report: false, cuts: 5 },
            ]
        );
        assert!(watch.suspected());
    }

    #[test]
    fn only_a_long_lasting_connection_clears_the_suspicion() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut watch = TakeoverWatch::default();
        for i in 0..3 {
            watch.connected(at(i * 100));
            watch.dropped(at(i * 100 + 10));
        }
        assert!(watch.suspected());
        // The other client stays away while it backs off: still the same takeover.
        watch.connected(at(1_000));
        assert_eq!(watch.dropped(at(20_000)), Dropped::Takeover { report: false, cuts: 4 });
        watch.connected(at(21_000));
        assert_eq!(watch.dropped(at(120_000)), Dropped::Ordinary);
        assert!(!watch.suspected());
    }

    #[test]
    fn failed_connects_are_not_connections() {
        let mut watch = TakeoverWatch::default();
        let now = Instant::now();
        assert_eq!(watch.dropped(now), Dropped::NotConnected);
        assert_eq!(watch.dropped(now + Duration::from_millis(10)), Dropped::NotConnected);
    }
}
