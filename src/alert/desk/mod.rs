//! The operations desk: what operators do with warnings, and how fast the city responds.
//! Operators acknowledge, assign, comment on and close alerts, and silence them
//! (Alertmanager-compatible silences); every alert has a history; response deadlines per
//! level escalate an alert once each when they pass; response statistics per level,
//! district and table. `book` is the desk itself, pure and deterministic; `keeper` runs it in
//! the sink thread and `journal` makes it durable; the HTTP side lives in `http::desk`;
//! its counters are `metrics::DeskCounters`.

pub(crate) mod actions;
pub(crate) mod book;
pub(crate) mod journal;
pub(crate) mod keeper;
pub(crate) mod record;
pub(crate) mod silence;
pub(crate) mod stats;
