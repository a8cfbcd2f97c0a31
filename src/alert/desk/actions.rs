//! What an operator can do, as one typed value each: acknowledge, assign, comment on or
//! close an alert, and add or expire a silence. An [`Operation`] is an action with its
//! operator and time; the desk applies it, the journal keeps it, a rule test scripts it.

use serde::{Deserialize, Serialize};

use super::silence::Silence;
use crate::time::EpochMs;

/// The longest comment, feedback or assignee an action may carry, in bytes.
pub(crate) const MAX_TEXT: usize = 2000;

/// One operator action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum Action {
    Ack {
        alert_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    Assign {
        alert_id: String,
        to: String,
    },
    Comment {
        alert_id: String,
        text: String,
    },
    /// Closes a resolved alert, with the handler's feedback.
    Close {
        alert_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        feedback: Option<String>,
    },
    /// Adds a silence, or replaces the one with the same id.
    Silence {
        silence: Silence,
    },
    ExpireSilence {
        silence_id: String,
    },
}

/// An action by an operator at a time on the desk's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Operation {
    pub(crate) at_ms: EpochMs,
    pub(crate) by: String,
    #[serde(flatten)]
    pub(crate) action: Action,
}

/// Why an action was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ActionError {
    #[error("no alert {0}")]
    UnknownAlert(String),
    #[error("no silence {0}")]
    UnknownSilence(String),
    /// The action does not fit the alert's state (closing one that still fires).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("text too long: at most {MAX_TEXT} bytes")]
    TooLong,
    /// Applied, but the journal could not be synced: it holds until a restart.
    #[error("the action could not be written to the state directory: {0}")]
    NotDurable(String),
    /// The desk is not running (the pipeline is stopping).
    #[error("the operations desk is not running")]
    Unavailable,
}

impl Action {
    /// Checks what can be checked without the desk: text sizes and empty fields.
    pub(crate) fn validate(&self) -> Result<(), ActionError> {
        let texts: Vec<&str> = match self {
            Action::Ack { comment, .. } => comment.iter().map(String::as_str).collect(),
            Action::Assign { to, .. } => vec![to],
            Action::Comment { text, .. } => vec![text],
            Action::Close { feedback, .. } => feedback.iter().map(String::as_str).collect(),
            Action::Silence { silence } => vec![&silence.comment],
            Action::ExpireSilence { .. } => Vec::new(),
        };
        if texts.iter().any(|t| t.len() > MAX_TEXT) {
            return Err(ActionError::TooLong);
        }
        match self {
            Action::Assign { to, .. } if to.trim().is_empty() => Err(ActionError::Invalid(
                "`to` names the unit the alert goes to; it is empty".into(),
            )),
            Action::Comment { text, .. } if text.trim().is_empty() => {
                Err(ActionError::Invalid("`text` is empty".into()))
            }
            _ => Ok(()),
        }
    }

    /// The alert the action is about, if any.
    pub(crate) fn alert_id(&self) -> Option<&str> {
        match self {
            Action::Ack { alert_id, .. }
            | Action::Assign { alert_id, .. }
            | Action::Comment { alert_id, .. }
            | Action::Close { alert_id, .. } => Some(alert_id),
            Action::Silence { .. } | Action::ExpireSilence { .. } => None,
        }
    }
}
