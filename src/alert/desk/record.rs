//! What the desk knows about one alert: its latest notification, who acknowledged it and
//! who handles it, whether a silence holds its notifications back, its deadlines' verdicts,
//! and its history, every event in order with time and operator.

use serde::{Deserialize, Serialize};

use crate::alert::warning::Warning;
use crate::level::Level;
use crate::time::{EpochMs, format_ms};

/// Kinds of history events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    Fired,
    LevelChanged,
    /// A deadline passed (`detail` says which).
    Escalated,
    Acknowledged,
    /// A rise in level took the acknowledgement back.
    Unacknowledged,
    Assigned,
    Commented,
    Silenced,
    Unsilenced,
    Resolved,
    Closed,
}

/// One line of an alert's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HistoryEvent {
    pub(crate) at: String,
    pub(crate) event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) level: Option<Level>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

impl HistoryEvent {
    pub(crate) fn new(at_ms: EpochMs, event: EventKind) -> Self {
        HistoryEvent {
            at: format_ms(at_ms),
            event,
            by: None,
            level: None,
            detail: None,
        }
    }

    pub(crate) fn by(mut self, operator: &str) -> Self {
        self.by = Some(operator.to_string());
        self
    }

    pub(crate) fn level(mut self, level: Level) -> Self {
        self.level = Some(level);
        self
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// One alert on the desk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AlertRecord {
    /// The latest lifecycle notification (firing or resolved), with the desk's marks.
    pub(crate) warning: Warning,
    /// The notifications seen so far (a recovery computes some again: they are not new).
    pub(crate) seen_transition: u32,
    pub(crate) fired_ms: EpochMs,
    /// When the acknowledge deadline started: firing, or the last rise in level.
    pub(crate) ack_due_from_ms: EpochMs,
    pub(crate) first_ack_ms: Option<EpochMs>,
    pub(crate) resolved_ms: Option<EpochMs>,
    pub(crate) closed: bool,
    /// The deadline of each kind passed and was escalated (once each).
    pub(crate) ack_escalated: bool,
    pub(crate) resolve_escalated: bool,
    /// Acknowledged (first) before its acknowledge deadline passed; None: not yet decided.
    pub(crate) ack_in_time: Option<bool>,
    pub(crate) resolved_in_time: Option<bool>,
    /// The paging sinks (MQTT, webhook) hold this alert as firing.
    pub(crate) told: bool,
    /// Its resolve went to the paging sinks (a recovery sending it again decides the same).
    pub(crate) resolve_paged: bool,
    /// Escalations (deadline, when it passed) a silence held back from them.
    #[serde(default)]
    pub(crate) held_escalations: Vec<(String, EpochMs)>,
    /// A firing notification was held back by a silence and not yet sent to them.
    pub(crate) withheld: bool,
    pub(crate) history: Vec<HistoryEvent>,
}

impl AlertRecord {
    pub(crate) fn firing(&self) -> bool {
        self.resolved_ms.is_none()
    }

    pub(crate) fn level(&self) -> Level {
        self.warning.level
    }

    /// The key's `district`, or `-` when the rule's key has none.
    pub(crate) fn district(&self) -> String {
        match self.warning.key.get("district") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "-".to_string(),
        }
    }
}
