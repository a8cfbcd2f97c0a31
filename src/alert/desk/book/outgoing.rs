//! What the desk sends: a notification, whether the paging sinks get it, and whether the
//! desk made it itself (a release or an escalation), with its identity in the delivery record.

use crate::alert::warning::Warning;

/// A notification from the desk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub(crate) warning: Warning,
    /// Whether the paging sinks (MQTT, webhook) get it; the records (stdout, file) and the
    /// dashboard always do.
    pub(crate) page: bool,
    /// What the desk made of it: `None` for a rule's own notification.
    pub(crate) made: Option<Made>,
}

/// A notification the desk makes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    /// A silence ended while the alert fires: its latest notification (and escalations the
    /// silence held back), to the paging sinks.
    Release,
    /// A deadline passed (the warning says which).
    Escalation,
}

impl Outgoing {
    /// A rule's notification, passed on.
    pub(crate) fn lifecycle(warning: Warning, page: bool) -> Self {
        Outgoing {
            warning,
            page,
            made: None,
        }
    }

    /// The notification's identity in the delivery record: the alert and its notification
    /// number, plus, for what the desk made, what it was (an escalation of a notification
    /// is a different notification).
    pub(crate) fn identity(&self) -> (String, u32) {
        let w = &self.warning;
        let id = match (self.made, &w.marks.escalation) {
            (None, _) => w.alert_id.clone(),
            (Some(Made::Release), None) => format!("{}/released", w.alert_id),
            (Some(Made::Release), Some(deadline)) => format!("{}/released-escalated-{deadline}", w.alert_id),
            (Some(Made::Escalation), deadline) => {
                format!("{}/escalated-{}", w.alert_id, deadline.as_deref().unwrap_or("deadline"))
            }
        };
        (id, w.transition)
    }
}
