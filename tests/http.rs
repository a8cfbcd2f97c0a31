//! `/metrics` on a running pipeline: Prometheus text with exact counters while messages
//! flow, a bearer token when one is configured, and a refusal to serve a non-loopback
//! address without one.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cityops::pipeline::{self, RunError, RunOptions, RunOutcome, Source};
use cityops::{Config, DurationMs, Message};
use common::T0;

fn message(device: &str, payload: &str) -> Message {
    Message {
        at_ms: 0,
        topic: format!("city/xicheng/sensor/{device}"),
        payload: payload.as_bytes().to_vec().into(),
        recorded_invalid: false,
        arrived_ns: 0,
        ..Message::default()
    }
}

fn options(bind: &str, token: Option<&str>, source: Source, dir: &tempfile::TempDir) -> RunOptions {
    let mut config = Config::default();
    config.rules.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    config.rules.reload_interval = DurationMs(0);
    config.http.bind = bind.to_string();
    config.http.token = token.map(str::to_string);
    common::options(config, source, &dir.path().join("dead-letters.jsonl"))
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// GETs /metrics until `line` is on the page (or 30 s).
fn page_with(addr: &str, token: Option<&str>, line: &str) -> String {
    let started = Instant::now();
    loop {
        let mut request = ureq::get(format!("http://{addr}/metrics"));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Ok(mut response) = request.call() {
            let page = response.body_mut().read_to_string().unwrap();
            if page.lines().any(|l| l == line) {
                return page;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no `{line}` on /metrics");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(options: RunOptions) -> std::thread::JoinHandle<RunOutcome> {
    std::thread::spawn(move || pipeline::run(options).expect("the pipeline runs"))
}

#[test]
fn metrics_count_what_flows_while_the_pipeline_runs() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (source, messages) = crossbeam_channel::unbounded();
    let run = start(options(&addr, None, Source::Channel(messages), &dir));
    let gas = |v: f64, s: i64| {
        format!(
            r#"{{"ts": {}, "kind": "gas_lel", "value": {v}, "unit": "%LEL"}}"#,
            T0 + s * 1_000
        )
    };
    source.send(message("g1", &gas(60.0, 0))).unwrap();
    source.send(message("g2", &gas(1.0, 1))).unwrap();
    source.send(message("g2", "{broken")).unwrap();
    let page = page_with(&addr, None, "cityops_readings_accepted_total 2");
    for line in [
        "cityops_messages_in_total 3",
        "cityops_readings_rejected_total{reason=\"malformed_json\"} 1",
        "cityops_readings_rejected_total{reason=\"unknown_topic\"} 0",
        "# TYPE cityops_stage_latency_seconds summary",
        "# TYPE cityops_decode_queue_depth gauge",
    ] {
        assert!(page.lines().any(|l| l == line), "missing `{line}` in:\n{page}");
    }
    let page = page_with(&addr, None, "cityops_warnings_fired_total{level=\"red\"} 1");
    assert!(page.contains("cityops_stage_latency_seconds{stage=\"decode\",quantile=\"0.99\"}"));
    assert!(page.contains("cityops_decode_queue_depth{worker=\"0\"} 0"), "{page}");
    drop(source);
    let outcome = run.join().unwrap();
    assert_eq!(outcome.warnings.len(), 1);
    // The server stops with the run.
    assert!(ureq::get(format!("http://{addr}/metrics")).call().is_err());
}

#[test]
fn a_token_is_required_when_configured_and_for_non_loopback_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (source, messages) = crossbeam_channel::unbounded::<Message>();
    let run = start(options(&addr, Some("s3cret"), Source::Channel(messages), &dir));
    page_with(&addr, Some("s3cret"), "cityops_messages_in_total 0");
    let refused = ureq::get(format!("http://{addr}/metrics")).call();
    assert!(matches!(refused, Err(ureq::Error::StatusCode(401))), "{refused:?}");
    let wrong = ureq::get(format!("http://{addr}/metrics"))
        .header("Authorization", "Bearer nope")
        .call();
    assert!(matches!(wrong, Err(ureq::Error::StatusCode(401))));
    drop(source);
    run.join().unwrap();

    let (_source, messages) = crossbeam_channel::unbounded::<Message>();
    let open = pipeline::run(options("0.0.0.0:0", None, Source::Channel(messages), &dir));
    match open {
        Err(RunError::Config(message)) => assert!(message.contains("token"), "{message}"),
        other => panic!("expected a refusal, got {:?}", other.map(|o| o.summary.messages_in)),
    }
}

#[test]
fn with_state_metrics_and_stats_show_checkpoints_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let state = cityops::pipeline::StateOptions {
        dir: dir.path().join("state"),
        checkpoint_interval: Duration::from_secs(60),
    };
    // First run: one reading, ended cleanly (a checkpoint at start and one at the end).
    let addr = free_addr();
    let (source, messages) = crossbeam_channel::unbounded();
    let run = start(RunOptions {
        state: Some(state.clone()),
        ..options(&addr, None, Source::Channel(messages), &dir)
    });
    source
        .send(message(
            "gas-1",
            r#"{"ts": 1768435200000, "kind": "gas_lel", "value": 2.0}"#,
        ))
        .unwrap();
    // The checkpoint taken right after the (empty) recovery.
    let page = page_with(&addr, None, "cityops_state_checkpoints_total 1");
    assert!(page.contains("\ncityops_state_log_stalled 0\n"), "{page}");
    drop(source);
    run.join().unwrap();

    // Second run on the same directory: it recovers, and says so on /api/stats.
    let addr = free_addr();
    let (source, messages) = crossbeam_channel::unbounded();
    let run = start(RunOptions {
        state: Some(state),
        ..options(&addr, None, Source::Channel(messages), &dir)
    });
    page_with(&addr, None, "cityops_state_checkpoints_total 1");
    let mut response = ureq::get(format!("http://{addr}/api/stats")).call().unwrap();
    let stats: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let state = &stats["state"];
    assert_eq!(state["checkpoints"], 1, "{stats}");
    assert!(state["last_checkpoint_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(state["last_checkpoint_ms"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(state["sessions_lost"], 0);
    drop(source);
    run.join().unwrap();
}
