//! The desk's place in the sink thread, the one writer: lifecycle notifications, operator
//! actions (sent by the HTTP side as [`Notice::Operator`](crate::alert::sink::Notice)) and
//! clock ticks reach it in one order. Each input gives a [`Step`]: the notifications to
//! deliver, then the journal entries to append once they are delivered (a deadline is
//! journaled as passed only after the sinks confirmed its escalation, so a crash before that
//! sends it again, with the same identity). An operator's action is journaled and synced
//! before it is answered. HTTP handlers read the desk behind its lock.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;

use super::actions::{ActionError, Operation};
use super::book::{Applied, Desk, Made, Outgoing};
use super::journal::{Entry, Journal};
use crate::alert::warning::Warning;
use crate::metrics::Metrics;
use crate::state::StateDir;
use crate::time::{EpochMs, parse_ts_text};

/// The desk shared with the HTTP side (reads only).
pub(crate) type SharedDesk = Arc<Mutex<Desk>>;

/// What one input made the desk do.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// To deliver, in order.
    pub(crate) out: Vec<Outgoing>,
    /// To journal once `out` is delivered (and, for what the desk made, confirmed).
    entries: Vec<Entry>,
}

impl Step {
    /// Whether it holds notifications the desk made (escalations, releases): the sinks must
    /// confirm them before the clock time that made them is journaled.
    pub(crate) fn needs_confirmation(&self) -> bool {
        self.out.iter().any(|o| o.made.is_some())
    }
}

/// An operator's action as the desk took it.
pub(crate) struct Operated {
    pub(crate) applied: Applied,
    /// Applied, but not synced to the journal (the answer says so).
    pub(crate) not_durable: Option<String>,
    pub(crate) step: Step,
}

/// The sink thread's handle on the desk.
pub(crate) struct DeskKeeper {
    desk: SharedDesk,
    journal: Option<Journal>,
    /// A replay's clock: only notifications move time, so silences that ended before one
    /// release their alerts then.
    virtual_clock: bool,
    metrics: Arc<Metrics>,
}

impl DeskKeeper {
    /// Keeps `desk` for a run; with a state directory, its journal is replayed into it first.
    pub(crate) fn open(
        mut desk: Desk,
        state: Option<&StateDir>,
        virtual_clock: bool,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, SharedDesk)> {
        let journal = match state {
            Some(state) => {
                let (journal, replayed) = Journal::open(&state.root().join("desk.jsonl"), &mut desk)?;
                if replayed.entries > 0 {
                    tracing::info!(entries = replayed.entries, "operations desk restored from its journal");
                }
                if replayed.unreadable > 0 {
                    metrics.desk.journal_errors.fetch_add(replayed.unreadable, Relaxed);
                    tracing::warn!(
                        lines = replayed.unreadable,
                        "operations journal: unreadable lines skipped (a disk error?); what they held is lost"
                    );
                }
                Some(journal)
            }
            None => None,
        };
        let desk = Arc::new(Mutex::new(desk));
        let keeper = DeskKeeper {
            desk: Arc::clone(&desk),
            journal,
            virtual_clock,
            metrics,
        };
        Ok((keeper, desk))
    }

    fn append(&mut self, entry: &Entry) {
        if let Some(journal) = self.journal.as_mut()
            && let Err(e) = journal.append(entry)
        {
            self.metrics.desk.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "the operations journal cannot be written (is the disk full?); acknowledgements and silences since may be lost at a restart");
        }
    }

    /// A lifecycle notification from the rules, marked by the desk.
    pub(crate) fn on_warning(&mut self, warning: Warning) -> Step {
        let mut step = Step::default();
        let mut desk = self.desk.lock();
        if self.virtual_clock
            && let Ok(at_ms) = parse_ts_text(&warning.detected_at)
        {
            let released = desk.advance(at_ms, false);
            if !released.is_empty() {
                step.entries.push(Entry::Advanced {
                    now_ms: at_ms,
                    deadlines: false,
                });
                step.out.extend(released);
            }
        }
        let out = desk.on_warning(&warning);
        drop(desk);
        if !out.page {
            self.metrics.desk.withheld.fetch_add(1, Relaxed);
        }
        step.out.push(out);
        step.entries.push(Entry::Warning {
            warning: Box::new(warning),
        });
        step
    }

    /// An operator's action: applied, journaled and synced (before the answer), and
    /// followed by what it releases (a silence expired early lets its alerts be notified).
    pub(crate) fn operate(&mut self, op: Operation) -> Result<Operated, ActionError> {
        let (applied, released) = {
            let mut desk = self.desk.lock();
            let applied = desk.apply(&op)?;
            (applied, desk.advance(op.at_ms, false))
        };
        self.metrics.desk.actions.fetch_add(1, Relaxed);
        self.append(&Entry::Operation { operation: op.clone() });
        let mut not_durable = None;
        if let Some(journal) = self.journal.as_mut()
            && let Err(e) = journal.sync()
        {
            self.metrics.desk.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "an operator's action could not be made durable; it holds until a restart");
            not_durable = Some(e.to_string());
        }
        let mut step = Step::default();
        if !released.is_empty() {
            step.entries.push(Entry::Advanced {
                now_ms: op.at_ms,
                deadlines: false,
            });
            step.out = released;
        }
        Ok(Operated {
            applied,
            not_durable,
            step,
        })
    }

    /// The clock reached `now_ms` (`deadlines`: on the wall clock, once recovery is done).
    pub(crate) fn tick(&mut self, now_ms: EpochMs, deadlines: bool) -> Step {
        let out = self.desk.lock().advance(now_ms, deadlines);
        let mut step = Step::default();
        if !out.is_empty() {
            let escalations = out.iter().filter(|o| o.made == Some(Made::Escalation)).count();
            self.metrics.desk.escalations.fetch_add(escalations as u64, Relaxed);
            step.entries.push(Entry::Advanced { now_ms, deadlines });
            step.out = out;
        }
        step
    }

    /// Journals a step's entries once its notifications are delivered; `confirmed`: the
    /// sinks confirmed what the desk made (else the clock entries are left out, and a
    /// recovery makes those notifications again).
    pub(crate) fn done(&mut self, step: Step, confirmed: bool) {
        for entry in &step.entries {
            if confirmed || !matches!(entry, Entry::Advanced { .. }) {
                self.append(entry);
            }
        }
    }

    /// Makes the journal durable (the sink's quiet moments, and the end), and compacts it
    /// once it is long.
    pub(crate) fn settle(&mut self) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if let Err(e) = journal.sync() {
            self.metrics.desk.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "the operations journal cannot be synced; what the desk took since may be lost at a crash");
            return;
        }
        if let Err(e) = journal.compact_if_long(&self.desk.lock()) {
            self.metrics.desk.journal_errors.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "the operations journal could not be compacted; it is tried again later (check free space in the state directory)");
        }
    }
}
