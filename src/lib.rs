//! cityops: a stream processor for city operations centres. Telemetry comes in over MQTT
//! or from recorded fixtures, is decoded into Arrow batches behind lock-free queues, runs
//! through engineers' windowed SQL rules (DataFusion), and leaves as graded warnings with a
//! lifecycle (pending, firing, resolved). Latency is recorded at every stage.
//!
//! Layout, in pipeline order. Every arrow between stages is a typed message of `flow`;
//! only [`pipeline`] knows the graph, and the top-level modules import each other without
//! a cycle (`.ci/module-cycles` checks it).
//! - `flow`: the messages stages exchange (`Message`, `Ingest`, `TableBatch`,
//!   `TableEvent`, `RuleFanout`, `DeadLetter`). Imports only `time`.
//! - `config`, `schema`, [`time`], `level`, `topic`: settings, the tables rules
//!   query, time values, the four colours, the topic convention.
//! - `ingest`: the sources (live MQTT, fixture replay) and the decode stage.
//! - `queue`: the crossbeam handoff from a source to the decode workers, and its overflow
//!   policy.
//! - `batch`: rows → Arrow record batches, flushed on size or linger.
//! - `window`: event time, watermarks, window geometry, sessions, late rows.
//! - `rules`: rule files, the SQL sandbox, planning, and one worker per rule.
//! - `alert`: the alert lifecycle, the warning JSON, the sinks, and the operations desk
//!   (acknowledgements, assignments, silences, response deadlines and statistics).
//! - `metrics`, `deadletter`, `summary`: what was counted, rejected and timed.
//! - `broker`: MQTT broker URLs and connection options, for sources, sinks and tools.
//! - `http`: the dashboard, its API, its live view and `/metrics`.
//! - `shutdown`: the stop handle of a run.
//! - [`pipeline`]: the one place that wires the stages together.
//! - [`tools`]: `check`, `test`, `bench`, `gen`, `record`, `replay`.

#![warn(unreachable_pub)]

mod alert;
mod batch;
mod broker;
mod cluster;
mod config;
mod deadletter;
mod flow;
mod http;
mod ingest;
mod level;
mod metrics;
pub mod pipeline;
mod queue;
mod rules;
mod schema;
mod shutdown;
mod state;
mod summary;
pub mod time;
pub mod tools;
mod topic;
mod window;

// What the command line, the tests and the benches use, by stage.
pub use alert::alertmanager::alertmanager_body;
pub use alert::sink::{SinkConfig, SinkError};
pub use alert::warning::{Acknowledgement, Marks, Warning, WarningStatus};
pub use batch::{Batchers, TableBatcher};
pub use broker::{BrokerUrl, qos as mqtt_qos};
pub use cluster::{
    ClusterSource, Published as NatsPublished, publish as publish_to_nats, server_mapping as nats_server_mapping,
    stream_subject as nats_stream_subject,
};
pub use config::cluster::ClusterConfig;
pub use config::operations::{LevelDeadlines, OperationsConfig};
pub use config::operators::token_hash;
pub use config::{Config, DurationMs, EngineConfig, LogFormat, MqttConfig, StateConfig};
pub use flow::{DeadLetter, Message, Reason};
pub use http::live::LiveState;
pub use http::{AppState, DeskAccess, router};
pub use ingest::decode::Decoder;
pub use ingest::fixture::FixtureReader;
pub use ingest::mqtt::MqttSource;
pub use ingest::replay::Speed;
pub use level::Level;
pub use metrics::{ClusterMetrics, Metrics, RuleHealthView};
pub use rules::bundled::{SHIPPED_RULES, ShippedRulesDir, shipped_rules_dir};
pub use rules::compile::{EngineColumns, RuleKind, compile};
pub use rules::loader::parse_rule;
pub use rules::problem::{Problem, Severity};
pub use rules::reload::{ReloadReport, Swap};
pub use rules::worker::DetectionClock;
pub use schema::Catalog;
pub use shutdown::Shutdown;
pub use state::StateError;
pub use summary::Summary;
pub use topic::TopicPattern;
pub use window::{WindowClock, WindowSpec};
