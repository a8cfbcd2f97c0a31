//! Event time and window geometry, free of SQL and of Arrow plans: `spec` says which
//! windows hold a row, `clock` keeps one window rule's watermark, open windows and late
//! rows, and `session` keeps per-key session windows. The rule worker drives them; the SQL
//! that names a window (`tumble(ts, …)`) is parsed in `rules`.

mod clock;
mod session;
mod spec;

pub use clock::WindowClock;
pub(crate) use clock::idle_event_ms;
pub(crate) use session::{ClosedSession, RowKey, Sessions};
pub use spec::WindowSpec;
pub(crate) use spec::Windowing;
