//! The desk's book: every alert it knows and every silence, changed only by three inputs,
//! each deterministic for a given order: a lifecycle notification from the rules
//! ([`Desk::on_warning`]), an operator's action ([`Desk::apply`]), and the clock reaching a
//! time ([`Desk::advance`]: deadlines pass, silences end). Each returns what to send: a
//! notification for every sink, or only for the non-paging ones (`page: false`) while a
//! silence holds it back.

use std::collections::BTreeMap;

use super::actions::{Action, ActionError, Operation};
use super::record::{AlertRecord, EventKind, HistoryEvent};
use super::silence::{KeptSilence, MaintenanceWindow, labels_of};
use super::stats::{Breakdown, BreakdownReport};
use crate::alert::warning::{Acknowledgement, Warning, WarningStatus};
use crate::config::operations::OperationsConfig;
use crate::time::{EpochMs, format_ms, parse_ts_text};

/// A notification from the desk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub(crate) warning: Warning,
    /// Whether the paging sinks (MQTT, webhook) get it; the records (stdout, file) and the
    /// dashboard always do.
    pub(crate) page: bool,
}

/// What an accepted action changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    /// History events it added, by alert.
    pub(crate) events: Vec<(String, HistoryEvent)>,
    /// Firing alerts whose marks changed: the receivers' current view (the retained MQTT
    /// state, the dashboard) is updated, no new notification is sent.
    pub(crate) remarked: Vec<Warning>,
}

/// Every alert and silence, the deadlines, and the statistics since the desk began.
#[derive(Debug, Clone)]
pub(crate) struct Desk {
    config: OperationsConfig,
    alerts: BTreeMap<String, AlertRecord>,
    silences: BTreeMap<String, KeptSilence>,
    /// The config's daily maintenance windows.
    maintenance: Vec<MaintenanceWindow>,
    since_start: Breakdown,
    now_ms: EpochMs,
}

/// A day, for the statistics of the last day.
const DAY_MS: i64 = 86_400_000;

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
            maintenance,
            since_start: Breakdown::default(),
            now_ms: 0,
        })
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
        if is_new && warning.status != WarningStatus::Firing {
            // A resolve of an alert from before the desk's state began: passed on as it is.
            return Outgoing {
                warning: warning.clone(),
                page: true,
            };
        }
        let record = self
            .alerts
            .entry(warning.alert_id.clone())
            .or_insert_with(|| new_record(warning, at_ms));
        if !is_new && warning.transition != 0 && warning.transition <= record.seen_transition {
            // Computed again by a recovery: nothing new happened.
            let mut again = warning.clone();
            again.marks = record.warning.marks.clone();
            return Outgoing {
                warning: again,
                page: true,
            };
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
            WarningStatus::Resolved => std::mem::take(&mut record.told),
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
        Outgoing { warning: marked, page }
    }

    /// Applies an operator's action, or refuses it with nothing changed.
    pub(crate) fn apply(&mut self, op: &Operation) -> Result<Applied, ActionError> {
        op.action.validate()?;
        let at_ms = op.at_ms;
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
                    if kept.matches(&labels_of(&record.warning)) {
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
            applied.remarked.push(record.warning.clone());
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
            let muted = self.muted_by(&record.warning, now);
            let due = self.config.deadlines(record.level());
            let Some(record) = self.alerts.get_mut(&id) else {
                continue;
            };
            let ack_due = record.ack_due_from_ms.saturating_add(due.acknowledge.0);
            if deadlines && !record.ack_escalated && record.warning.marks.acknowledged.is_none() && now >= ack_due {
                record.ack_escalated = true;
                let decided = record.ack_in_time.is_none();
                record.ack_in_time.get_or_insert(false);
                if decided {
                    self.since_start.ack(record, Some(false), None);
                }
                out.push(escalate(record, "acknowledge", ack_due, muted.is_empty()));
            }
            let resolve_due = record.fired_ms.saturating_add(due.resolve.0);
            if deadlines && !record.resolve_escalated && now >= resolve_due {
                record.resolve_escalated = true;
                record.resolved_in_time.get_or_insert(false);
                self.since_start.resolve(record, Some(false), None);
                out.push(escalate(record, "resolve", resolve_due, muted.is_empty()));
            }
            if record.withheld && muted.is_empty() {
                record.withheld = false;
                record.told = true;
                record.warning.marks.silenced = false;
                record.history.push(HistoryEvent::new(now, EventKind::Unsilenced));
                out.push(Outgoing {
                    warning: record.warning.clone(),
                    page: true,
                });
            }
        }
        let keep_from = now.saturating_sub(self.config.keep_resolved.0);
        self.alerts
            .retain(|_, r| r.resolved_ms.is_none_or(|at| at >= keep_from));
        self.silences.retain(|_, s| s.ends_ms >= keep_from);
        out
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

    /// Response statistics since the desk began, and over the day before its clock.
    pub(crate) fn stats(&self) -> (BreakdownReport, BreakdownReport) {
        let mut last_day = Breakdown::default();
        let from = self.now_ms.saturating_sub(DAY_MS);
        for record in self.alerts.values().filter(|r| r.fired_ms >= from) {
            last_day.add(record);
        }
        (self.since_start.report(), last_day.report())
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
        withheld: false,
        history: Vec::new(),
    }
}

/// The escalation notification of a deadline that passed, recorded in the alert's history
/// at the time it passed (not when the clock noticed: the same on every run).
fn escalate(record: &mut AlertRecord, deadline: &str, due_ms: EpochMs, page: bool) -> Outgoing {
    record.history.push(
        HistoryEvent::new(due_ms, EventKind::Escalated)
            .level(record.level())
            .detail(format!("not {deadline}d in time")),
    );
    let mut warning = record.warning.clone();
    warning.status = WarningStatus::Escalated;
    warning.detected_at = format_ms(due_ms);
    warning.latency_ms = 0.0;
    warning.marks.escalation = Some(deadline.to_string());
    Outgoing { warning, page }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;
    use crate::alert::desk::silence::{Silence, parse_matcher};
    use crate::alert::warning::Marks;
    use crate::level::Level;

    const T0: EpochMs = 1_768_435_200_000; // 2026-01-15T00:00:00Z
    const MIN: EpochMs = 60_000;

    fn warning(id: &str, device: &str, status: WarningStatus, level: Level, at: EpochMs, transition: u32) -> Warning {
        Warning {
            alert_id: id.into(),
            rule: "gas_lel_high".into(),
            status,
            level,
            table: "sensor".into(),
            key: Map::from_iter([
                ("district".to_string(), Value::from("xicheng")),
                ("device_id".to_string(), Value::from(device)),
            ]),
            values: Map::new(),
            window_start: None,
            window_end: None,
            first_breach: format_ms(at),
            detected_at: format_ms(at),
            latency_ms: 0.0,
            description: String::new(),
            transition,
            escalated_from: None,
            marks: Marks::default(),
        }
    }

    fn op(at: EpochMs, by: &str, action: Action) -> Operation {
        Operation {
            at_ms: at,
            by: by.into(),
            action,
        }
    }

    fn ack(id: &str) -> Action {
        Action::Ack {
            alert_id: id.into(),
            comment: None,
        }
    }

    fn events(desk: &Desk, id: &str) -> Vec<(EventKind, Option<String>)> {
        desk.alert(id)
            .map(|r| r.history.iter().map(|e| (e.event, e.by.clone())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn operators_act_and_the_history_keeps_every_event_in_order() {
        let mut desk = Desk::new(OperationsConfig::default()).unwrap();
        desk.on_warning(&warning("a1", "gas-1", WarningStatus::Firing, Level::Yellow, T0, 1));
        desk.apply(&op(T0 + MIN, "li", ack("a1"))).unwrap();
        let assign = Action::Assign {
            alert_id: "a1".into(),
            to: "xicheng gas unit".into(),
        };
        let applied = desk.apply(&op(T0 + 2 * MIN, "li", assign)).unwrap();
        assert_eq!(applied.remarked.len(), 1, "the receivers' view shows the assignment");
        let comment = Action::Comment {
            alert_id: "a1".into(),
            text: "crew on the way".into(),
        };
        desk.apply(&op(T0 + 3 * MIN, "wang", comment)).unwrap();
        // A rise in level takes the acknowledgement back.
        let raised = desk.on_warning(&warning(
            "a1",
            "gas-1",
            WarningStatus::Firing,
            Level::Red,
            T0 + 4 * MIN,
            2,
        ));
        assert!(raised.warning.marks.acknowledged.is_none());
        assert_eq!(raised.warning.marks.assigned_to.as_deref(), Some("xicheng gas unit"));
        let close = Action::Close {
            alert_id: "a1".into(),
            feedback: Some("valve replaced".into()),
        };
        assert!(matches!(
            desk.apply(&op(T0 + 5 * MIN, "li", close.clone())),
            Err(ActionError::Conflict(_))
        ));
        desk.on_warning(&warning(
            "a1",
            "gas-1",
            WarningStatus::Resolved,
            Level::Red,
            T0 + 6 * MIN,
            3,
        ));
        desk.apply(&op(T0 + 7 * MIN, "li", close.clone())).unwrap();
        assert!(matches!(
            desk.apply(&op(T0 + 8 * MIN, "li", close)),
            Err(ActionError::Conflict(_))
        ));
        let li = Some("li".to_string());
        assert_eq!(
            events(&desk, "a1"),
            vec![
                (EventKind::Fired, None),
                (EventKind::Acknowledged, li.clone()),
                (EventKind::Assigned, li.clone()),
                (EventKind::Commented, Some("wang".into())),
                (EventKind::LevelChanged, None),
                (EventKind::Unacknowledged, None),
                (EventKind::Resolved, None),
                (EventKind::Closed, li),
            ]
        );
        assert_eq!(
            desk.apply(&op(T0, "li", ack("nope"))),
            Err(ActionError::UnknownAlert("nope".into()))
        );
        let long = Action::Comment {
            alert_id: "a1".into(),
            text: "x".repeat(5000),
        };
        assert_eq!(desk.apply(&op(T0, "li", long)), Err(ActionError::TooLong));
        // A recovery computing a notification again adds nothing.
        desk.on_warning(&warning(
            "a1",
            "gas-1",
            WarningStatus::Resolved,
            Level::Red,
            T0 + 6 * MIN,
            3,
        ));
        assert_eq!(events(&desk, "a1").len(), 8);
    }

    #[test]
    fn an_unacknowledged_deadline_escalates_exactly_once_and_an_acknowledged_one_never() {
        let mut desk = Desk::new(OperationsConfig::default()).unwrap(); // red: acknowledge within 5 min
        desk.on_warning(&warning("late", "gas-1", WarningStatus::Firing, Level::Red, T0, 1));
        desk.on_warning(&warning("fast", "gas-2", WarningStatus::Firing, Level::Red, T0, 1));
        desk.apply(&op(T0 + 4 * MIN, "li", ack("fast"))).unwrap();
        assert!(desk.advance(T0 + 5 * MIN - 1, true).is_empty());
        let sent = desk.advance(T0 + 5 * MIN, true);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].warning.alert_id, "late");
        assert_eq!(sent[0].warning.status, WarningStatus::Escalated);
        assert_eq!(sent[0].warning.marks.escalation.as_deref(), Some("acknowledge"));
        assert_eq!(sent[0].warning.detected_at, format_ms(T0 + 5 * MIN));
        assert!(desk.advance(T0 + 60 * MIN, true).is_empty(), "once per deadline");
        // The resolve deadline (2 h) escalates both, once each.
        let sent = desk.advance(T0 + 120 * MIN, true);
        let ids: Vec<_> = sent
            .iter()
            .map(|o| (o.warning.alert_id.as_str(), o.warning.marks.escalation.as_deref()))
            .collect();
        assert_eq!(ids, [("fast", Some("resolve")), ("late", Some("resolve"))]);
        assert!(desk.advance(T0 + 600 * MIN, true).is_empty());
        // Without deadlines (a replay's clock) nothing escalates.
        let mut replay = Desk::new(OperationsConfig::default()).unwrap();
        replay.on_warning(&warning("r", "gas-3", WarningStatus::Firing, Level::Red, T0, 1));
        assert!(replay.advance(T0 + 600 * MIN, false).is_empty());
    }

    #[test]
    fn a_silence_holds_back_paging_and_the_alert_is_notified_once_when_it_ends() {
        let mut desk = Desk::new(OperationsConfig::default()).unwrap();
        let silence = Silence {
            id: "maint".into(),
            matchers: vec![parse_matcher("device_id=gas-1").unwrap()],
            starts_at: format_ms(T0),
            ends_at: format_ms(T0 + 30 * MIN),
            created_by: String::new(),
            comment: "valve work".into(),
        };
        desk.apply(&op(T0, "li", Action::Silence { silence })).unwrap();
        let held = desk.on_warning(&warning(
            "s1",
            "gas-1",
            WarningStatus::Firing,
            Level::Yellow,
            T0 + MIN,
            1,
        ));
        assert!(!held.page && held.warning.marks.silenced);
        let other = desk.on_warning(&warning(
            "s2",
            "gas-2",
            WarningStatus::Firing,
            Level::Yellow,
            T0 + MIN,
            1,
        ));
        assert!(other.page && !other.warning.marks.silenced);
        let held = desk.on_warning(&warning(
            "s1",
            "gas-1",
            WarningStatus::Firing,
            Level::Orange,
            T0 + 2 * MIN,
            2,
        ));
        assert!(!held.page);
        assert!(desk.advance(T0 + 29 * MIN, false).is_empty());
        let released = desk.advance(T0 + 30 * MIN, false);
        assert_eq!(released.len(), 1);
        assert!(released[0].page && !released[0].warning.marks.silenced);
        assert_eq!(
            (released[0].warning.alert_id.as_str(), released[0].warning.level),
            ("s1", Level::Orange)
        );
        assert!(desk.advance(T0 + 40 * MIN, false).is_empty(), "notified once");
        // Its resolve pages: the receivers were told it fires.
        assert!(
            desk.on_warning(&warning(
                "s1",
                "gas-1",
                WarningStatus::Resolved,
                Level::Orange,
                T0 + 41 * MIN,
                3
            ))
            .page
        );
    }

    #[test]
    fn an_alert_resolved_under_its_silence_never_pages() {
        let mut desk = Desk::new(OperationsConfig::default()).unwrap();
        let silence = Silence {
            id: "m".into(),
            matchers: vec![parse_matcher("alertname=gas_lel_high").unwrap()],
            starts_at: format_ms(T0),
            ends_at: format_ms(T0 + 30 * MIN),
            created_by: String::new(),
            comment: String::new(),
        };
        desk.apply(&op(T0, "li", Action::Silence { silence })).unwrap();
        assert!(
            !desk
                .on_warning(&warning("q", "gas-1", WarningStatus::Firing, Level::Blue, T0 + MIN, 1))
                .page
        );
        assert!(
            !desk
                .on_warning(&warning(
                    "q",
                    "gas-1",
                    WarningStatus::Resolved,
                    Level::Blue,
                    T0 + 2 * MIN,
                    2
                ))
                .page
        );
        assert!(desk.advance(T0 + 31 * MIN, false).is_empty());
        // Expiring a silence early releases at once.
        let mut desk = Desk::new(OperationsConfig::default()).unwrap();
        let silence = Silence {
            id: "m".into(),
            matchers: vec![parse_matcher("alertname=gas_lel_high").unwrap()],
            starts_at: format_ms(T0),
            ends_at: format_ms(T0 + 30 * MIN),
            created_by: String::new(),
            comment: String::new(),
        };
        desk.apply(&op(T0, "li", Action::Silence { silence })).unwrap();
        desk.on_warning(&warning("q", "gas-1", WarningStatus::Firing, Level::Blue, T0 + MIN, 1));
        let expire = Action::ExpireSilence { silence_id: "m".into() };
        desk.apply(&op(T0 + 5 * MIN, "li", expire)).unwrap();
        let released = desk.advance(T0 + 5 * MIN, false);
        assert_eq!(released.len(), 1);
        assert_eq!(desk.silence("m").map(|s| s.ends_ms), Some(T0 + 5 * MIN));
    }

    #[test]
    fn a_maintenance_window_holds_back_paging_and_releases_at_its_end() {
        let mut config = OperationsConfig::default();
        config.maintenance.push(crate::config::operations::Maintenance {
            name: "gas detectors".into(),
            matchers: vec!["device_id=~\"gas-.*\"".into()],
            from: "07:55".into(), // Beijing: 23:55 UTC the day before T0
            to: "08:10".into(),   // 00:10 UTC
        });
        let mut desk = Desk::new(config).unwrap();
        let held = desk.on_warning(&warning("m1", "gas-1", WarningStatus::Firing, Level::Red, T0, 1));
        assert!(!held.page && held.warning.marks.silenced);
        assert_eq!(desk.silenced_by(&held.warning), ["maintenance:gas detectors"]);
        assert_eq!(desk.next_due(false), Some(T0 + 10 * MIN));
        let released = desk.advance(T0 + 10 * MIN, false);
        assert_eq!(released.len(), 1);
        assert!(released[0].page && !released[0].warning.marks.silenced);
        // The next day's window holds a new alert back again.
        let day = 86_400_000;
        assert!(
            !desk
                .on_warning(&warning("m2", "gas-2", WarningStatus::Firing, Level::Red, T0 + day, 1))
                .page
        );
        assert!(
            desk.on_warning(&warning(
                "m3",
                "gas-3",
                WarningStatus::Firing,
                Level::Red,
                T0 + day + 11 * MIN,
                1
            ))
            .page
        );
        let mut bad = OperationsConfig::default();
        bad.maintenance.push(crate::config::operations::Maintenance {
            name: "x".into(),
            matchers: vec!["nonsense".into()],
            from: "01:00".into(),
            to: "02:00".into(),
        });
        assert!(Desk::new(bad).unwrap_err().contains("not a matcher"));
    }

    #[test]
    fn response_statistics_match_a_hand_count() {
        // Red: acknowledge within 5 min, resolve within 2 h. Yellow: 1 h and 7 d.
        let mut desk = Desk::new(OperationsConfig::default()).unwrap();
        let fire = |desk: &mut Desk, id: &str, device: &str, level: Level, at: EpochMs| {
            desk.on_warning(&warning(id, device, WarningStatus::Firing, level, at, 1));
        };
        let resolve = |desk: &mut Desk, id: &str, device: &str, level: Level, at: EpochMs| {
            desk.on_warning(&warning(id, device, WarningStatus::Resolved, level, at, 2));
        };
        // r1: acked after 2 min (in time), resolved after 30 min (in time).
        fire(&mut desk, "r1", "gas-1", Level::Red, T0);
        desk.apply(&op(T0 + 2 * MIN, "li", ack("r1"))).unwrap();
        resolve(&mut desk, "r1", "gas-1", Level::Red, T0 + 30 * MIN);
        // r2: acked after 10 min (late: escalated at 5), resolved after 3 h (late).
        fire(&mut desk, "r2", "gas-2", Level::Red, T0);
        desk.advance(T0 + 5 * MIN, true);
        desk.apply(&op(T0 + 10 * MIN, "li", ack("r2"))).unwrap();
        desk.advance(T0 + 120 * MIN, true);
        resolve(&mut desk, "r2", "gas-2", Level::Red, T0 + 180 * MIN);
        // r3: never acked, still firing: its acknowledge deadline passed.
        fire(&mut desk, "r3", "gas-3", Level::Red, T0 + 100 * MIN);
        // y1: acked after 20 min (in time), still firing, inside its resolve deadline.
        fire(&mut desk, "y1", "gas-4", Level::Yellow, T0 + 100 * MIN);
        desk.apply(&op(T0 + 120 * MIN, "wang", ack("y1"))).unwrap();
        desk.advance(T0 + 200 * MIN, true);
        let (since_start, last_day) = desk.stats();
        let red = &since_start.by_level["red"];
        assert_eq!((red.fired, red.acknowledged, red.acknowledged_in_time), (3, 2, 1));
        // Decided: r1 (in time), r2 (late), r3 (late) → 1 of 3.
        assert_eq!(red.response_rate, Some(1.0 / 3.0));
        assert_eq!((red.resolved, red.resolved_in_time), (2, 1));
        // Decided: r1 (in time), r2 (late); r3's 2 h have not passed.
        assert_eq!(red.resolution_rate, Some(0.5));
        assert_eq!(red.ack_mean_s, Some(360.0)); // (120 s + 600 s) / 2
        let yellow = &since_start.by_level["yellow"];
        assert_eq!(
            (yellow.fired, yellow.acknowledged_in_time, yellow.response_rate),
            (1, 1, Some(1.0))
        );
        assert_eq!(yellow.resolution_rate, None);
        assert_eq!(since_start.all.fired, 4);
        assert_eq!(since_start.by_district["xicheng"].fired, 4);
        assert_eq!(since_start.by_table["sensor"].acknowledged, 3);
        // Everything fired within the last day: the same counts.
        assert_eq!(last_day, since_start);
    }
}
