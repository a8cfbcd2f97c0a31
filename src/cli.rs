//! The command-line arguments of `cityops` (clap): one struct per subcommand, with the
//! help text users see. Only `main.rs` reads them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use cityops::{LogFormat, Speed};

#[derive(Parser)]
#[command(
    name = "cityops",
    version,
    about = "City telemetry in, windowed SQL rules, graded warnings out"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log lines on stderr as readable text or one JSON object per line (for log shippers;
    /// overrides `[log] format` of the config).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the pipeline: with no source, replay the bundled demo city as fast as possible.
    Run(RunArgs),
    /// Plan every rule against the table schemas and report every problem.
    Check(CheckArgs),
    /// Run the declarative rule tests (one TOML file per case) on the virtual clock.
    Test(TestArgs),
    /// Capture live MQTT traffic into a fixture (and report the rate received).
    Record(RecordArgs),
    /// Publish a fixture to an MQTT broker: a load generator.
    Replay(ReplayArgs),
    /// Write a seeded synthetic city fixture with labelled incidents.
    Gen(GenArgs),
    /// Measure a replay through the full pipeline: throughput (`--speed max`) or latency at
    /// a fixed rate (`--speed 20000/s`); writes summary.json and .hgrm files.
    Bench(BenchArgs),
    /// Print the `[http.operators]` entry for an operator's token (its SHA-256): the config
    /// keeps the hash, never the token.
    TokenHash(TokenHashArgs),
}

#[derive(Args)]
pub(crate) struct TokenHashArgs {
    /// The token (read from stdin when left out, so it stays out of the shell history).
    pub(crate) token: Option<String>,
}

#[derive(Args)]
pub(crate) struct GenArgs {
    /// Devices of each kind (heat exchange stations, pressure meters, gas detectors).
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: usize,
    /// Reporting interval of every device.
    #[arg(long, default_value = "60s")]
    pub(crate) interval: String,
    /// Length of the recording.
    #[arg(long, default_value = "1d")]
    pub(crate) duration: String,
    /// Start of the recording (UTC).
    #[arg(long, default_value = "2026-01-15T00:00:00Z")]
    pub(crate) start: String,
    /// Incidents to inject (one per chosen device).
    #[arg(long, default_value_t = 10)]
    pub(crate) incidents: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Readings per message (gateway payloads); 1 = one reading per message.
    #[arg(long, default_value_t = 1)]
    pub(crate) gateway: usize,
    /// Fixture to write (zstd when it ends in .zst).
    #[arg(long, value_name = "FILE", default_value = "city.jsonl.zst")]
    pub(crate) out: PathBuf,
    /// Where the incident labels go (JSON Lines: rule, key, from, to).
    #[arg(long, value_name = "FILE", default_value = "city-labels.jsonl")]
    pub(crate) labels: PathBuf,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Fixture to replay; default: the embedded demo city.
    pub(crate) file: Option<PathBuf>,
    /// `max` (throughput), a factor of recorded speed, or a fixed rate such as `20000/s`.
    #[arg(long, default_value = "max")]
    pub(crate) speed: Speed,
    /// Rules directory (default: rules.dir of the config, `queries`).
    #[arg(long, value_name = "DIR")]
    pub(crate) queries: Option<PathBuf>,
    /// Config file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Where summary.json and the .hgrm files go.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    pub(crate) out: PathBuf,
    /// Incident labels from `cityops gen`: report incidents caught and missed, and warnings
    /// outside every label.
    #[arg(long, value_name = "FILE")]
    pub(crate) labels: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct RecordArgs {
    /// Broker to subscribe to (mqtt://host:1883, mqtts://host:8883).
    #[arg(long, value_name = "URL")]
    pub(crate) mqtt: String,
    /// Fixture to write (JSON Lines; zstd when it ends in .zst).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Subscription QoS (default: [mqtt] qos of the config).
    #[arg(long)]
    pub(crate) qos: Option<u8>,
    /// End after this many messages.
    #[arg(long, value_name = "N")]
    pub(crate) max_messages: Option<u64>,
    /// End once no message has come for this long (e.g. `5s`), after the first one.
    #[arg(long, value_name = "DURATION")]
    pub(crate) idle_exit: Option<String>,
    /// Config file (topics, [mqtt]).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// Fixture to publish; default: the embedded demo city.
    pub(crate) file: Option<PathBuf>,
    /// Broker to publish to.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "to_nats",
        conflicts_with = "to_nats"
    )]
    pub(crate) to_mqtt: Option<String>,
    /// Publish into the NATS JetStream stream of [cluster] instead (nats://host:4222),
    /// each reading on its partition's subject; the stream is created when missing.
    #[arg(long, value_name = "URL")]
    pub(crate) to_nats: Option<String>,
    /// A factor of recorded speed (1, 60, …) or `max`.
    #[arg(long, default_value = "max")]
    pub(crate) speed: Speed,
    /// Publish QoS.
    #[arg(long, default_value_t = 1)]
    pub(crate) qos: u8,
    /// QoS 1 messages sent ahead of the broker's acks (replaces [mqtt] inflight here). A
    /// deep window keeps the broker fed while the publisher waits for a core.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) inflight: u16,
    /// Config file ([mqtt] credentials, TLS).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Directory of test cases (default: `tests` under the rules directory).
    pub(crate) dir: Option<PathBuf>,
    /// Rules directory (default: rules.dir of the config, `queries`).
    #[arg(long, value_name = "DIR")]
    pub(crate) queries: Option<PathBuf>,
    /// Config file (default: the embedded defaults).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("live").args(["mqtt", "nats"])))]
pub(crate) struct RunArgs {
    /// Fixture to replay (JSON Lines, optionally .zst); default: the embedded demo city.
    #[arg(long, value_name = "FILE")]
    pub(crate) replay: Option<PathBuf>,
    /// Rules directory (default: rules.dir of the config, `queries`).
    #[arg(long, value_name = "DIR")]
    pub(crate) queries: Option<PathBuf>,
    /// Config file (default: the embedded defaults).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Replay speed: a factor of recorded speed (1, 60, …) or `max`.
    #[arg(long, default_value = "max")]
    pub(crate) speed: Speed,
    /// Also write each warning as a JSON object per line to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) jsonl: Option<PathBuf>,
    /// Where rejected and late rows go, with their reasons.
    #[arg(long, value_name = "FILE", default_value = "cityops-dead-letters.jsonl")]
    pub(crate) dead_letter: PathBuf,
    /// Do not print a line per warning (the summary is still printed).
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) summary_json: Option<PathBuf>,
    /// Read live from this broker (mqtt://host:1883, mqtts://host:8883) instead of a fixture;
    /// ends on Ctrl-C or SIGTERM (cleanly: queued work finished, sinks flushed, summary printed). Credentials: [mqtt] in the config or CITYOPS_MQTT_USERNAME/PASSWORD.
    #[arg(long, value_name = "URL", conflicts_with = "replay")]
    pub(crate) mqtt: Option<String>,
    /// Run as a cluster instance on this NATS JetStream server (nats://host:4222, several
    /// comma-separated): the partitions this instance holds a lease on, from the stream
    /// of [cluster]. Ends on Ctrl-C or SIGTERM by handing its partitions over.
    #[arg(long, value_name = "URL", conflicts_with_all = ["replay", "mqtt"])]
    pub(crate) nats: Option<String>,
    /// Cluster: this instance's name in the leases (default: [cluster] instance, else <host>-<pid>).
    #[arg(long, value_name = "NAME", requires = "nats")]
    pub(crate) instance: Option<String>,
    /// Live: subscription QoS (default: [mqtt] qos of the config, 1).
    #[arg(long, requires = "mqtt")]
    pub(crate) qos: Option<u8>,
    /// Live: end after this many messages.
    #[arg(long, value_name = "N", requires = "live")]
    pub(crate) max_messages: Option<u64>,
    /// Live: end once no message has come for this long (e.g. `10s`), after the first one.
    #[arg(long, value_name = "DURATION", requires = "live")]
    pub(crate) idle_exit: Option<String>,
    /// Publish warnings to this broker: `warnings/<level>/<rule>` (QoS 1) and retained
    /// state on `warnings/state/<rule>/<key>`.
    #[arg(long, value_name = "URL")]
    pub(crate) warnings_mqtt: Option<String>,
    /// Serve the dashboard, its API and /metrics on this address while running, e.g.
    /// 127.0.0.1:8080. The demo run serves on 127.0.0.1:8080 (or a free port) by default.
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: Option<String>,
    /// Serve no HTTP, not even the demo run's default dashboard.
    #[arg(long, conflicts_with = "http")]
    pub(crate) no_http: bool,
    /// POST each warning to this URL (retried; spooled on disk in [webhook] spool_dir while
    /// the receiver is down).
    #[arg(long, value_name = "URL")]
    pub(crate) webhook: Option<String>,
    /// Keep durable state in DIR (write-ahead log before each ack, checkpoints every
    /// [state] checkpoint_interval): a run killed at any point starts again where it was,
    /// with nothing lost and nothing sent twice under a new identity. Default: [state] dir.
    #[arg(long, value_name = "DIR")]
    pub(crate) state: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// Rules directory (default: rules.dir of the config, `queries`).
    pub(crate) dir: Option<PathBuf>,
    /// Config file (default: the embedded defaults).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}
