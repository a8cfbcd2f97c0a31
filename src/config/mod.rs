//! `cityops.toml`: the root configuration composed of each stage's section. Defaults are
//! embedded (see `DEFAULT_TOML` and the README); unknown keys are errors; problems are
//! reported all at once. Command-line flags override the file in `main.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::schema::{Catalog, ColumnType};

pub(crate) mod cluster;
pub(crate) mod operations;
pub(crate) mod operators;
use crate::time::parse_duration_ms;

/// The defaults, written out as a config file would be; the README shows the same text.
pub(crate) const DEFAULT_TOML: &str = r#"
[engine]
batch_rows = 4096          # flush a table's batch at this many rows...
linger = "20ms"            # ...or when the decode queue runs dry, or at the latest after this long
dry_linger = "2ms"         # with the queue dry, a batch still waits this long for more rows (longer: larger batches, less rule CPU, later warnings)
lateness = "2s"            # watermark = max ts seen - lateness (rules may override)
idle_timeout = "60s"       # a table silent this long advances its watermark by the clock
queue_capacity = 1024      # slots per decode queue (a message, or up to 64 of one MQTT read); when full, the source waits
decode_threads = 0         # 0 = one per core, at most one per table
max_payload_bytes = 65536  # larger payloads are dead-lettered as `oversized`
max_future = "1d"          # ts further ahead of the wall clock are `ts_out_of_range`
rule_memory_limit_mb = 256 # memory one rule's evaluations may hold
rule_families = true       # rules that can share run as one family: window rules with the same table, window, WHERE and aggregation share it; devices rules watching the same tables share the watch; a table's row rules share one task. false: each rule runs alone

[topics]
pattern = "city/{district}/{table}/{device_id}"

[mqtt]
client_id = ""             # the live source's id (the sink adds "-warnings"); "" = cityops-<12 hex> per instance, kept in the state dir
qos = 1                    # subscription QoS: 1 = at least once, acked once in the pipeline
clean_session = false      # keep the session (and queued QoS 1 messages) across reconnects
keep_alive = "30s"
inflight = 100             # QoS 1 messages in flight per connection
ack_batch = 8              # QoS 1 acks of the source go out together once this many wait...
ack_delay = "1ms"          # ...or once the oldest has waited this long (keep ack_batch below the broker's window)
filters = []               # empty = one per table from topics.pattern: city/+/<table>/+
warnings_prefix = "warnings" # the sink publishes <prefix>/<level>/<rule> and <prefix>/state/<rule>/<key>
# username, password: here or in CITYOPS_MQTT_USERNAME / CITYOPS_MQTT_PASSWORD
# ca_file = "ca.pem"       # the broker's CA, for mqtts://

[webhook]
# url = "http://127.0.0.1:9093/api/v2/alerts"   # POST each warning here (unset = off)
format = "cityops"         # the warning JSON, or "alertmanager" (a POST /api/v2/alerts body)
spool_dir = "cityops-spool" # warnings wait here until delivered (survives restarts)
spool_max_mb = 64          # a full spool is counted and logged
timeout = "5s"             # per request
max_backoff = "30s"        # retries back off exponentially up to this
drain_on_exit = "5s"       # at the end of a run, keep trying this long; the rest stays spooled
resend_interval = "1m"     # alertmanager format: firing alerts are sent again this often, with endsAt 4 intervals ahead

[dead_letters]
max_file_mb = 64           # the dead-letter file is rotated at this size (FILE -> FILE.1 -> FILE.2 ...)
max_files = 5              # rotated files kept beside the live one; older ones are deleted (counters stay exact)

[http]
bind = ""                  # e.g. "127.0.0.1:9900": serve /metrics while running ("" = off)
# token = "…"              # required when bind is not loopback (or CITYOPS_HTTP_TOKEN)

[http.operators]           # who may act on warnings: name = SHA-256 of the token (`cityops token-hash TOKEN`), or CITYOPS_OPERATOR=name:token
# li = "sha256:…"

[operations]               # response deadlines per level: acknowledge within, resolve within (escalated once each when passed)
red = { acknowledge = "5m", resolve = "2h" }
orange = { acknowledge = "15m", resolve = "24h" }
yellow = { acknowledge = "1h", resolve = "7d" }
blue = { acknowledge = "4h", resolve = "15d" }
keep_resolved = "7d"       # resolved alerts and their history stay on the desk this long
utc_offset = "+08:00"      # local time of the maintenance windows
# [[operations.maintenance]] # a daily window whose matching warnings are silenced
# name = "haidian mains"
# matchers = ['district="haidian"', 'alertname=~"pressure_.*"']
# from = "02:00"
# to = "04:00"

[rules]
dir = "queries"
reload_interval = "1s"     # how often `run` checks the rules for changes ("0s" = never)

[log]
format = "text"            # or "json": one object per line (or --log-format json)

[state]
# dir = "cityops-state"    # keep durable state here (or --state DIR): nothing is lost across a crash
checkpoint_interval = "10s" # how often the whole state is written (recovery replays the log after it)
"#;

/// A duration written as text (`"250ms"`), held in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationMs(pub i64);

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration_ms(&text)
            .map(DurationMs)
            .map_err(serde::de::Error::custom)
    }
}

/// The root of `cityops.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub webhook: WebhookConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub dead_letters: DeadLettersConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Response deadlines and the desk's memory (`[operations]`).
    #[serde(default)]
    pub operations: operations::OperationsConfig,
    /// Scale-out over NATS JetStream (`[cluster]`, used by `run --nats`).
    #[serde(default)]
    pub cluster: cluster::ClusterConfig,
    /// Extra columns per table, or whole new tables: `[tables.water] nitrate_mg_l = "float"`.
    #[serde(default)]
    pub tables: BTreeMap<String, BTreeMap<String, ColumnType>>,
}

/// Batching, time and capacity settings of the pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub batch_rows: usize,
    pub linger: DurationMs,
    /// How long a batch waits for more rows once the decode queue runs dry (at most `linger`).
    pub dry_linger: DurationMs,
    pub lateness: DurationMs,
    pub idle_timeout: DurationMs,
    pub queue_capacity: usize,
    pub decode_threads: usize,
    pub max_payload_bytes: usize,
    pub max_future: DurationMs,
    pub rule_memory_limit_mb: usize,
    /// Rules that can share run as one family: window rules with the same table, window,
    /// lateness, WHERE and aggregation share their windows and aggregation
    /// (`rules::compile::family`); `devices` rules watching the same tables share the watch;
    /// the row rules of a table share one task.
    pub rule_families: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_rows: 4096,
            linger: DurationMs(20),
            dry_linger: DurationMs(2),
            lateness: DurationMs(2_000),
            idle_timeout: DurationMs(60_000),
            queue_capacity: 1024,
            decode_threads: 0,
            max_payload_bytes: 65_536,
            max_future: DurationMs(86_400_000),
            rule_memory_limit_mb: 256,
            rule_families: true,
        }
    }
}

/// How topics map to tables, districts and devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Segments `{district}`, `{table}`, `{device_id}`, `+` (any) and literals.
    pub pattern: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            pattern: "city/{district}/{table}/{device_id}".to_string(),
        }
    }
}

/// How cityops talks to an MQTT broker (live source and warning sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub client_id: String,
    pub qos: u8,
    pub clean_session: bool,
    pub keep_alive: DurationMs,
    pub inflight: u16,
    /// The source sends its QoS 1 acks once this many are waiting (1 = after every read)...
    pub ack_batch: usize,
    /// ...or once the oldest has waited this long.
    pub ack_delay: DurationMs,
    /// Subscriptions; empty means one per table derived from `topics.pattern`.
    pub filters: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Topic prefix of published warnings: `<prefix>/<level>/<rule>`, `<prefix>/state/…`.
    pub warnings_prefix: String,
}

impl MqttConfig {
    /// The id other connections derive theirs from (`<id>-warnings`, `<id>-replay`): the
    /// configured or settled id, else "cityops".
    pub fn base_client_id(&self) -> &str {
        match self.client_id.is_empty() {
            true => "cityops",
            false => &self.client_id,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            client_id: String::new(),
            qos: 1,
            clean_session: false,
            keep_alive: DurationMs(30_000),
            inflight: 100,
            ack_batch: 8,
            ack_delay: DurationMs(1),
            filters: Vec::new(),
            username: None,
            password: None,
            ca_file: None,
            warnings_prefix: "warnings".to_string(),
        }
    }
}

/// The HTTP endpoint (dashboard, API, `/metrics`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to serve on; empty = no server.
    pub bind: String,
    pub token: Option<String>,
    /// Operators who may act on warnings: name → `sha256:<hex>` of their token.
    pub operators: BTreeMap<String, String>,
    /// When `bind` is taken, serve on any free port of the same address instead of failing
    /// (the demo run's default dashboard; never set from a file).
    #[serde(skip)]
    pub any_port_if_taken: bool,
}

/// The webhook sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub url: Option<String>,
    pub format: WebhookFormat,
    pub spool_dir: PathBuf,
    pub spool_max_mb: u64,
    pub timeout: DurationMs,
    pub max_backoff: DurationMs,
    pub drain_on_exit: DurationMs,
    /// Alertmanager format: how often firing alerts are sent again (`endsAt` is four of
    /// these ahead, so Alertmanager keeps them active while they fire).
    pub resend_interval: DurationMs,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The warning JSON object.
    Cityops,
    /// An Alertmanager `POST /api/v2/alerts` body (a one-alert array).
    Alertmanager,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            format: WebhookFormat::Cityops,
            spool_dir: PathBuf::from("cityops-spool"),
            spool_max_mb: 64,
            timeout: DurationMs(5_000),
            max_backoff: DurationMs(30_000),
            drain_on_exit: DurationMs(5_000),
            resend_interval: DurationMs(60_000),
        }
    }
}

/// Durable state (write-ahead log and checkpoints).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The state directory; none = the run keeps no state.
    pub dir: Option<PathBuf>,
    pub checkpoint_interval: DurationMs,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: None,
            checkpoint_interval: DurationMs(10_000),
        }
    }
}

/// The dead-letter file's rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLettersConfig {
    pub max_file_mb: u64,
    pub max_files: usize,
}

impl Default for DeadLettersConfig {
    fn default() -> Self {
        DeadLettersConfig {
            max_file_mb: 64,
            max_files: 5,
        }
    }
}

/// How log lines are written (stderr).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// Readable text, or one JSON object per line for log shippers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the rules live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    pub dir: PathBuf,
    /// How often a running pipeline checks `dir` for changed rules (0 = never).
    pub reload_interval: DurationMs,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: PathBuf::from("queries"),
            reload_interval: DurationMs(1_000),
        }
    }
}

/// A config that could not be read or does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

impl Config {
    /// Reads a config file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (text, shown) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.to_path_buf(),
            ),
            None => (DEFAULT_TOML.to_string(), PathBuf::from("<defaults>")),
        };
        Self::parse(&text, &shown)
    }

    /// Parses config text; `shown` names it in errors.
    pub fn parse(text: &str, shown: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.to_path_buf(),
            message: e.to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: shown.to_path_buf(),
                problems,
            })
        }
    }

    /// Every inconsistency at once.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let e = &self.engine;
        if self.state.checkpoint_interval.0 <= 0 {
            problems.push("state.checkpoint_interval must be longer than 0".to_string());
        }
        if self.webhook.resend_interval.0 <= 0 {
            problems.push("webhook.resend_interval must be longer than 0".to_string());
        }
        if self.dead_letters.max_file_mb == 0 {
            problems.push("dead_letters.max_file_mb must be at least 1".to_string());
        }
        if e.batch_rows == 0 {
            problems.push("engine.batch_rows must be at least 1".to_string());
        }
        if e.queue_capacity == 0 {
            problems.push("engine.queue_capacity must be at least 1".to_string());
        }
        if e.max_payload_bytes == 0 {
            problems.push("engine.max_payload_bytes must be at least 1".to_string());
        }
        if e.idle_timeout.0 == 0 {
            problems.push("engine.idle_timeout must be longer than 0".to_string());
        }
        if let Err(message) = self.operations.check() {
            problems.push(message);
        }
        if let Err(message) = self.cluster.check() {
            problems.push(message);
        }
        if let Err(message) = crate::config::operators::Operators::new(&self.http.operators, None) {
            problems.push(message);
        }
        if let Err(message) = crate::topic::TopicPattern::parse(&self.topics.pattern) {
            problems.push(format!("topics.pattern: {message}"));
        }
        if let Err(table_problems) = Catalog::new(&self.tables) {
            problems.extend(table_problems.into_iter().map(|p| format!("tables: {p}")));
        }
        problems
    }

    /// Fills in `mqtt.client_id` when it is empty. With a state directory, the id it keeps
    /// (`client_id`, written at the first live start) comes back whatever the host is called
    /// now (a container's name changes on every start); a state directory from before that
    /// file keeps the old default, `cityops`. Otherwise `cityops-<12 hex>`, a hash of the host
    /// name and the state directory (or, without one, the working directory): two instances
    /// on one broker never share an id (the broker would keep throwing one off), and 20
    /// characters fit the 23 every MQTT 3.1.1 broker accepts.
    pub fn settle_client_id(&mut self) {
        if !self.mqtt.client_id.is_empty() {
            return;
        }
        let place = self
            .state
            .dir
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
        let place = std::fs::canonicalize(&place)
            .or_else(|_| std::path::absolute(&place))
            .unwrap_or(place);
        self.mqtt.client_id = match &self.state.dir {
            Some(dir) => match std::fs::read_to_string(dir.join(CLIENT_ID_FILE)) {
                Ok(kept) if !kept.trim().is_empty() => kept.trim().to_string(),
                _ if dir.join("FORMAT").exists() => "cityops".to_string(),
                _ => derived_client_id(&host_name(), &place),
            },
            None => derived_client_id(&host_name(), &place),
        };
    }

    /// The tables of this deployment.
    pub fn catalog(&self) -> Catalog {
        // `problems()` already validated the tables, so this cannot fail after `parse`.
        Catalog::new(&self.tables).unwrap_or_else(|_| Catalog::builtin())
    }
}

/// The file of a state directory that keeps the MQTT source's client id.
pub(crate) const CLIENT_ID_FILE: &str = "client_id";

/// `cityops-<12 hex>`: FNV-1a of the host name and the place, stable and distinct per place.
fn derived_client_id(host: &str, place: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = host
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(place.as_os_str().as_encoded_bytes());
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("cityops-{:012x}", hash >> 16)
}

/// This machine's host name (Linux), else `$HOSTNAME`, else "host".
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_client_ids_are_stable_short_and_differ_by_place() {
        let a = derived_client_id("ops-1", Path::new("/var/lib/cityops/a"));
        assert_eq!(a, derived_client_id("ops-1", Path::new("/var/lib/cityops/a")));
        assert_ne!(a, derived_client_id("ops-1", Path::new("/var/lib/cityops/b")));
        assert_ne!(a, derived_client_id("ops-2", Path::new("/var/lib/cityops/a")));
        assert!(a.starts_with("cityops-"), "{a}");
        assert_eq!(a.len(), 20, "{a}");
    }

    #[test]
    fn a_state_directory_keeps_its_client_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let with_state = |dir: &Path| {
            let mut config = Config::default();
            config.state.dir = Some(dir.to_path_buf());
            config.settle_client_id();
            config.mqtt.client_id
        };
        // A new directory: derived; once kept, the kept one whatever the host is called.
        assert!(with_state(&state).starts_with("cityops-"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join(CLIENT_ID_FILE), "cityops-kept\n").unwrap();
        assert_eq!(with_state(&state), "cityops-kept");
        // A directory from before the file: the old default.
        let older = dir.path().join("older");
        std::fs::create_dir_all(&older).unwrap();
        std::fs::write(older.join("FORMAT"), "cityops-state 1\n").unwrap();
        assert_eq!(with_state(&older), "cityops");
    }

    #[test]
    fn a_configured_client_id_is_kept() {
        let mut config = Config::parse("[mqtt]\nclient_id = \"plant-7\"\n", Path::new("x.toml")).unwrap();
        config.settle_client_id();
        assert_eq!(config.mqtt.client_id, "plant-7");
        let mut config = Config::default();
        config.settle_client_id();
        assert!(
            config.mqtt.client_id.starts_with("cityops-"),
            "{}",
            config.mqtt.client_id
        );
    }

    #[test]
    fn embedded_defaults_parse_to_the_default_values() {
        let parsed = Config::load(None).expect("defaults parse");
        let defaults = EngineConfig::default();
        assert_eq!(parsed.engine.batch_rows, defaults.batch_rows);
        assert_eq!(parsed.engine.lateness, defaults.lateness);
        assert_eq!(parsed.engine.idle_timeout, defaults.idle_timeout);
        assert_eq!(parsed.topics.pattern, TopicsConfig::default().pattern);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("[engine]\nbatch_size = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = "[engine]\nbatch_rows = 0\nqueue_capacity = 0\n[topics]\npattern = \"city/{district}\"\n";
        match Config::parse(text, Path::new("x.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => assert_eq!(problems.len(), 3, "{problems:?}"),
            other => panic!("expected invalid config, got {other:?}"),
        }
    }
}
