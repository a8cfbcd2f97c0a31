//! Helpers shared by the integration tests: temporary fixtures and rule directories, and a
//! pipeline run on the virtual (event-time) clock that returns warnings without latency.

#![allow(clippy::expect_used, clippy::unwrap_used)]
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cityops::pipeline::{self, RunOptions, RunOutcome, Source};
use cityops::{Config, DetectionClock, SinkConfig, Speed, Warning};
use serde_json::{Value, json};

/// Epoch ms of 2026-01-15T00:00:00Z, the base of hand-written scenarios.
pub const T0: i64 = 1_768_435_200_000;
pub const MIN: i64 = 60_000;

/// A scratch directory with rules, a fixture and the run's outputs.
pub struct Scenario {
    pub dir: tempfile::TempDir,
}

impl Scenario {
    pub fn new() -> Self {
        Scenario {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `queries/<id>.sql`.
    pub fn rule(&self, id: &str, text: &str) -> &Self {
        let dir = self.path("queries");
        std::fs::create_dir_all(&dir).expect("queries dir");
        std::fs::write(dir.join(format!("{id}.sql")), text).expect("rule written");
        self
    }

    /// Writes the fixture from (at, topic, payload) triples.
    pub fn fixture(&self, messages: &[(i64, &str, Value)]) -> PathBuf {
        let path = self.path("fixture.jsonl");
        let text: String = messages
            .iter()
            .map(|(at, topic, payload)| format!("{}\n", json!({"at": at, "topic": topic, "payload": payload})))
            .collect();
        std::fs::write(&path, text).expect("fixture written");
        path
    }

    /// Writes a fixture from raw lines.
    pub fn raw_fixture(&self, lines: &[String]) -> PathBuf {
        let path = self.path("fixture.jsonl");
        std::fs::write(&path, lines.join("\n")).expect("fixture written");
        path
    }

    /// Runs the pipeline over `fixture` with this scenario's rules.
    pub fn run(&self, fixture: &Path, tweak: impl FnOnce(&mut Config)) -> RunOutcome {
        let mut config = Config::default();
        config.rules.dir = self.path("queries");
        tweak(&mut config);
        run_with(
            config,
            Source::File(fixture.to_path_buf()),
            &self.path("dead-letters.jsonl"),
        )
    }

    /// The dead letters the last run wrote.
    pub fn dead_letters(&self) -> Vec<Value> {
        read_jsonl(&self.path("dead-letters.jsonl"))
    }
}

/// A run at maximum speed on the virtual clock that collects its warnings; tests change
/// the fields they need with `..options(…)`.
pub fn options(config: Config, fixture: Source, dead_letters: &Path) -> RunOptions {
    RunOptions {
        config,
        fixture,
        speed: Speed::Max,
        sinks: SinkConfig {
            collect: true,
            ..SinkConfig::default()
        },
        dead_letter_path: dead_letters.to_path_buf(),
        clock: DetectionClock::EventTime,
        capture_results: false,
        reload_reports: None,
        stop: None,
        metrics: None,
        state: None,
    }
}

/// Runs the pipeline on the virtual clock, collecting warnings and window results.
pub fn run_with(config: Config, fixture: Source, dead_letters: &Path) -> RunOutcome {
    let options = RunOptions {
        capture_results: true,
        ..options(config, fixture, dead_letters)
    };
    pipeline::run(options).expect("the pipeline runs")
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("jsonl file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// A warning as JSON without the wall-clock latency, floats rounded to 6 significant digits,
/// so runs compare exactly.
pub fn stable(warning: &Warning) -> Value {
    let mut value = serde_json::to_value(warning).expect("warning serializes");
    if let Some(obj) = value.as_object_mut() {
        obj.remove("latency_ms");
    }
    round_floats(&mut value);
    value
}

fn round_floats(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            let rounded: f64 = format!("{f:.6e}").parse().unwrap_or(f);
            *value = json!(rounded);
        }
        Value::Array(items) => items.iter_mut().for_each(round_floats),
        Value::Object(map) => map.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// Warnings sorted into a deterministic order (rules run in parallel).
pub fn sorted(warnings: &[Warning]) -> Vec<Value> {
    let mut values: Vec<Value> = warnings.iter().map(stable).collect();
    values.sort_by_key(|v| {
        (
            v["detected_at"].as_str().unwrap_or_default().to_string(),
            v["rule"].as_str().unwrap_or_default().to_string(),
            v["key"].to_string(),
            v["status"].as_str().unwrap_or_default().to_string(),
            v["level"].as_str().unwrap_or_default().to_string(),
        )
    });
    values
}

/// (status, level, window_start) of each warning of one rule and key, in order.
pub fn steps(warnings: &[Warning], rule: &str) -> Vec<(String, String, Option<String>)> {
    warnings
        .iter()
        .filter(|w| w.rule == rule)
        .map(|w| {
            let status = serde_json::to_value(w.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            (status, w.level.as_str().to_string(), w.window_start.clone())
        })
        .collect()
}

/// The shipped rules without hot reload, the HTTP side on `bind`, and one operator, `li`,
/// whose bearer token is `token`.
pub fn operator_config(bind: &str, token: &str) -> Config {
    let mut config = Config::default();
    config.rules.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    config.rules.reload_interval = cityops::DurationMs(0);
    config.http.bind = bind.to_string();
    config
        .http
        .operators
        .insert("li".into(), format!("sha256:{}", cityops::token_hash(token)));
    config
}

/// RFC 3339 of `T0 + offset_ms`.
pub fn at(offset_ms: i64) -> String {
    cityops::time::format_ms(T0 + offset_ms)
}

/// The in-process rumqttd, started once per test binary.
pub fn rumqttd() -> SocketAddr {
    static BROKER: OnceLock<SocketAddr> = OnceLock::new();
    *BROKER.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let toml = format!(
            r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 100
dynamic_filters = true
"#
        );
        let config: rumqttd::Config = toml::from_str(&toml).expect("rumqttd config");
        let mut broker = rumqttd::Broker::new(config);
        std::thread::spawn(move || broker.start().expect("rumqttd runs"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "rumqttd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    })
}
