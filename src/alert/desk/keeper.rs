//! The desk's place in the sink thread, the one writer: lifecycle notifications, operator
//! actions (sent by the HTTP side as [`Notice::Operator`](crate::alert::sink::Notice)) and
//! clock ticks reach it in one order, each is journaled (with `--state`), and what it
//! returns is delivered by the sink thread. HTTP handlers read the desk behind its lock.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;

use super::actions::{ActionError, Operation};
use super::book::{Applied, Desk, Outgoing};
use super::journal::{Entry, Journal};
use crate::alert::warning::{Warning, WarningStatus};
use crate::metrics::Metrics;
use crate::state::StateDir;
use crate::time::EpochMs;

/// The desk shared with the HTTP side (reads only).
pub(crate) type SharedDesk = Arc<Mutex<Desk>>;

/// The sink thread's handle on the desk.
pub(crate) struct DeskKeeper {
    desk: SharedDesk,
    journal: Option<Journal>,
    metrics: Arc<Metrics>,
}

impl DeskKeeper {
    /// Keeps `desk` for a run; with a state directory, its journal is replayed into it first.
    pub(crate) fn open(
        mut desk: Desk,
        state: Option<&StateDir>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, SharedDesk)> {
        let journal = match state {
            Some(state) => {
                let (journal, replayed) = Journal::open(&state.root().join("desk.jsonl"), &mut desk)?;
                if replayed > 0 {
                    tracing::info!(entries = replayed, "operations desk restored from its journal");
                }
                Some(journal)
            }
            None => None,
        };
        let desk = Arc::new(Mutex::new(desk));
        let keeper = DeskKeeper {
            desk: Arc::clone(&desk),
            journal,
            metrics,
        };
        Ok((keeper, desk))
    }

    fn journal(&mut self, entry: &Entry) {
        if let Some(journal) = self.journal.as_mut()
            && let Err(e) = journal.append(entry)
        {
            self.metrics.desk.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "the operations journal cannot be written (is the disk full?); acknowledgements and silences since may be lost at a restart");
        }
    }

    /// A lifecycle notification from the rules, marked by the desk.
    pub(crate) fn on_warning(&mut self, warning: Warning) -> Outgoing {
        let out = self.desk.lock().on_warning(&warning);
        self.journal(&Entry::Warning {
            warning: Box::new(warning),
        });
        if !out.page {
            self.metrics.desk.withheld.fetch_add(1, Relaxed);
        }
        out
    }

    /// An operator's action: applied, journaled and synced before the answer, and followed
    /// by what it releases (a silence expired early lets its alerts be notified).
    pub(crate) fn operate(&mut self, op: Operation) -> Result<(Applied, Vec<Outgoing>), ActionError> {
        let (applied, released) = {
            let mut desk = self.desk.lock();
            let applied = desk.apply(&op)?;
            (applied, desk.advance(op.at_ms, false))
        };
        self.metrics.desk.actions.fetch_add(1, Relaxed);
        self.journal(&Entry::Operation { operation: op.clone() });
        if !released.is_empty() {
            self.journal(&Entry::Advanced {
                now_ms: op.at_ms,
                deadlines: false,
            });
        }
        if let Some(journal) = self.journal.as_mut()
            && let Err(e) = journal.sync()
        {
            self.metrics.desk.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "an operator's action could not be made durable; it holds until a restart");
            return Err(ActionError::NotDurable(e.to_string()));
        }
        Ok((applied, released))
    }

    /// The clock reached `now_ms` (`deadlines`: on the wall clock, where deadlines run).
    pub(crate) fn tick(&mut self, now_ms: EpochMs, deadlines: bool) -> Vec<Outgoing> {
        let out = self.desk.lock().advance(now_ms, deadlines);
        if !out.is_empty() {
            self.journal(&Entry::Advanced { now_ms, deadlines });
            let escalations = out
                .iter()
                .filter(|o| o.warning.status == WarningStatus::Escalated)
                .count();
            self.metrics.desk.escalations.fetch_add(escalations as u64, Relaxed);
        }
        out
    }

    /// Makes the journal durable (the sink's quiet moments, and the end).
    pub(crate) fn settle(&mut self) {
        if let Some(journal) = self.journal.as_mut()
            && let Err(e) = journal.sync()
        {
            self.metrics.desk.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "the operations journal cannot be synced; what the desk took since may be lost at a crash");
        }
    }
}
