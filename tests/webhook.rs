//! The webhook sink against a real HTTP receiver that goes down and comes back: every
//! warning is delivered once it returns, in order and exactly once, including warnings a
//! first cityops run left in the spool and a second run sends.
//!
//! The receiver is taken down and up during a run and between two runs: of the five
//! warnings (g1 to g5), g2 and g3 wait for it in the spool, g4 is left spooled by the first
//! run and sent first by the second, and all five arrive once each, in order. A second
//! test checks the Alertmanager body's labels and times.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use cityops::pipeline::{self, RunOptions, RunOutcome, Source};
use cityops::{Config, DurationMs, Message, Metrics, SinkConfig};
use common::T0;
use serde_json::{Value, json};

type Bodies = Arc<Mutex<Vec<Value>>>;

/// An HTTP receiver on a fixed port that can be taken down and brought back.
struct Receiver {
    addr: SocketAddr,
    bodies: Bodies,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    fn new() -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut receiver = Receiver {
            addr,
            bodies: Arc::default(),
            runtime,
            stop: None,
            server: None,
        };
        receiver.up();
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn up(&mut self) {
        let bodies = Arc::clone(&self.bodies);
        let app = axum::Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<Value>| {
                let bodies = Arc::clone(&bodies);
                async move {
                    bodies.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let listener = self.runtime.block_on(async {
            let started = Instant::now();
            loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) if started.elapsed() < Duration::from_secs(10) => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("cannot bind the receiver again: {e}"),
                }
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.server = Some(self.runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        }));
    }

    fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server).unwrap();
        }
    }

    fn devices(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["key"]["device_id"].as_str().unwrap().to_string())
            .collect()
    }

    fn wait_for(&self, count: usize) -> Vec<String> {
        let started = Instant::now();
        while self.bodies.lock().unwrap().len() < count && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.devices()
    }
}

/// A gas reading at 60 % LEL: `gas_lel_high` fires red for the device at once.
fn gas(device: &str, second: i64) -> Message {
    let payload = json!({"ts": T0 + second * 1_000, "kind": "gas_lel", "value": 60.0, "unit": "%LEL"});
    Message {
        at_ms: second * 1_000,
        topic: format!("city/xicheng/sensor/{device}"),
        payload: payload.to_string().into_bytes().into(),
        recorded_invalid: false,
        arrived_ns: 0,
        ..Message::default()
    }
}

fn run(
    url: &str,
    spool: &Path,
    source: Source,
    metrics: Arc<Metrics>,
    dir: &Path,
) -> std::thread::JoinHandle<RunOutcome> {
    let mut config = Config::default();
    config.rules.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    config.rules.reload_interval = DurationMs(0);
    config.webhook.url = Some(url.to_string());
    config.webhook.spool_dir = spool.to_path_buf();
    config.webhook.max_backoff = DurationMs(200);
    config.webhook.drain_on_exit = DurationMs(1_000);
    let sinks = SinkConfig {
        collect: true,
        webhook: Some(config.webhook.clone()),
        ..SinkConfig::default()
    };
    let options = RunOptions {
        sinks,
        metrics: Some(metrics),
        ..common::options(config, source, &dir.join("dead-letters.jsonl"))
    };
    std::thread::spawn(move || pipeline::run(options).expect("the pipeline runs"))
}

fn spooled_files(spool: &Path) -> usize {
    std::fs::read_dir(spool)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
        .count()
}

#[test]
fn warnings_survive_a_receiver_outage_and_a_cityops_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut receiver = Receiver::new();

    // First run: g1 goes straight through; g2 and g3 come while the receiver is down and
    // arrive once it is back; g4 comes while it is down again and the run ends.
    let (source, messages) = crossbeam_channel::unbounded();
    let metrics = Arc::new(Metrics::new());
    let first = run(
        &receiver.url(),
        &spool,
        Source::Channel(messages),
        Arc::clone(&metrics),
        dir.path(),
    );
    source.send(gas("g1", 0)).unwrap();
    assert_eq!(receiver.wait_for(1), ["g1"]);
    receiver.down();
    source.send(gas("g2", 1)).unwrap();
    source.send(gas("g3", 2)).unwrap();
    let started = Instant::now();
    while metrics.webhook_retries.load(Ordering::Relaxed) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sink retries while the receiver is down"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(receiver.devices(), ["g1"]);
    receiver.up();
    assert_eq!(receiver.wait_for(3), ["g1", "g2", "g3"]);
    receiver.down();
    source.send(gas("g4", 3)).unwrap();
    drop(source);
    let outcome = first.join().unwrap();
    assert_eq!(outcome.warnings.len(), 4);
    assert_eq!(outcome.summary.webhook_delivered, 3);
    assert_eq!(spooled_files(&spool), 1, "g4 waits in the spool");

    // Second run: g4 from the spool first, then g5; each delivered exactly once.
    receiver.up();
    let (source, messages) = crossbeam_channel::unbounded();
    let second = run(
        &receiver.url(),
        &spool,
        Source::Channel(messages),
        Arc::new(Metrics::new()),
        dir.path(),
    );
    source.send(gas("g5", 4)).unwrap();
    assert_eq!(receiver.wait_for(5), ["g1", "g2", "g3", "g4", "g5"]);
    drop(source);
    let outcome = second.join().unwrap();
    assert_eq!(outcome.summary.webhook_delivered, 2);
    assert_eq!(spooled_files(&spool), 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(receiver.devices().len(), 5, "nothing was delivered twice");
    let ids: std::collections::BTreeSet<String> = receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["alert_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(
        receiver
            .bodies
            .lock()
            .unwrap()
            .iter()
            .all(|b| b["status"] == "firing" && b["level"] == "red")
    );
}

#[test]
fn the_alertmanager_body_carries_labels_and_times() {
    let warning: cityops::Warning = serde_json::from_value(json!({
        "alert_id": "a1", "rule": "gas_lel_high", "status": "resolved", "level": "red", "table": "sensor",
        "key": {"district": "xicheng", "device_id": "g1"}, "values": {"gas_lel": 60.0},
        "window_start": null, "window_end": null, "first_breach": "2026-01-15T00:00:00.000Z",
        "detected_at": "2026-01-15T00:05:00.000Z", "latency_ms": 1.0, "description": "gas"
    }))
    .unwrap();
    let body = cityops::alertmanager_body(&warning);
    assert_eq!(
        body,
        json!([{
            "labels": {"alertname": "gas_lel_high", "severity": "red", "table": "sensor", "district": "xicheng", "device_id": "g1"},
            "annotations": {"description": "gas", "alert_id": "a1", "values": "{\"gas_lel\":60.0}"},
            "startsAt": "2026-01-15T00:00:00.000Z",
            "endsAt": "2026-01-15T00:05:00.000Z"
        }])
    );
}
