//! The alert lifecycle of one rule, pure (no I/O, no clocks): per alert key,
//! inactive → pending (until `for` is met) → firing (notify) → resolved (after `resolve`
//! clean steps; notify). A level change while firing notifies as an escalation; repeats
//! while firing are not re-sent. A clean step resets a pending alert.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::level::Level;
use crate::state::snapshot::AlertSnapshot;
use crate::time::EpochMs;

/// When a breaching key starts firing (`-- for:` in a rule header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireAfter {
    /// After this many consecutive breaching windows (window rules; 1 = at once).
    Windows(u32),
    /// After breaching continuously for this long in event time (row rules; 0 = at once).
    Duration(i64),
}

/// How a rule's alerts fire and resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub fire_after: FireAfter,
    /// Clean steps (windows, or rows for row rules) before a firing alert resolves.
    pub resolve_after: u32,
}

/// The identity of an alert within its rule: the key columns and their values.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertKey {
    pub fields: Vec<(String, Value)>,
    /// The values joined into one string, for hashing and lookup.
    pub id: String,
}

impl AlertKey {
    pub fn new(fields: Vec<(String, Value)>) -> Self {
        let id = fields
            .iter()
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\u{1f}");
        AlertKey { fields, id }
    }
}

/// One breach: a result row of the rule.
#[derive(Debug, Clone)]
pub(crate) struct Evidence {
    pub key: AlertKey,
    pub level: Level,
    pub values: Map<String, Value>,
    /// The window the breach was found in (window rules).
    pub window: Option<(EpochMs, EpochMs)>,
    /// Event time of the breach: the row's `ts`, or the window's start.
    pub event_ms: EpochMs,
    /// The detection clock when the breach was found.
    pub detected_ms: EpochMs,
    /// Wall-clock arrival (ns since start) of the last event the breach needed.
    pub arrived_ns: u64,
}

/// A clean step for a key: a window closed, or a row arrived, without a breach.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CleanStep {
    pub window: Option<(EpochMs, EpochMs)>,
    pub detected_ms: EpochMs,
    pub arrived_ns: u64,
}

/// What a step changed, when it is worth a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Fired,
    /// The level changed while firing (up or down).
    Escalated {
        from: Level,
    },
    Resolved,
}

/// A notification-worthy change of one alert.
#[derive(Debug, Clone)]
pub struct Transition {
    pub change: Change,
    pub alert_id: String,
    pub key: AlertKey,
    pub level: Level,
    pub values: Map<String, Value>,
    pub window: Option<(EpochMs, EpochMs)>,
    pub first_breach_ms: EpochMs,
    pub detected_ms: EpochMs,
    pub arrived_ns: u64,
    /// This alert's notifications so far, this one included: with `alert_id`, the
    /// notification's identity (a recovered run that sends it again sends the same pair).
    pub number: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Firing,
}

#[derive(Debug, Clone)]
struct Alert {
    status: Status,
    key: AlertKey,
    level: Level,
    values: Map<String, Value>,
    consecutive_breaches: u32,
    clean_steps: u32,
    first_breach_ms: EpochMs,
    alert_id: String,
    /// Notifications sent so far.
    notified: u32,
}

impl Alert {
    /// The notification that this alert resolved at `step`.
    fn resolved(self, step: CleanStep) -> Transition {
        Transition {
            number: self.notified + 1,
            change: Change::Resolved,
            alert_id: self.alert_id,
            key: self.key,
            level: self.level,
            values: self.values,
            window: step.window,
            first_breach_ms: self.first_breach_ms,
            detected_ms: step.detected_ms,
            arrived_ns: step.arrived_ns,
        }
    }
}

/// The alerts of one rule.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    rule: String,
    policy: Policy,
    alerts: HashMap<String, Alert>,
}

/// Snapshot of an alert that is firing now.
#[derive(Debug, Clone, PartialEq)]
pub struct FiringAlert {
    pub alert_id: String,
    pub key: AlertKey,
    pub level: Level,
    pub first_breach_ms: EpochMs,
}

impl Lifecycle {
    pub(crate) fn new(rule: &str, policy: Policy) -> Self {
        Lifecycle {
            rule: rule.to_string(),
            policy,
            alerts: HashMap::new(),
        }
    }

    /// Whether no alert is pending or firing (lets callers skip clean-step bookkeeping).
    pub(crate) fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    /// Pending plus firing alerts: the rule's alert state size.
    pub(crate) fn len(&self) -> usize {
        self.alerts.len()
    }

    /// Every pending and firing alert's key.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &AlertKey> {
        self.alerts.values().map(|alert| &alert.key)
    }

    /// The alerts firing now, ordered by key.
    pub(crate) fn firing(&self) -> Vec<FiringAlert> {
        let mut firing: Vec<FiringAlert> = self
            .alerts
            .values()
            .filter(|a| a.status == Status::Firing)
            .map(|a| FiringAlert {
                alert_id: a.alert_id.clone(),
                key: a.key.clone(),
                level: a.level,
                first_breach_ms: a.first_breach_ms,
            })
            .collect();
        firing.sort_by(|a, b| a.key.id.cmp(&b.key.id));
        firing
    }

    /// A breach for `evidence.key`.
    pub(crate) fn breach(&mut self, evidence: Evidence) -> Option<Transition> {
        let policy = self.policy;
        let rule = &self.rule;
        let alert = self.alerts.entry(evidence.key.id.clone()).or_insert_with(|| Alert {
            status: Status::Pending,
            key: evidence.key.clone(),
            level: evidence.level,
            values: Map::new(),
            consecutive_breaches: 0,
            clean_steps: 0,
            first_breach_ms: evidence.event_ms,
            alert_id: alert_id(rule, &evidence.key.id, evidence.event_ms),
            notified: 0,
        });
        alert.consecutive_breaches = alert.consecutive_breaches.saturating_add(1);
        alert.clean_steps = 0;
        alert.values = evidence.values;
        let previous_level = alert.level;
        alert.level = evidence.level;
        let change = match alert.status {
            Status::Pending => {
                let due = match policy.fire_after {
                    FireAfter::Windows(n) => alert.consecutive_breaches >= n,
                    FireAfter::Duration(ms) => evidence.event_ms - alert.first_breach_ms >= ms,
                };
                if !due {
                    return None;
                }
                alert.status = Status::Firing;
                Change::Fired
            }
            Status::Firing if previous_level != evidence.level => Change::Escalated { from: previous_level },
            Status::Firing => return None,
        };
        alert.notified += 1;
        Some(Transition {
            number: alert.notified,
            change,
            alert_id: alert.alert_id.clone(),
            key: alert.key.clone(),
            level: alert.level,
            values: alert.values.clone(),
            window: evidence.window,
            first_breach_ms: alert.first_breach_ms,
            detected_ms: evidence.detected_ms,
            arrived_ns: evidence.arrived_ns,
        })
    }

    /// A clean step for one key.
    pub(crate) fn clean(&mut self, key_id: &str, step: CleanStep) -> Option<Transition> {
        let alert = self.alerts.get_mut(key_id)?;
        match alert.status {
            Status::Pending => {
                self.alerts.remove(key_id);
                None
            }
            Status::Firing => {
                alert.clean_steps += 1;
                alert.consecutive_breaches = 0;
                if alert.clean_steps < self.policy.resolve_after {
                    return None;
                }
                let alert = self.alerts.remove(key_id)?;
                Some(alert.resolved(step))
            }
        }
    }

    /// A clean step for every alert whose key is not in `breached` (a window closed).
    pub(crate) fn clean_all_except(&mut self, breached: &HashSet<String>, step: CleanStep) -> Vec<Transition> {
        self.clean_where(breached, step, |_| true)
    }

    /// A clean step for every alert not in `breached` whose key passes `judged` (the part of
    /// the key space an evaluation covered).
    pub(crate) fn clean_where(
        &mut self,
        breached: &HashSet<String>,
        step: CleanStep,
        judged: impl Fn(&AlertKey) -> bool,
    ) -> Vec<Transition> {
        let mut ids: Vec<String> = self
            .alerts
            .iter()
            .filter(|(id, alert)| !breached.contains(*id) && judged(&alert.key))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids.iter().filter_map(|id| self.clean(id, step)).collect()
    }
}

impl Lifecycle {
    /// Takes over another version's alerts under this policy (a rule reloaded with the
    /// same alert key keeps its pending and firing alerts, and their ids).
    pub(crate) fn adopt(&mut self, previous: Lifecycle) {
        self.alerts = previous.alerts;
    }

    /// Resolves every firing alert and forgets pending ones (the rule was removed, or its
    /// new version keys alerts differently).
    pub(crate) fn retire(&mut self, step: CleanStep) -> Vec<Transition> {
        let mut alerts: Vec<Alert> = self.alerts.drain().map(|(_, alert)| alert).collect();
        alerts.sort_by(|a, b| a.key.id.cmp(&b.key.id));
        alerts
            .into_iter()
            .filter(|alert| alert.status == Status::Firing)
            .map(|alert| alert.resolved(step))
            .collect()
    }
}

impl Lifecycle {
    /// Every pending and firing alert, by key, as checkpoint data.
    pub(crate) fn snapshot(&self) -> Vec<AlertSnapshot> {
        let mut alerts: Vec<AlertSnapshot> = self
            .alerts
            .values()
            .map(|a| AlertSnapshot {
                firing: a.status == Status::Firing,
                key: a.key.fields.clone(),
                level: a.level,
                values: a.values.clone(),
                consecutive_breaches: a.consecutive_breaches,
                clean_steps: a.clean_steps,
                first_breach_ms: a.first_breach_ms,
                alert_id: a.alert_id.clone(),
                notified: a.notified,
            })
            .collect();
        alerts.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        alerts
    }

    /// Takes back the alerts of a checkpoint.
    pub(crate) fn restore(&mut self, alerts: Vec<AlertSnapshot>) {
        self.alerts = alerts
            .into_iter()
            .map(|a| {
                let key = AlertKey::new(a.key);
                let alert = Alert {
                    status: if a.firing { Status::Firing } else { Status::Pending },
                    key: key.clone(),
                    level: a.level,
                    values: a.values,
                    consecutive_breaches: a.consecutive_breaches,
                    clean_steps: a.clean_steps,
                    first_breach_ms: a.first_breach_ms,
                    alert_id: a.alert_id,
                    notified: a.notified,
                };
                (key.id, alert)
            })
            .collect();
    }
}

/// A stable id for one firing: FNV-1a of rule, key and first breach, as 16 hex digits.
fn alert_id(rule: &str, key_id: &str, first_breach_ms: EpochMs) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in rule
        .bytes()
        .chain([0])
        .chain(key_id.bytes())
        .chain([0])
        .chain(first_breach_ms.to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(device: &str) -> AlertKey {
        AlertKey::new(vec![("device_id".to_string(), Value::String(device.to_string()))])
    }

    fn breach(device: &str, level: Level, at: EpochMs) -> Evidence {
        Evidence {
            key: key(device),
            level,
            values: Map::new(),
            window: Some((at, at + 60_000)),
            event_ms: at,
            detected_ms: at + 62_000,
            arrived_ns: 0,
        }
    }

    fn clean_at(at: EpochMs) -> CleanStep {
        CleanStep {
            window: Some((at, at + 60_000)),
            detected_ms: at + 62_000,
            arrived_ns: 0,
        }
    }

    fn windows(fire: u32, resolve: u32) -> Lifecycle {
        Lifecycle::new(
            "r",
            Policy {
                fire_after: FireAfter::Windows(fire),
                resolve_after: resolve,
            },
        )
    }

    #[test]
    fn alert_is_pending_until_for_is_met_then_fires_once() {
        let mut lc = windows(2, 1);
        assert!(lc.breach(breach("a", Level::Yellow, 0)).is_none());
        let fired = lc
            .breach(breach("a", Level::Yellow, 60_000))
            .expect("fires on the second window");
        assert_eq!((fired.change, fired.first_breach_ms), (Change::Fired, 0));
        assert!(
            lc.breach(breach("a", Level::Yellow, 120_000)).is_none(),
            "repeats are not re-sent"
        );
    }

    #[test]
    fn a_clean_window_resets_a_pending_alert() {
        let mut lc = windows(2, 1);
        assert!(lc.breach(breach("a", Level::Blue, 0)).is_none());
        assert!(lc.clean("a", clean_at(60_000)).is_none());
        assert!(lc.is_empty());
        assert!(
            lc.breach(breach("a", Level::Blue, 120_000)).is_none(),
            "counting starts again"
        );
    }

    #[test]
    fn level_changes_while_firing_notify_as_escalations() {
        let mut lc = windows(1, 1);
        assert_eq!(
            lc.breach(breach("a", Level::Blue, 0)).map(|t| t.change),
            Some(Change::Fired)
        );
        let up = lc.breach(breach("a", Level::Red, 60_000)).expect("escalation");
        assert_eq!(
            (up.change, up.level),
            (Change::Escalated { from: Level::Blue }, Level::Red)
        );
        let down = lc.breach(breach("a", Level::Orange, 120_000)).expect("de-escalation");
        assert_eq!(down.change, Change::Escalated { from: Level::Red });
    }

    #[test]
    fn firing_alert_resolves_after_resolve_clean_steps_and_keeps_its_id() {
        let mut lc = windows(1, 3);
        let fired = lc.breach(breach("a", Level::Orange, 0)).expect("fires");
        assert!(lc.clean("a", clean_at(60_000)).is_none());
        assert!(lc.clean("a", clean_at(120_000)).is_none());
        let resolved = lc
            .clean("a", clean_at(180_000))
            .expect("resolves on the third clean window");
        assert_eq!(resolved.change, Change::Resolved);
        assert_eq!(resolved.alert_id, fired.alert_id);
        assert_eq!(resolved.level, Level::Orange);
        assert!(lc.is_empty());
        let again = lc.breach(breach("a", Level::Orange, 240_000)).expect("a new firing");
        assert_ne!(again.alert_id, fired.alert_id, "a new firing has a new id");
    }

    #[test]
    fn an_adopted_alert_keeps_its_id_under_the_new_policy_and_retire_resolves_firing_ones() {
        let mut old = windows(1, 1);
        let fired = old.breach(breach("a", Level::Yellow, 0)).expect("fires");
        assert!(old.breach(breach("b", Level::Blue, 0)).is_some());
        let mut new = windows(1, 2);
        new.adopt(old);
        assert!(
            new.breach(breach("a", Level::Yellow, 60_000)).is_none(),
            "still the same firing"
        );
        assert!(
            new.clean("a", clean_at(120_000)).is_none(),
            "the new policy needs two clean steps"
        );
        let resolved = new.clean("a", clean_at(180_000)).expect("resolves");
        assert_eq!(resolved.alert_id, fired.alert_id);
        let retired = new.retire(clean_at(240_000));
        assert_eq!(retired.len(), 1);
        assert_eq!((retired[0].change, retired[0].key.id.as_str()), (Change::Resolved, "b"));
        assert!(new.is_empty());
    }

    #[test]
    fn a_breach_interrupts_the_clean_count() {
        let mut lc = windows(1, 2);
        lc.breach(breach("a", Level::Blue, 0));
        assert!(lc.clean("a", clean_at(60_000)).is_none());
        assert!(lc.breach(breach("a", Level::Blue, 120_000)).is_none());
        assert!(lc.clean("a", clean_at(180_000)).is_none(), "the count restarted");
        assert!(lc.clean("a", clean_at(240_000)).is_some());
    }

    #[test]
    fn duration_for_fires_once_the_breach_has_lasted() {
        let mut lc = Lifecycle::new(
            "r",
            Policy {
                fire_after: FireAfter::Duration(120_000),
                resolve_after: 1,
            },
        );
        assert!(lc.breach(breach("a", Level::Red, 0)).is_none());
        assert!(lc.breach(breach("a", Level::Red, 60_000)).is_none());
        assert_eq!(
            lc.breach(breach("a", Level::Red, 120_000)).map(|t| t.change),
            Some(Change::Fired)
        );
    }

    #[test]
    fn closing_a_window_cleans_only_the_keys_that_did_not_breach() {
        let mut lc = windows(1, 1);
        lc.breach(breach("a", Level::Blue, 0));
        lc.breach(breach("b", Level::Blue, 0));
        let breached = HashSet::from(["a".to_string()]);
        let resolved = lc.clean_all_except(&breached, clean_at(60_000));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].key, key("b"));
        assert_eq!(lc.firing().len(), 1);
    }
}
