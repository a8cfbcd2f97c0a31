//! Speaking to Alertmanager (`webhook.format = "alertmanager"`). Alertmanager resolves an
//! alert by itself once its `endsAt` passes, and an alert posted without one gets
//! `resolve_timeout` (5 min by default), so a warning that keeps firing would vanish. As
//! Prometheus does, every firing alert is sent with `endsAt` a few re-send intervals ahead
//! and sent again each interval while it fires ([`ActiveAlerts`]); its resolve carries its
//! real end. An alert whose level changes is a new Alertmanager alert (the `severity` label
//! differs), so the old one is ended at once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::warning::{Warning, WarningStatus};
use crate::time::{EpochMs, format_ms};

/// A firing alert stays active this many re-send intervals past its last send.
const VALID_FOR_INTERVALS: u32 = 4;

/// One alert in Alertmanager's `POST /api/v2/alerts` shape (a one-alert array). A firing
/// alert has no `endsAt` here: it is set when the alert is sent ([`ActiveAlerts::prepare`]).
pub fn alertmanager_body(warning: &Warning) -> Value {
    let labels = super::desk::silence::labels_of(warning);
    let mut alert = json!({
        "labels": labels,
        "annotations": {
            "description": warning.description,
            "alert_id": warning.alert_id,
            "values": Value::Object(warning.values.clone()).to_string(),
        },
        "startsAt": warning.first_breach,
    });
    // An escalation updates the firing alert (same labels) with the deadline that passed.
    if let Some(deadline) = &warning.marks.escalation {
        alert["annotations"]["escalated"] = json!(deadline);
    }
    if let Some(ack) = &warning.marks.acknowledged {
        alert["annotations"]["acknowledged_by"] = json!(ack.by);
    }
    if warning.status == WarningStatus::Resolved {
        alert["endsAt"] = json!(warning.detected_at);
    }
    json!([alert])
}

/// The alerts Alertmanager holds as firing because of this run, by `alert_id`, as last
/// delivered (without `endsAt`).
#[derive(Debug, Default)]
pub(crate) struct ActiveAlerts {
    firing: BTreeMap<String, Value>,
    interval: Duration,
}

impl ActiveAlerts {
    pub(crate) fn new(interval: Duration) -> Self {
        ActiveAlerts {
            firing: BTreeMap::new(),
            interval,
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.firing.is_empty()
    }

    /// The body to POST for a spooled one, at wall time `now_ms`: firing alerts get their
    /// `endsAt`; an alert that changed level also ends its previous form.
    pub(crate) fn prepare(&self, spooled: &[u8], now_ms: EpochMs) -> Vec<u8> {
        let Ok(Value::Array(alerts)) = serde_json::from_slice::<Value>(spooled) else {
            return spooled.to_vec();
        };
        let mut out = Vec::with_capacity(alerts.len() + 1);
        for mut alert in alerts {
            // Alertmanager refuses an end before the start (a device clock ahead of ours).
            let starts_ms = starts_at_ms(&alert);
            match alert.get("endsAt").and_then(Value::as_str).and_then(parse_ms) {
                Some(ends_ms) => alert["endsAt"] = json!(format_ms(ends_ms.max(starts_ms))),
                None => {
                    let previous = self.firing.get(alert_id(&alert));
                    if let Some(previous) = previous.filter(|p| p["labels"] != alert["labels"]) {
                        let mut ended = previous.clone();
                        ended["endsAt"] = json!(format_ms(now_ms.max(starts_at_ms(previous))));
                        out.push(ended);
                    }
                    alert["endsAt"] = json!(self.valid_until(now_ms.max(starts_ms)));
                }
            }
            out.push(alert);
        }
        serde_json::to_vec(&Value::Array(out)).unwrap_or_else(|_| spooled.to_vec())
    }

    /// A spooled body reached Alertmanager: its firing alerts are active, its resolved ones not.
    pub(crate) fn delivered(&mut self, spooled: &[u8]) {
        let Ok(Value::Array(alerts)) = serde_json::from_slice::<Value>(spooled) else {
            return;
        };
        for alert in alerts {
            let id = alert_id(&alert).to_string();
            match alert.get("endsAt") {
                Some(_) => self.firing.remove(&id),
                None => self.firing.insert(id, alert),
            };
        }
    }

    /// The receiver refused a spooled body: its alerts are not sent again.
    pub(crate) fn forget(&mut self, spooled: &[u8]) {
        if let Ok(Value::Array(alerts)) = serde_json::from_slice::<Value>(spooled) {
            for alert in alerts {
                self.firing.remove(alert_id(&alert));
            }
        }
    }

    /// Takes over what fires after a recovery (the alerts an earlier run had sent).
    pub(crate) fn adopt(&mut self, firing: &[Warning]) {
        for warning in firing {
            if let Value::Array(alerts) = alertmanager_body(warning) {
                self.delivered(&serde_json::to_vec(&alerts).unwrap_or_default());
            }
        }
    }

    /// Every active alert again with a fresh `endsAt`, or `None` when none is active.
    pub(crate) fn resend_body(&self, now_ms: EpochMs) -> Option<(Vec<u8>, usize)> {
        if self.firing.is_empty() {
            return None;
        }
        let alerts: Vec<Value> = self
            .firing
            .values()
            .map(|alert| {
                let mut alert = alert.clone();
                alert["endsAt"] = json!(self.valid_until(now_ms.max(starts_at_ms(&alert))));
                alert
            })
            .collect();
        let n = alerts.len();
        serde_json::to_vec(&alerts).ok().map(|body| (body, n))
    }

    fn valid_until(&self, now_ms: EpochMs) -> String {
        let ahead = self.interval.saturating_mul(VALID_FOR_INTERVALS).as_millis() as EpochMs;
        format_ms(now_ms.saturating_add(ahead))
    }
}

/// An alert's `startsAt` as epoch ms (0 when it has none).
fn starts_at_ms(alert: &Value) -> EpochMs {
    alert["startsAt"].as_str().and_then(parse_ms).unwrap_or(0)
}

fn parse_ms(text: &str) -> Option<EpochMs> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn alert_id(alert: &Value) -> &str {
    alert["annotations"]["alert_id"].as_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(id: &str, severity: &str) -> Vec<u8> {
        serde_json::to_vec(&json!([{
            "labels": {"alertname": "gas", "severity": severity},
            "annotations": {"alert_id": id},
            "startsAt": "2026-01-15T00:00:00.000Z"
        }]))
        .unwrap()
    }

    fn resolved(id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!([{
            "labels": {"alertname": "gas", "severity": "red"},
            "annotations": {"alert_id": id},
            "startsAt": "2026-01-15T00:00:00.000Z",
            "endsAt": "2026-01-15T00:10:00.000Z"
        }]))
        .unwrap()
    }

    const NOW: EpochMs = 1_768_435_200_000; // 2026-01-15T00:00:00Z

    fn sent(body: Vec<u8>) -> Value {
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn a_firing_alert_is_sent_with_ends_at_four_intervals_ahead_and_resent_until_resolved() {
        let mut active = ActiveAlerts::new(Duration::from_secs(60));
        let body = sent(active.prepare(&firing("a1", "red"), NOW));
        assert_eq!(body[0]["endsAt"], "2026-01-15T00:04:00.000Z");
        active.delivered(&firing("a1", "red"));
        let (again, n) = active.resend_body(NOW + 60_000).unwrap();
        assert_eq!(n, 1);
        assert_eq!(sent(again)[0]["endsAt"], "2026-01-15T00:05:00.000Z");
        // The resolve keeps its own end and ends the re-sends.
        let body = sent(active.prepare(&resolved("a1"), NOW + 600_000));
        assert_eq!(body[0]["endsAt"], "2026-01-15T00:10:00.000Z");
        active.delivered(&resolved("a1"));
        assert!(active.resend_body(NOW + 660_000).is_none());
    }

    #[test]
    fn ends_never_come_before_starts() {
        let active = ActiveAlerts::new(Duration::from_secs(60));
        // A device clock ten minutes ahead: the firing's horizon and the resolve's end start
        // from its startsAt.
        let ahead = |ends: Option<&str>| {
            let mut alert = json!({"labels": {"alertname": "gas"}, "annotations": {"alert_id": "a9"},
                                   "startsAt": "2026-01-15T00:10:00.000Z"});
            if let Some(ends) = ends {
                alert["endsAt"] = json!(ends);
            }
            serde_json::to_vec(&json!([alert])).unwrap()
        };
        assert_eq!(
            sent(active.prepare(&ahead(None), NOW))[0]["endsAt"],
            "2026-01-15T00:14:00.000Z"
        );
        let resolved = sent(active.prepare(&ahead(Some("2026-01-15T00:01:00.000Z")), NOW));
        assert_eq!(resolved[0]["endsAt"], "2026-01-15T00:10:00.000Z");
    }

    #[test]
    fn a_refused_body_is_not_resent() {
        let mut active = ActiveAlerts::new(Duration::from_secs(60));
        active.delivered(&firing("a1", "red"));
        active.forget(&resolved("a1"));
        assert!(active.resend_body(NOW).is_none());
    }

    #[test]
    fn a_level_change_ends_the_alert_under_its_old_severity() {
        let mut active = ActiveAlerts::new(Duration::from_secs(60));
        active.delivered(&firing("a1", "yellow"));
        let body = sent(active.prepare(&firing("a1", "red"), NOW));
        assert_eq!(body.as_array().unwrap().len(), 2);
        assert_eq!(body[0]["labels"]["severity"], "yellow");
        assert_eq!(body[0]["endsAt"], "2026-01-15T00:00:00.000Z");
        assert_eq!(body[1]["labels"]["severity"], "red");
        active.delivered(&firing("a1", "red"));
        let (again, n) = active.resend_body(NOW).unwrap();
        assert_eq!(n, 1);
        assert_eq!(sent(again)[0]["labels"]["severity"], "red");
    }
}
