//! Rules: one SQL file each under `queries/`, with a `-- key: value` header. `loader` reads
//! files and headers, `sql` recognises window functions and enforces the read-only sandbox
//! on the SQL text, `compile` plans each rule once with DataFusion, `feed` is the
//! channel-fed leaf that lets one plan run once per open window, and `worker` evaluates a
//! rule over its table's batches and drives its alert lifecycle. `running` keeps one task
//! per rule and the `routes` from tables to rule queues; `reload` watches the rule files
//! and swaps changed rules in while the pipeline runs; `health` keeps each rule's live
//! counters for the operations centre; `watched` narrows a `devices` rule to the tables
//! its WHERE clause can pass.

pub mod compile;
pub mod devices;
pub mod feed;
pub mod health;
mod leaf;
pub mod loader;
pub mod output;
pub mod problem;
pub mod reload;
pub mod routes;
pub mod running;
pub mod session;
pub mod sql;
mod watched;
pub mod windowing;
pub mod worker;
