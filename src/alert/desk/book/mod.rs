//! The desk's book: every alert it knows and every silence, changed only by three inputs,
//! each deterministic for a given order: a lifecycle notification from the rules
//! ([`Desk::on_warning`]), an operator's action ([`Desk::apply`]), and the clock reaching a
//! time ([`Desk::advance`]: deadlines pass, silences end). Each returns what to send: a
//! notification for every sink, or only for the non-paging ones (`page: false`) while a
//! silence holds it back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) use outgoing::{Made, Outgoing};

use super::actions::{Action, ActionError, Operation};
use super::record::{AlertRecord, EventKind, HistoryEvent};
use super::silence::{KeptSilence, MaintenanceWindow, labels_of};
use super::stats::{Breakdown, BreakdownReport};
use crate::alert::warning::{Acknowledgement, Warning, WarningStatus};
use crate::config::operations::OperationsConfig;
use crate::time::{EpochMs, format_ms, parse_ts_text};

/// What an accepted action changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    /// History events it added, by alert.
    pub(crate) events: Vec<(String, HistoryEvent)>,
    /// Firing alerts whose marks changed: the receivers' current view (the retained MQTT
    /// state, the dashboard) is updated, no new notification is sent; the paging sinks only
    /// for alerts they were told of (`page`).
    pub(crate) remarked: Vec<Outgoing>,
}

/// What the desk knows, whole, for the journal's snapshot (its config is not in it: a
/// restart reads the config of its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeskState {
    now_ms: EpochMs,
    alerts: Vec<AlertRecord>,
    silences: Vec<KeptSilence>,
    since_start: Breakdown,
}

/// Every alert and silence, the deadlines, and the statistics since the desk began.
#[derive(Debug, Clone)]
pub(crate) struct Desk {
    config: OperationsConfig,
    alerts: BTreeMap<String, AlertRecord>,
    silences: BTreeMap<String, KeptSilence>,
    /// How many of `alerts` are resolved.
    resolved: usize,
    /// The config's daily maintenance windows.
    maintenance: Vec<MaintenanceWindow>,
    since_start: Breakdown,
    now_ms: EpochMs,
    /// Counts the changes, so the statistics are worked out again only after one.
    changes: u64,
    stats_cache: Option<(u64, (BreakdownReport, BreakdownReport))>,
}

/// A day, for the statistics of the last day.
const DAY_MS: i64 = 86_400_000;
/// Resolved alerts kept at most, whatever `keep_resolved` says: a replay at full speed or a
/// storm of warnings must not grow the desk without bound. Past it the oldest go first (the
/// statistics since start keep counting them).
const MAX_RESOLVED: usize = 100_000;

impl Desk {
    /// A desk with the config's deadlines and maintenance windows (refused when a window's
    /// matcher or the offset does not parse).
    pub(crate) fn new(config: OperationsConfig) -> Result<Self, String> {
        config.check()?;
        let offset = crate::config::operations::offset_minutes(&config.utc_offset)?;
        let maintenance = config
            .maintenance
            .iter()
            .map(|m| MaintenanceWindow::new(m, offset))
            .collect::<Result<_, _>>()?;
        Ok(Desk {
            config,
            alerts: BTreeMap::new(),
            silences: BTreeMap::new(),
            resolved: 0,
            maintenance,
            since_start: Breakdown::default(),
            now_ms: 0,
            changes: 0,
            stats_cache: None,
        })
    }

    /// Its whole state, for a snapshot.
    pub(crate) fn state(&self) -> DeskState {
        DeskState {
            now_ms: self.now_ms,
            alerts: self.alerts.values().cloned().collect(),
            silences: self.silences.values().cloned().collect(),
            since_start: self.since_start.clone(),
        }
    }

    /// Takes a snapshot's state (the config stays the desk's own).
    pub(crate) fn restore(&mut self, state: DeskState) {
        self.now_ms = state.now_ms;
        self.alerts = state
            .alerts
            .into_iter()
            .map(|r| (r.warning.alert_id.clone(), r))
            .collect();
        self.resolved = self.alerts.values().filter(|r| !r.firing()).count();
        self.silences = state.silences.into_iter().map(|s| (s.id().to_string(), s)).collect();
        self.since_start = state.since_start;
        self.changes += 1;
    }

    /// The latest time the desk was told.
    pub(crate) fn now_ms(&self) -> EpochMs {
        self.now_ms
    }

    /// The active silences and open maintenance windows (`maintenance:<name>`) that mute a
    /// warning at `at_ms`.
    fn muted_by(&self, warning: &Warning, at_ms: EpochMs) -> Vec<String> {
        let labels = labels_of(warning);
        let silences = self
            .silences
            .values()
            .filter(|s| s.mutes(&labels, at_ms))
            .map(|s| s.id().to_string());
        let windows = self
            .maintenance
            .iter()
            .filter(|w| w.mutes(&labels, at_ms))
            .map(|w| format!("maintenance:{}", w.name));
        silences.chain(windows).collect()
    }

    /// Takes a lifecycle notification (firing, level change, resolved); returns it marked,
    /// and whether the paging sinks get it.
    pub(crate) fn on_warning(&mut self, warning: &Warning) -> Outgoing {
        let at_ms = parse_ts_text(&warning.detected_at).unwrap_or(self.now_ms);
        self.now_ms = self.now_ms.max(at_ms);
        let muted = self.muted_by(warning, at_ms);
        let is_new = !self.alerts.contains_key(&warning.alert_id);
        if warning.status == WarningStatus::Escalated || (is_new && warning.status != WarningStatus::Firing) {
            // A resolve of an alert from before the desk's state began (or an escalation,
            // which only the desk makes): passed on as it is.
            return Outgoing::lifecycle(warning.clone(), true);
        }
        self.changes += 1;
        let record = self
            .alerts
            .entry(warning.alert_id.clone())
            .or_insert_with(|| new_record(warning, at_ms));
        if !is_new && warning.transition != 0 && warning.transition <= record.seen_transition {
            // Computed again by a recovery: nothing new happened, and the paging sinks get
            // it only if they got it the first time.
            let mut again = warning.clone();
            again.marks = record.warning.marks.clone();
            let page = match warning.status {
                WarningStatus::Resolved => record.resolve_paged,
                _ => !record.withheld,
            };
            return Outgoing::lifecycle(again, page);
        }
        record.seen_transition = warning.transition;
        let previous = record.warning.level;
        let mut marked = warning.clone();
        marked.marks = record.warning.marks.clone();
        marked.marks.silenced = !muted.is_empty();
        match warning.status {
            WarningStatus::Firing if is_new => {
                record
                    .history
                    .push(HistoryEvent::new(at_ms, EventKind::Fired).level(warning.level));
            }
            WarningStatus::Firing => {
                record.history.push(
                    HistoryEvent::new(at_ms, EventKind::LevelChanged)
                        .level(warning.level)
                        .detail(format!("from {previous}")),
                );
                if warning.level > previous {
                    // A higher level needs a new acknowledgement, within the new level's time.
                    if let Some(ack) = marked.marks.acknowledged.take() {
                        record.history.push(
                            HistoryEvent::new(at_ms, EventKind::Unacknowledged)
                                .level(warning.level)
                                .detail(format!("rose above the level {} acknowledged", ack.by)),
                        );
                    }
                    record.ack_due_from_ms = at_ms;
                    record.ack_escalated = false;
                }
            }
            WarningStatus::Resolved => {
                record.resolved_ms = Some(at_ms);
                record
                    .history
                    .push(HistoryEvent::new(at_ms, EventKind::Resolved).level(warning.level));
                // Decided now, unless its deadline passed (and was counted) before.
                let decided = record.resolved_in_time.is_none();
                let in_time = *record.resolved_in_time.get_or_insert(!record.resolve_escalated);
                self.since_start
                    .resolve(record, decided.then_some(in_time), Some(at_ms - record.fired_ms));
            }
            WarningStatus::Escalated => {}
        }
        let page = match warning.status {
            // The paging sinks hear of the end of what they were told fires.
            WarningStatus::Resolved => {
                record.resolve_paged = std::mem::take(&mut record.told);
                record.resolve_paged
            }
            _ if muted.is_empty() => true,
            _ => false,
        };
        if warning.status == WarningStatus::Firing {
            if page {
                record.told = true;
            } else if !record.withheld {
                record
                    .history
                    .push(HistoryEvent::new(at_ms, EventKind::Silenced).detail(muted.join(",")));
            }
            record.withheld = !page;
        } else {
            record.withheld = false;
        }
        record.warning = marked.clone();
        if is_new {
            self.since_start.fired(record);
        }
        if warning.status == WarningStatus::Resolved {
            self.resolved += 1;
            if self.resolved > MAX_RESOLVED + MAX_RESOLVED / 10 {
                self.forget_oldest_resolved();
            }
        }
        Outgoing::lifecycle(marked, page)
    }

    /// Applies an operator's action, or refuses it with nothing changed.
    pub(crate) fn apply(&mut self, op: &Operation) -> Result<Applied, ActionError> {
        op.action.validate()?;
        self.changes += 1;
        // Stamped when applied, never before what the desk already took (history in order).
        let at_ms = op.at_ms.max(self.now_ms);
        let mut applied = Applied {
            events: Vec::new(),
            remarked: Vec::new(),
        };
        match &op.action {
            Action::Silence { silence } => {
                let mut silence = silence.clone();
                if silence.id.is_empty() {
                    return Err(ActionError::Invalid("a silence needs an id".into()));
                }
                silence.created_by = op.by.clone();
                let kept = KeptSilence::new(silence, at_ms).map_err(ActionError::Invalid)?;
                self.now_ms = self.now_ms.max(at_ms);
                for record in self.alerts.values_mut().filter(|r| r.firing()) {
                    // In the history of what it mutes now (a pending one says so when it starts
                    // to hold a notification back).
                    if kept.mutes(&labels_of(&record.warning), at_ms) {
                        let event = HistoryEvent::new(at_ms, EventKind::Silenced)
                            .by(&op.by)
                            .detail(kept.id().to_string());
                        record.history.push(event.clone());
                        applied.events.push((record.warning.alert_id.clone(), event));
                    }
                }
                self.silences.insert(kept.id().to_string(), kept);
                return Ok(applied);
            }
            Action::ExpireSilence { silence_id } => {
                let silence = self
                    .silences
                    .get_mut(silence_id)
                    .ok_or_else(|| ActionError::UnknownSilence(silence_id.clone()))?;
                self.now_ms = self.now_ms.max(at_ms);
                silence.expire(at_ms);
                return Ok(applied);
            }
            _ => {}
        }
        let alert_id = op.action.alert_id().unwrap_or_default();
        let record = self
            .alerts
            .get_mut(alert_id)
            .ok_or_else(|| ActionError::UnknownAlert(alert_id.to_string()))?;
        let event = match &op.action {
            Action::Ack { comment, .. } => {
                if !record.firing() {
                    return Err(ActionError::Conflict(format!(
                        "alert {alert_id} is resolved: there is nothing to acknowledge"
                    )));
                }
                if let Some(ack) = &record.warning.marks.acknowledged {
                    return Err(ActionError::Conflict(format!(
                        "alert {alert_id} is already acknowledged by {} at {}",
                        ack.by, ack.at
                    )));
                }
                record.warning.marks.acknowledged = Some(Acknowledgement {
                    by: op.by.clone(),
                    at: format_ms(at_ms),
                });
                if record.first_ack_ms.is_none() {
                    record.first_ack_ms = Some(at_ms);
                    let decided = record.ack_in_time.is_none();
                    let in_time = *record.ack_in_time.get_or_insert(!record.ack_escalated);
                    self.since_start
                        .ack(record, decided.then_some(in_time), Some(at_ms - record.fired_ms));
                }
                let event = HistoryEvent::new(at_ms, EventKind::Acknowledged).level(record.level());
                match comment {
                    Some(text) => event.detail(text.clone()),
                    None => event,
                }
            }
            Action::Assign { to, .. } => {
                record.warning.marks.assigned_to = Some(to.clone());
                HistoryEvent::new(at_ms, EventKind::Assigned).detail(to.clone())
            }
            Action::Comment { text, .. } => HistoryEvent::new(at_ms, EventKind::Commented).detail(text.clone()),
            Action::Close { feedback, .. } => {
                if record.firing() {
                    return Err(ActionError::Conflict(format!(
                        "alert {alert_id} still fires: it can be closed once it has resolved"
                    )));
                }
                if record.closed {
                    return Err(ActionError::Conflict(format!("alert {alert_id} is already closed")));
                }
                record.closed = true;
                let event = HistoryEvent::new(at_ms, EventKind::Closed);
                match feedback {
                    Some(text) => event.detail(text.clone()),
                    None => event,
                }
            }
            Action::Silence { .. } | Action::ExpireSilence { .. } => return Ok(applied),
        };
        self.now_ms = self.now_ms.max(at_ms);
        let event = event.by(&op.by);
        record.history.push(event.clone());
        if record.firing() && matches!(op.action, Action::Ack { .. } | Action::Assign { .. }) {
            applied.remarked.push(Outgoing::lifecycle(
                record.warning.clone(),
                record.told && !record.withheld,
            ));
        }
        applied.events.push((alert_id.to_string(), event));
        Ok(applied)
    }

    /// The clock reached `now_ms`: with `deadlines`, deadlines that passed are escalated
    /// (once each, stamped with the time they passed); alerts a silence no longer holds back
    /// are notified; old resolved alerts and silences go.
    pub(crate) fn advance(&mut self, now_ms: EpochMs, deadlines: bool) -> Vec<Outgoing> {
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        let mut out = Vec::new();
        let ids: Vec<String> = self
            .alerts
            .iter()
            .filter(|(_, r)| r.firing())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(record) = self.alerts.get(&id) else { continue };
            let due = self.config.deadlines(record.level());
            let ack_due = record.ack_due_from_ms.saturating_add(due.acknowledge.0);
            let resolve_due = record.fired_ms.saturating_add(due.resolve.0);
            let ack_late =
                deadlines && !record.ack_escalated && record.warning.marks.acknowledged.is_none() && now >= ack_due;
            let resolve_late = deadlines && !record.resolve_escalated && now >= resolve_due;
            if !(record.withheld || ack_late || resolve_late || !record.held_escalations.is_empty()) {
                continue;
            }
            let quiet = self.muted_by(&record.warning, now).is_empty();
            let Some(record) = self.alerts.get_mut(&id) else {
                continue;
            };
            // A release first: the paging sinks hear that it fires before they hear it is late.
            if record.withheld && quiet {
                record.withheld = false;
                record.told = true;
                record.warning.marks.silenced = false;
                record.history.push(HistoryEvent::new(now, EventKind::Unsilenced));
                out.push(Outgoing {
                    warning: record.warning.clone(),
                    page: true,
                    made: Some(Made::Release),
                });
            }
            // Escalations a silence held back reach the paging sinks once it ends.
            if quiet {
                for (deadline, due_ms) in std::mem::take(&mut record.held_escalations) {
                    let mut released = escalation(record, &deadline, due_ms, true);
                    released.made = Some(Made::Release);
                    out.push(released);
                }
            }
            if ack_late {
                record.ack_escalated = true;
                let decided = record.ack_in_time.is_none();
                record.ack_in_time.get_or_insert(false);
                if decided {
                    self.since_start.ack(record, Some(false), None);
                }
                out.push(escalate(record, "acknowledge", ack_due, quiet));
            }
            if resolve_late {
                record.resolve_escalated = true;
                record.resolved_in_time.get_or_insert(false);
                self.since_start.resolve(record, Some(false), None);
                out.push(escalate(record, "resolve", resolve_due, quiet));
            }
        }
        let keep_from = now.saturating_sub(self.config.keep_resolved.0);
        let before = self.alerts.len();
        self.alerts
            .retain(|_, r| r.resolved_ms.is_none_or(|at| at >= keep_from));
        // Only resolved alerts go.
        self.resolved = self.resolved.saturating_sub(before - self.alerts.len());
        self.silences.retain(|_, s| s.ends_ms >= keep_from);
        if !out.is_empty() || before != self.alerts.len() {
            self.changes += 1;
        }
        out
    }

    /// Drops the oldest resolved alerts down to `MAX_RESOLVED`.
    fn forget_oldest_resolved(&mut self) {
        let mut resolved: Vec<(EpochMs, String)> = self
            .alerts
            .iter()
            .filter_map(|(id, r)| r.resolved_ms.map(|at| (at, id.clone())))
            .collect();
        resolved.sort_unstable();
        let excess = resolved.len().saturating_sub(MAX_RESOLVED);
        for (_, id) in resolved.into_iter().take(excess) {
            self.alerts.remove(&id);
        }
        self.resolved = self.resolved.min(MAX_RESOLVED);
    }

    /// The next time after the desk's clock at which `advance` would change something: a
    /// deadline (with `deadlines`) or a silence's end. A virtual clock steps through these
    /// so that what happens between two inputs happens in time order.
    pub(crate) fn next_due(&self, deadlines: bool) -> Option<EpochMs> {
        let mut times = Vec::new();
        for record in self.alerts.values().filter(|r| r.firing() && deadlines) {
            let due = self.config.deadlines(record.level());
            if !record.ack_escalated && record.warning.marks.acknowledged.is_none() {
                times.push(record.ack_due_from_ms.saturating_add(due.acknowledge.0));
            }
            if !record.resolve_escalated {
                times.push(record.fired_ms.saturating_add(due.resolve.0));
            }
        }
        times.extend(self.silences.values().map(|s| s.ends_ms));
        times.extend(self.maintenance.iter().map(|w| w.next_end(self.now_ms)));
        times.into_iter().filter(|t| *t > self.now_ms).min()
    }

    pub(crate) fn alert(&self, alert_id: &str) -> Option<&AlertRecord> {
        self.alerts.get(alert_id)
    }

    pub(crate) fn alerts(&self) -> impl Iterator<Item = &AlertRecord> {
        self.alerts.values()
    }

    pub(crate) fn silences(&self) -> impl Iterator<Item = &KeptSilence> {
        self.silences.values()
    }

    pub(crate) fn silence(&self, id: &str) -> Option<&KeptSilence> {
        self.silences.get(id)
    }

    /// The ids of the active silences that mute a warning now.
    pub(crate) fn silenced_by(&self, warning: &Warning) -> Vec<String> {
        self.muted_by(warning, self.now_ms)
    }

    /// Response statistics since the desk began, and over the day before its clock; worked
    /// out again only after something changed (every dashboard asks each second).
    pub(crate) fn stats(&mut self) -> (BreakdownReport, BreakdownReport) {
        if let Some((changes, reports)) = &self.stats_cache
            && *changes == self.changes
        {
            return reports.clone();
        }
        let mut last_day = Breakdown::default();
        let from = self.now_ms.saturating_sub(DAY_MS);
        for record in self.alerts.values().filter(|r| r.fired_ms >= from) {
            last_day.add(record);
        }
        let reports = (self.since_start.report(), last_day.report());
        self.stats_cache = Some((self.changes, reports.clone()));
        reports
    }
}

fn new_record(warning: &Warning, at_ms: EpochMs) -> AlertRecord {
    AlertRecord {
        warning: warning.clone(),
        seen_transition: 0,
        fired_ms: at_ms,
        ack_due_from_ms: at_ms,
        first_ack_ms: None,
        resolved_ms: None,
        closed: false,
        ack_escalated: false,
        resolve_escalated: false,
        ack_in_time: None,
        resolved_in_time: None,
        told: false,
        resolve_paged: false,
        held_escalations: Vec::new(),
        withheld: false,
        history: Vec::new(),
    }
}

/// The escalation notification of a deadline that passed, recorded in the alert's history
/// at the time it passed (not when the clock noticed: the same on every run). Held back by a
/// silence, it is kept for the paging sinks until the silence ends.
fn escalate(record: &mut AlertRecord, deadline: &str, due_ms: EpochMs, page: bool) -> Outgoing {
    record.history.push(
        HistoryEvent::new(due_ms, EventKind::Escalated)
            .level(record.level())
            .detail(format!("not {deadline}d in time")),
    );
    if !page {
        record.held_escalations.push((deadline.to_string(), due_ms));
    }
    escalation(record, deadline, due_ms, page)
}

/// The notification that a deadline passed.
fn escalation(record: &AlertRecord, deadline: &str, due_ms: EpochMs, page: bool) -> Outgoing {
    let mut warning = record.warning.clone();
    warning.status = WarningStatus::Escalated;
    warning.detected_at = format_ms(due_ms);
    warning.latency_ms = 0.0;
    warning.marks.escalation = Some(deadline.to_string());
    Outgoing {
        warning,
        page,
        made: Some(Made::Escalation),
    }
}

mod outgoing;
#[cfg(test)]
mod tests;
