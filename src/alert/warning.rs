//! The warning notification of DESIGN.md, one JSON object each:
//! `{alert_id, rule, status, level, table, key, values, window_start, window_end,
//! first_breach, detected_at, latency_ms, description, transition}`, and its one-line human
//! form. `transition` (the alert's notification number) is cityops' addition to DESIGN.md:
//! with `alert_id` it identifies a notification, so a receiver can drop one sent twice.
//! The operations desk adds its marks ([`Marks`]: acknowledged, assigned, silenced, and
//! which deadline an `escalated` notification is about); an alert nobody touched carries
//! none, so its JSON is exactly DESIGN.md's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lifecycle::{Change, Transition};
use crate::level::Level;
use crate::state::snapshot::{AlertSnapshot, RuleSnapshot};
use crate::time::format_ms;

/// Firing (including level changes), resolved, or escalated: a response deadline passed
/// while the alert fires (the desk's notification; the alert's lifecycle is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarningStatus {
    Firing,
    Resolved,
    Escalated,
}

/// Who acknowledged an alert, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    pub by: String,
    pub at: String,
}

/// The operations desk's marks on a notification; each is left out of the JSON when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledgement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    /// A silence holds the alert's notifications back from the paging sinks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silenced: bool,
    /// On an `escalated` notification: the deadline that passed, `acknowledge` or `resolve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
}

/// What a rule contributes to its warnings.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub rule: String,
    pub table: String,
    pub description: String,
}

/// One notification to the warning system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub alert_id: String,
    pub rule: String,
    pub status: WarningStatus,
    pub level: Level,
    pub table: String,
    pub key: Map<String, Value>,
    pub values: Map<String, Value>,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    pub first_breach: String,
    pub detected_at: String,
    pub latency_ms: f64,
    pub description: String,
    /// This alert's notifications so far, this one included. With `alert_id` it is the
    /// notification's identity: a notification sent again after a crash has the same pair.
    #[serde(default)]
    pub transition: u32,
    /// Set when a firing alert changed level; shown on the human line, not in the JSON.
    #[serde(skip)]
    pub escalated_from: Option<Level>,
    #[serde(flatten)]
    pub marks: Marks,
}

impl Warning {
    /// Builds the notification for a lifecycle transition emitted at `emit_ns`.
    pub fn from_transition(rule: &RuleInfo, t: Transition, emit_ns: u64) -> Self {
        let (status, escalated_from) = match t.change {
            Change::Fired => (WarningStatus::Firing, None),
            Change::Escalated { from } => (WarningStatus::Firing, Some(from)),
            Change::Resolved => (WarningStatus::Resolved, None),
        };
        Warning {
            alert_id: t.alert_id,
            rule: rule.rule.clone(),
            status,
            level: t.level,
            table: rule.table.clone(),
            key: t.key.fields.into_iter().collect(),
            values: t.values,
            window_start: t.window.map(|(s, _)| format_ms(s)),
            window_end: t.window.map(|(_, e)| format_ms(e)),
            first_breach: format_ms(t.first_breach_ms),
            detected_at: format_ms(t.detected_ms),
            latency_ms: emit_ns.saturating_sub(t.arrived_ns) as f64 / 1e6,
            description: rule.description.clone(),
            transition: t.number,
            escalated_from,
            marks: Marks::default(),
        }
    }

    /// The latest notification of an alert a checkpoint holds as firing, rebuilt from the
    /// checkpoint (its window and detection time are not kept: the alert's first breach
    /// stands in for both).
    pub(crate) fn still_firing(rule: &RuleSnapshot, alert: &AlertSnapshot) -> Self {
        Warning {
            alert_id: alert.alert_id.clone(),
            rule: rule.rule.clone(),
            status: WarningStatus::Firing,
            level: alert.level,
            table: rule.table.clone(),
            key: alert.key.iter().cloned().collect(),
            values: alert.values.clone(),
            window_start: None,
            window_end: None,
            first_breach: format_ms(alert.first_breach_ms),
            detected_at: format_ms(alert.first_breach_ms),
            latency_ms: 0.0,
            description: rule.description.clone(),
            transition: alert.notified,
            escalated_from: None,
            marks: Marks::default(),
        }
    }

    /// One readable line, e.g.
    /// `2026-01-14T18:41:02.000Z  FIRING   red    water/pressure_low  district=chaoyang …`.
    pub fn human_line(&self) -> String {
        let status = match (self.status, self.escalated_from) {
            (WarningStatus::Resolved, _) => "RESOLVED".to_string(),
            (WarningStatus::Escalated, _) => "ESCALATED".to_string(),
            (WarningStatus::Firing, None) => "FIRING".to_string(),
            (WarningStatus::Firing, Some(from)) if from < self.level => format!("UP({from})"),
            (WarningStatus::Firing, Some(from)) => format!("DOWN({from})"),
        };
        let fields = |m: &Map<String, Value>| {
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    Value::Number(n) => match n.as_f64() {
                        Some(f) if n.is_f64() => format!("{k}={}", trim_float(f)),
                        _ => format!("{k}={n}"),
                    },
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let window = match (&self.window_start, &self.window_end) {
            (Some(s), Some(e)) => format!("  [{} – {}]", short_time(s), short_time(e)),
            _ => String::new(),
        };
        format!(
            "{}  {:<10} {:<6} {:<3} {}/{}  {}  {}{}",
            self.detected_at,
            status,
            self.level.as_str(),
            self.level.grade(),
            self.table,
            self.rule,
            fields(&self.key),
            fields(&self.values),
            window
        )
    }
}

fn trim_float(f: f64) -> String {
    let text = format!("{f:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `2026-01-14T18:40:00.000Z` → `18:40:00`.
fn short_time(rfc3339: &str) -> &str {
    rfc3339.get(11..19).unwrap_or(rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::lifecycle::AlertKey;

    #[test]
    fn warning_json_has_exactly_the_design_fields() {
        let rule = RuleInfo {
            rule: "pressure_low".into(),
            table: "water".into(),
            description: "d".into(),
        };
        let t = Transition {
            change: Change::Fired,
            alert_id: "00ff".into(),
            key: AlertKey::new(vec![("device_id".into(), Value::from("wp-03"))]),
            level: Level::Red,
            values: Map::from_iter([("avg_pressure_mpa".to_string(), Value::from(0.031))]),
            window: Some((1_768_416_000_000, 1_768_416_060_000)),
            first_breach_ms: 1_768_416_000_000,
            detected_ms: 1_768_416_062_000,
            arrived_ns: 1_000_000,
            number: 1,
        };
        let w = Warning::from_transition(&rule, t, 3_500_000);
        let json = serde_json::to_value(&w).expect("serializes");
        let mut keys: Vec<_> = json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        assert_eq!(
            keys,
            [
                "alert_id",
                "description",
                "detected_at",
                "first_breach",
                "key",
                "latency_ms",
                "level",
                "rule",
                "status",
                "table",
                "transition",
                "values",
                "window_end",
                "window_start"
            ]
        );
        assert_eq!(json["status"], "firing");
        assert_eq!(json["transition"], 1);
        assert_eq!(json["level"], "red");
        assert_eq!(json["window_start"], "2026-01-14T18:40:00.000Z");
        assert_eq!(json["latency_ms"], 2.5);
        assert!(
            w.human_line()
                .contains("FIRING     red    I   water/pressure_low  device_id=wp-03  avg_pressure_mpa=0.031")
        );
    }
}
