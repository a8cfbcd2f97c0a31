//! The operations desk: what operators do with warnings, and how fast the city responds.
//! Operators acknowledge, assign, comment on and close alerts, and silence them
//! (Alertmanager-compatible silences); every alert has a history; response deadlines per
//! level escalate an alert once each when they pass; response statistics per level,
//! district and table. `book` is the desk itself, pure and deterministic; `keeper` runs it in
//! the sink thread and `journal` makes it durable; the HTTP side lives in `http::desk`.

use std::sync::atomic::AtomicU64;

pub(crate) mod actions;
pub(crate) mod book;
pub(crate) mod journal;
pub(crate) mod keeper;
pub(crate) mod record;
pub(crate) mod silence;
pub(crate) mod stats;

/// The desk's counters, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct DeskCounters {
    /// Operator actions accepted.
    pub(crate) actions: AtomicU64,
    /// Escalation notifications sent (deadlines passed).
    pub(crate) escalations: AtomicU64,
    /// Notifications a silence held back from the paging sinks.
    pub(crate) withheld: AtomicU64,
    /// Journal writes or syncs that failed.
    pub(crate) journal_errors: AtomicU64,
}
