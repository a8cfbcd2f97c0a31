//! Silences made with the real `amtool` against cityops' Alertmanager API v2: a silence on
//! one gas detector holds back exactly its warnings from the MQTT warning topics and the
//! webhook while the other detector's go out; `amtool alert query` lists the alerts (the
//! silenced one with `--silenced`); `amtool silence query` shows the silence; after
//! `amtool silence expire` the held-back alert, still firing, is notified once on each.
//! Runs on the wall clock, as live runs do. Without `CITYOPS_TEST_ALERTMANAGER` (the
//! Debian package that also ships `amtool`; `.ci/run` installs it) the test says it skipped.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use cityops::pipeline::{self, RunOptions, Source};
use cityops::{BrokerUrl, DetectionClock, Message, SinkConfig};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const TOKEN: &str = "li-token-0001";

type Seen = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver keeping every body.
fn receiver(runtime: &tokio::runtime::Runtime) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let bodies = Arc::clone(&seen);
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
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), seen)
}

/// Every warning published under `warnings/` (retained states aside), as JSON.
fn subscriber(broker: SocketAddr) -> (Client, Seen) {
    let mut options = MqttOptions::new("silences-test-sub", broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 100);
    client.subscribe("silences-warnings/#", QoS::AtLeastOnce).unwrap();
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let (subscribed_tx, subscribed) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) if !p.topic.contains("/state/") => {
                    sink.lock().unwrap().push(serde_json::from_slice(&p.payload).unwrap());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    subscribed.recv_timeout(Duration::from_secs(10)).expect("subscribed");
    (client, seen)
}

fn gas(device: &str) -> Message {
    let now = cityops::time::wall_now_ms();
    let payload = json!({"ts": now, "kind": "gas_lel", "value": 60.0, "unit": "%LEL"});
    Message {
        at_ms: 0,
        topic: format!("city/xicheng/sensor/{device}"),
        payload: payload.to_string().into_bytes().into(),
        ..Message::default()
    }
}

/// Firing notifications per device, from what a sink received.
fn firing_of(seen: &Seen, device: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|w| w["key"]["device_id"] == device && w["status"] == "firing")
        .count()
}

fn wait_until(what: &str, test: impl Fn() -> bool) {
    let started = Instant::now();
    while !test() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn amtool(amtool: &Path, url: &str, auth: &Path, args: &[&str]) -> String {
    let output = Command::new(amtool)
        .args(args)
        .arg(format!("--alertmanager.url={url}"))
        .arg(format!("--http.config.file={}", auth.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "amtool {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn amtool_silences_hold_back_exactly_the_matching_warnings_until_they_expire() {
    let Ok(alertmanager) = std::env::var("CITYOPS_TEST_ALERTMANAGER") else {
        eprintln!("CITYOPS_TEST_ALERTMANAGER is not set: skipping the amtool test (.ci/run sets it)");
        return;
    };
    let amtool_path = Path::new(&alertmanager).with_file_name("amtool");
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (hook, webhook) = receiver(&runtime);
    let broker = common::rumqttd();
    let (_client, mqtt) = subscriber(broker);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let auth = dir.path().join("amtool-http.yml");
    std::fs::write(
        &auth,
        format!("authorization:\n  type: Bearer\n  credentials: {TOKEN}\n"),
    )
    .unwrap();

    let mut config = common::operator_config(&addr.to_string(), TOKEN);
    config.webhook.url = Some(hook);
    config.webhook.spool_dir = dir.path().join("spool");
    config.mqtt.warnings_prefix = "silences-warnings".into();
    config.mqtt.client_id = "silences-test".into();
    let broker_url = BrokerUrl {
        host: broker.ip().to_string(),
        port: broker.port(),
        tls: false,
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let options = RunOptions {
        sinks: SinkConfig {
            collect: true,
            mqtt: Some((broker_url, config.mqtt.clone())),
            webhook: Some(config.webhook.clone()),
            ..SinkConfig::default()
        },
        clock: DetectionClock::Wall,
        ..common::options(config, Source::Channel(rx), &dir.path().join("dead-letters.jsonl"))
    };
    let run = std::thread::spawn(move || pipeline::run(options).expect("the pipeline runs"));
    wait_until("the API", || ureq::get(format!("{url}/api/v2/status")).call().is_ok());

    // Writes need the operator's token: without it amtool is refused.
    let anonymous = Command::new(&amtool_path)
        .args([
            "silence",
            "add",
            "device_id=gas-1",
            "--comment=x",
            &format!("--alertmanager.url={url}"),
        ])
        .output()
        .unwrap();
    assert!(!anonymous.status.success(), "a silence without a token must be refused");

    let id = amtool(
        &amtool_path,
        &url,
        &auth,
        &[
            "silence",
            "add",
            "alertname=gas_lel_high",
            "device_id=gas-1",
            "--comment=valve work",
            "--duration=1h",
        ],
    )
    .trim()
    .to_string();
    assert_eq!(id.len(), 36, "a silence id: {id}");

    tx.send(gas("gas-1")).unwrap();
    tx.send(gas("gas-2")).unwrap();
    wait_until("gas-2 on the webhook", || firing_of(&webhook, "gas-2") == 1);
    wait_until("gas-2 on MQTT", || firing_of(&mqtt, "gas-2") == 1);
    // The silenced alert fires on the desk, marked.
    wait_until("gas-1 on the desk", || {
        let text = ureq::get(format!("{url}/api/alerts"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        body["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["key"]["device_id"] == "gas-1" && a["silenced"] == true)
    });
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(firing_of(&webhook, "gas-1"), 0, "held back from the webhook");
    assert_eq!(firing_of(&mqtt, "gas-1"), 0, "held back from MQTT");

    let listed = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["alert", "query", "-o", "json"];
        args.extend_from_slice(extra);
        let alerts: Value = serde_json::from_str(&amtool(&amtool_path, &url, &auth, &args)).unwrap();
        let mut devices: Vec<String> = alerts
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["labels"]["device_id"].as_str().unwrap().to_string())
            .collect();
        devices.sort();
        devices
    };
    assert_eq!(listed(&[]), ["gas-2"]);
    assert_eq!(listed(&["--silenced"]), ["gas-1"]);
    assert_eq!(listed(&["--silenced", "--active"]), ["gas-1", "gas-2"]);
    let silences: Value =
        serde_json::from_str(&amtool(&amtool_path, &url, &auth, &["silence", "query", "-o", "json"])).unwrap();
    assert_eq!(silences.as_array().unwrap().len(), 1, "{silences}");
    assert_eq!(silences[0]["id"], id.as_str());
    assert_eq!(silences[0]["status"]["state"], "active");
    assert_eq!(silences[0]["createdBy"], "li", "the operator the token names");

    amtool(&amtool_path, &url, &auth, &["silence", "expire", &id]);
    wait_until("gas-1 on the webhook", || firing_of(&webhook, "gas-1") == 1);
    wait_until("gas-1 on MQTT", || firing_of(&mqtt, "gas-1") == 1);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(firing_of(&webhook, "gas-1"), 1, "notified once");
    assert_eq!(firing_of(&mqtt, "gas-1"), 1, "notified once");
    assert_eq!(firing_of(&webhook, "gas-2"), 1);
    let expired: Value = serde_json::from_str(&amtool(
        &amtool_path,
        &url,
        &auth,
        &["silence", "query", "--expired", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(expired[0]["status"]["state"], "expired", "{expired}");

    drop(tx);
    run.join().unwrap();
}
