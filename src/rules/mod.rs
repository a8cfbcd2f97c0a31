//! Rules: one SQL file each under `queries/`, with a `-- key: value` header. `loader` reads
//! files and headers; `sql` enforces the read-only sandbox on the SQL text and
//! `window_calls` recognises its window functions; `compile` plans each rule once with
//! DataFusion (`feed` is the channel-fed leaf that lets one plan run once per open window,
//! `leaf` reshapes it, `watched` narrows a `devices` rule to the tables its WHERE can pass)
//! and splits a window rule's plan at its aggregation, so that rules computing the same
//! aggregation form a family sharing it; `worker` evaluates one rule, or one family, over
//! its table's events and drives each rule's alert lifecycle, with one state per rule kind;
//! `output` turns result rows into alert keys, levels and values. `devices` keeps the
//! `devices` table a silence rule queries; `problem` is the `path:line:col` diagnostic every
//! step reports. `running` keeps one task per rule or family and builds the fan-out from
//! tables to their queues; `reload` watches the rule files and swaps changed rules in while
//! the pipeline runs. `bundled` holds the shipped rules, built in
//! for the demo.

pub(crate) mod bundled;
pub(crate) mod compile;
pub(crate) mod devices;
pub(crate) mod feed;
mod leaf;
pub(crate) mod loader;
pub(crate) mod output;
pub(crate) mod problem;
pub(crate) mod reload;
pub(crate) mod running;
pub(crate) mod sql;
mod watched;
pub(crate) mod window_calls;
pub(crate) mod worker;
