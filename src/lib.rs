//! cityops: a stream processor for city operations centres. Telemetry comes in over MQTT
//! or from recorded fixtures, is decoded into Arrow batches behind lock-free queues, runs
//! through engineers' windowed SQL rules (DataFusion), and leaves as graded warnings with a
//! lifecycle (pending, firing, resolved). Latency is recorded at every stage.
//!
//! Layout, in pipeline order:
//! - [`config`], [`schema`], [`time`]: settings, the tables rules query, time values.
//! - [`ingest`]: messages, topics, fixtures (replay), decoding and the decode workers.
//! - [`queue`]: the crossbeam handoff and its overflow policy.
//! - [`batch`]: rows → Arrow record batches, flushed on size or linger.
//! - [`window`]: event time, watermarks, window assignment, late rows.
//! - [`rules`]: rule files, the SQL sandbox, planning, and per-rule evaluation.
//! - [`alert`]: levels, the alert lifecycle, the warning JSON, sinks.
//! - [`deadletter`], [`metrics`], [`summary`]: what was rejected, counted and timed.
//! - [`pipeline`]: the one place that wires the stages together.
//! - [`mqtt`]: broker URLs and connection options; [`record`] and [`publish`]: capturing live
//!   traffic into a fixture and publishing a fixture to a broker (load generation).
//! - [`http`], [`live`], [`prometheus`]: the dashboard, its API and `/metrics`.
//! - [`generator`]: `cityops gen`, seeded synthetic city fixtures with labelled incidents.
//! - [`bench`]: peak memory and `.hgrm` files for `cityops bench`.
//! - [`check`]: `cityops check`, every rule problem at once.
//! - [`ruletest`]: `cityops test`, declarative rule tests on the virtual clock.

pub mod alert;
pub mod batch;
pub mod bench;
pub mod check;
pub mod config;
pub mod deadletter;
pub mod generator;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod prometheus;
pub mod publish;
pub mod queue;
pub mod record;
pub mod rules;
pub mod ruletest;
pub mod schema;
pub mod summary;
pub mod time;
pub mod window;
