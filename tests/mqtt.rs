//! The live path on real brokers: the in-process rumqttd (always) and the machine's
//! Mosquitto (when `CITYOPS_TEST_MOSQUITTO=host:port` is set, as `.ci/run` does). The demo
//! city is published with QoS 1 and must give exactly the warnings of the file replay (the
//! golden file), delivered to a plain subscriber of the warning topics, with the retained
//! state topics holding exactly the alerts firing at the end. Each run uses its own topic
//! prefix, so runs on a shared broker never see each other's messages.
//!
//! Beyond the demo: bad payloads on the live path are dead-lettered and counted, so that
//! readings in = accepted + rejected; acks held for a batch larger than the broker's
//! in-flight window (rumqttd 100, Mosquitto 20) still go out at their `ack_delay` deadline;
//! and one test starts its own Mosquitto (when a `mosquitto` binary is installed, otherwise
//! it says it skipped), stops it mid-stream and restarts it, after which cityops has
//! reconnected and every reading has reached the rules.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cityops::pipeline::{self, RunOptions, RunOutcome, Source};
use cityops::{BrokerUrl, Config, FixtureReader, Metrics, MqttSource, SinkConfig};
use common::{rumqttd, sorted};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// How far the test publisher may run ahead of the pipeline.
const AHEAD: u64 = 100;

/// Every broker to test against: rumqttd, plus Mosquitto when CI provides it.
pub fn brokers() -> Vec<(&'static str, SocketAddr)> {
    let mut brokers = vec![("rumqttd", rumqttd())];
    if let Ok(addr) = std::env::var("CITYOPS_TEST_MOSQUITTO") {
        brokers.push(("mosquitto", addr.parse().expect("CITYOPS_TEST_MOSQUITTO is host:port")));
    }
    brokers
}

/// A topic prefix no other run uses.
fn unique_prefix(name: &str) -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}-{}-{name}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

/// One message a subscriber received: topic, payload, retained flag.
type Received = (String, Vec<u8>, bool);

/// A plain subscriber collecting (topic, payload, retained) until dropped.
struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    client: Client,
}

impl Subscriber {
    fn start(broker: SocketAddr, id: &str, filter: &str) -> Self {
        let mut options = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        options
            .set_max_packet_size(1 << 24, 1 << 24)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(options, 100);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let (subscribed_tx, subscribed) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        subscribed.recv_timeout(Duration::from_secs(10)).expect("subscribed");
        Subscriber { received, client }
    }

    fn messages(&self) -> Vec<(String, Vec<u8>, bool)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `count` messages have come (or 30 s).
    fn wait_for(&self, count: usize) -> Vec<(String, Vec<u8>, bool)> {
        let started = Instant::now();
        while self.received.lock().unwrap().len() < count && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.messages()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Publishes messages with QoS 1 in order and waits for every acknowledgement. The
/// publisher stays at most `AHEAD` messages ahead of what cityops has taken in: a default
/// Mosquitto queues only 1,000 messages per subscriber (`max_queued_messages`) and drops
/// the rest, so a test publishing faster than the pipeline drains would lose messages in
/// the broker, not in cityops.
pub fn publish_all(broker: SocketAddr, id: &str, messages: Vec<(String, Vec<u8>)>, taken: &Arc<Metrics>) {
    let mut options = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    options
        .set_max_packet_size(1 << 24, 1 << 24)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 1000);
    let total = messages.len() as u64;
    let taken = Arc::clone(taken);
    let publisher = std::thread::spawn(move || {
        for (sent, (topic, payload)) in messages.into_iter().enumerate() {
            while sent as u64 > taken.messages_in.load(Ordering::Relaxed) + AHEAD {
                std::thread::sleep(Duration::from_micros(200));
            }
            client.publish(topic, QoS::AtLeastOnce, false, payload).unwrap();
        }
        client
    });
    let mut acked = 0;
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == total {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("publisher lost its broker: {e}"),
        }
    }
    let client = publisher.join().unwrap();
    let _ = client.disconnect();
}

/// The demo fixture's messages with `city/` replaced by `prefix/`.
fn demo_messages(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut reader = FixtureReader::demo().unwrap();
    reader
        .messages()
        .map(|m| {
            let m = m.unwrap();
            let topic = match m.topic.strip_prefix("city/") {
                Some(rest) => format!("{prefix}/{rest}"),
                None => m.topic.clone(),
            };
            (topic, m.payload.to_vec())
        })
        .collect()
}

fn golden() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/demo-warnings.jsonl");
    common::read_jsonl(&path)
}

/// Runs the shipped rules live on `broker` with `prefix` topics, ending after `messages`.
fn live_run(
    broker: SocketAddr,
    prefix: &str,
    messages: u64,
    metrics: Arc<Metrics>,
    dir: &tempfile::TempDir,
) -> std::thread::JoinHandle<RunOutcome> {
    live_run_until(broker, prefix, Some(messages), metrics, dir)
}

/// Like `live_run`; without a message count the run ends 10 s after the last message.
fn live_run_until(
    broker: SocketAddr,
    prefix: &str,
    messages: Option<u64>,
    metrics: Arc<Metrics>,
    dir: &tempfile::TempDir,
) -> std::thread::JoinHandle<RunOutcome> {
    live_run_tuned(broker, prefix, messages, metrics, dir, |_| {})
}

/// Like `live_run_until`, with the config changed by `tune` before the run.
fn live_run_tuned(
    broker: SocketAddr,
    prefix: &str,
    messages: Option<u64>,
    metrics: Arc<Metrics>,
    dir: &tempfile::TempDir,
    tune: impl FnOnce(&mut Config),
) -> std::thread::JoinHandle<RunOutcome> {
    let mut config = Config::default();
    config.rules.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    config.rules.reload_interval = cityops::DurationMs(0);
    config.topics.pattern = format!("{prefix}/{{district}}/{{table}}/{{device_id}}");
    config.mqtt.client_id = format!("{prefix}-cityops");
    config.mqtt.filters = vec![format!("{prefix}/#")];
    config.mqtt.warnings_prefix = format!("{prefix}-warnings");
    tune(&mut config);
    let url = BrokerUrl {
        host: broker.ip().to_string(),
        port: broker.port(),
        tls: false,
    };
    let mut source = MqttSource::new(url.clone(), &config).unwrap();
    source.max_messages = messages;
    // A broker that lost messages must fail the test, not hang it.
    source.idle_exit = Some(Duration::from_secs(10));
    let sinks = SinkConfig {
        collect: true,
        mqtt: Some((url, config.mqtt.clone())),
        ..SinkConfig::default()
    };
    let options = RunOptions {
        sinks,
        metrics: Some(metrics),
        ..common::options(
            config,
            Source::Mqtt(Box::new(source)),
            &dir.path().join("dead-letters.jsonl"),
        )
    };
    std::thread::spawn(move || pipeline::run(options).expect("the live pipeline runs"))
}

/// Equal lists, or a panic naming only what differs.
fn assert_same(actual: &[Value], expected: &[Value], what: &str) {
    if actual == expected {
        return;
    }
    let line = |v: &Value| v.to_string();
    let missing: Vec<String> = expected.iter().filter(|v| !actual.contains(v)).map(line).collect();
    let extra: Vec<String> = actual.iter().filter(|v| !expected.contains(v)).map(line).collect();
    panic!(
        "{what}: {} vs {} warnings\nmissing:\n{}\nunexpected:\n{}",
        actual.len(),
        expected.len(),
        missing.join("\n"),
        extra.join("\n")
    );
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_demo_over_mqtt_gives_the_golden_warnings_and_retained_state() {
    for (name, broker) in brokers() {
        let prefix = unique_prefix(name);
        let dir = tempfile::tempdir().unwrap();
        let warnings = Subscriber::start(broker, &format!("{prefix}-sub"), &format!("{prefix}-warnings/#"));
        let messages = demo_messages(&prefix);
        let count = messages.len() as u64;
        let metrics = Arc::new(Metrics::new());
        let run = live_run(broker, &prefix, count, Arc::clone(&metrics), &dir);
        wait_until("cityops to subscribe", || {
            metrics.mqtt_subscribed.load(Ordering::Relaxed)
        });
        publish_all(broker, &format!("{prefix}-pub"), messages, &metrics);
        let outcome = run.join().expect("pipeline thread");

        // Exactly the file replay's warnings, delivered by the pipeline...
        let golden = golden();
        assert_eq!(outcome.summary.messages_in, count, "{name}");
        assert_same(
            &sorted(&outcome.warnings),
            &golden,
            &format!("{name}: live warnings against the golden file"),
        );
        // ...and received by a plain subscriber: one per warning plus one state update each.
        let received = warnings.wait_for(2 * golden.len());
        let mut published: Vec<cityops::Warning> = received
            .iter()
            .filter(|(topic, _, _)| !topic.starts_with(&format!("{prefix}-warnings/state/")))
            .map(|(_, payload, _)| serde_json::from_slice(payload).expect("warning JSON"))
            .collect();
        published.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        assert_same(
            &sorted(&published),
            &golden,
            &format!("{name}: warnings a subscriber received"),
        );

        // A console connecting now sees exactly what is firing.
        let late = Subscriber::start(
            broker,
            &format!("{prefix}-console"),
            &format!("{prefix}-warnings/state/#"),
        );
        std::thread::sleep(Duration::from_millis(500));
        let state: BTreeSet<String> = late
            .messages()
            .iter()
            .filter(|(_, payload, retained)| *retained && !payload.is_empty())
            .map(|(_, payload, _)| {
                serde_json::from_slice::<Value>(payload).unwrap()["alert_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let firing: BTreeSet<String> = outcome
            .reports
            .iter()
            .flat_map(|r| r.firing.iter().map(|f| f.alert_id.clone()))
            .collect();
        assert_eq!(
            state, firing,
            "{name}: retained state differs from the alerts firing at the end"
        );
    }
}

/// The retained state after two gas detectors fired and one of them recovered.
fn retained_after_one_of_two_recovers(broker: SocketAddr, name: &str) -> (BTreeSet<String>, RunOutcome) {
    let prefix = unique_prefix(name);
    let dir = tempfile::tempdir().unwrap();
    let reading = |device: &str, second: i64, lel: f64| {
        let ts = common::T0 + second * 1_000;
        (
            format!("{prefix}/xicheng/sensor/{device}"),
            serde_json::json!({"ts": ts, "kind": "gas_lel", "value": lel, "unit": "%LEL"})
                .to_string()
                .into_bytes(),
        )
    };
    // gas_lel_high resolves after 3 clean rows.
    let messages = vec![
        reading("g1", 0, 60.0),
        reading("g2", 1, 30.0),
        reading("g2", 2, 1.0),
        reading("g2", 3, 1.0),
        reading("g2", 4, 1.0),
    ];
    let metrics = Arc::new(Metrics::new());
    let run = live_run(broker, &prefix, messages.len() as u64, Arc::clone(&metrics), &dir);
    wait_until("cityops to subscribe", || {
        metrics.mqtt_subscribed.load(Ordering::Relaxed)
    });
    publish_all(broker, &format!("{prefix}-pub"), messages, &metrics);
    let outcome = run.join().expect("pipeline thread");
    let console = Subscriber::start(
        broker,
        &format!("{prefix}-console"),
        &format!("{prefix}-warnings/state/#"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let state = console
        .messages()
        .iter()
        .filter(|(_, payload, retained)| *retained && !payload.is_empty())
        .map(|(topic, payload, _)| {
            let warning: Value = serde_json::from_slice(payload).unwrap();
            format!(
                "{topic} {} {}",
                warning["status"].as_str().unwrap(),
                warning["level"].as_str().unwrap()
            )
        })
        .collect();
    (state, outcome)
}

#[test]
fn retained_state_holds_exactly_the_alerts_firing_now() {
    for (name, broker) in brokers() {
        let (state, outcome) = retained_after_one_of_two_recovers(broker, name);
        let statuses: Vec<(String, String)> = outcome
            .warnings
            .iter()
            .map(|w| {
                (
                    w.key["device_id"].as_str().unwrap().to_string(),
                    serde_json::to_value(w.status).unwrap().as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            statuses,
            vec![
                ("g1".to_string(), "firing".to_string()),
                ("g2".to_string(), "firing".to_string()),
                ("g2".to_string(), "resolved".to_string()),
            ],
            "{name}"
        );
        let prefix = state
            .iter()
            .next()
            .map(|s| s.split("-warnings/").next().unwrap().to_string())
            .unwrap_or_default();
        assert_eq!(
            state,
            BTreeSet::from([format!("{prefix}-warnings/state/gas_lel_high/g1/xicheng firing red")]),
            "{name}: only g1 is firing"
        );
    }
}

#[test]
fn bad_messages_on_the_live_path_are_dead_lettered_and_counted() {
    for (name, broker) in brokers() {
        let prefix = unique_prefix(name);
        let dir = tempfile::tempdir().unwrap();
        let good = |second: i64| {
            serde_json::json!({"ts": common::T0 + second * 1_000, "kind": "gas_lel", "value": 1.0, "unit": "%LEL"})
                .to_string()
                .into_bytes()
        };
        let messages = vec![
            (format!("{prefix}/xicheng/sensor/g1"), good(0)),
            (format!("{prefix}/xicheng/sensor/g1"), b"{not json".to_vec()),
            (format!("{prefix}/xicheng/sensor/g1"), vec![b' '; 70_000]),
            (format!("{prefix}/xicheng/elevator/e1"), good(1)),
            (format!("{prefix}/xicheng/sensor/g1"), b"[1, 2]".to_vec()),
            (format!("{prefix}/xicheng/sensor/g1"), good(2)),
        ];
        let metrics = Arc::new(Metrics::new());
        let run = live_run(broker, &prefix, messages.len() as u64, Arc::clone(&metrics), &dir);
        wait_until("cityops to subscribe", || {
            metrics.mqtt_subscribed.load(Ordering::Relaxed)
        });
        publish_all(broker, &format!("{prefix}-pub"), messages, &metrics);
        let outcome = run.join().expect("pipeline thread");
        let s = &outcome.summary;
        assert_eq!((s.messages_in, s.readings_accepted), (6, 2), "{name}");
        let mut reasons = s.rejected_by_reason.clone();
        reasons.sort();
        assert_eq!(
            reasons,
            vec![
                ("malformed_json".to_string(), 1),
                ("not_an_object".to_string(), 2),
                ("oversized".to_string(), 1),
                ("unknown_topic".to_string(), 1),
            ],
            "{name}"
        );
        let letters = common::read_jsonl(&dir.path().join("dead-letters.jsonl"));
        assert_eq!(letters.len(), 5, "{name}: {letters:?}");
        assert_eq!(s.readings_in, 7, "{name}: 2 accepted + 5 rejected");
    }
}

#[test]
fn acks_held_for_a_batch_beyond_the_broker_window_still_go_out_at_their_deadline() {
    // Both brokers stop sending once their in-flight window (rumqttd 100, Mosquitto 20) is
    // unacked. With a batch far beyond it, only the ack delay lets the run finish: without
    // it the run would stall until its idle exit and miss messages.
    for (name, broker) in brokers() {
        let prefix = unique_prefix(name);
        let dir = tempfile::tempdir().unwrap();
        let total = 500;
        let messages: Vec<(String, Vec<u8>)> = (0..total)
            .map(|i| {
                let payload =
                    serde_json::json!({"ts": common::T0 + i * 1_000, "kind": "gas_lel", "value": 1.0, "unit": "%LEL"});
                (
                    format!("{prefix}/xicheng/sensor/g{}", i % 7),
                    payload.to_string().into_bytes(),
                )
            })
            .collect();
        let metrics = Arc::new(Metrics::new());
        let run = live_run_tuned(
            broker,
            &prefix,
            Some(total as u64),
            Arc::clone(&metrics),
            &dir,
            |config| {
                config.mqtt.ack_batch = 10_000;
            },
        );
        wait_until("cityops to subscribe", || {
            metrics.mqtt_subscribed.load(Ordering::Relaxed)
        });
        let taken = Arc::clone(&metrics);
        let publisher_id = format!("{prefix}-pub");
        let publisher = std::thread::spawn(move || publish_all(broker, &publisher_id, messages, &taken));
        let outcome = run.join().expect("pipeline thread");
        let s = &outcome.summary;
        assert_eq!(
            (s.messages_in, s.readings_accepted),
            (total as u64, total as u64),
            "{name}"
        );
        publisher.join().expect("every message acknowledged to the publisher");
    }
}

/// A Mosquitto of the test's own on a free port, persisting sessions in a temporary
/// directory, so the test can stop and restart it.
struct OwnMosquitto {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnMosquitto {
    /// `None` when the machine has no `mosquitto` binary (`.ci/run` installs it).
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("mosquitto.conf");
        // Started as root, Mosquitto drops to its own user, which must be able to save here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut broker = OwnMosquitto { dir, port, child: None };
        broker.up().then_some(broker)
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn up(&mut self) -> bool {
        let Ok(child) = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        wait_until("mosquitto to listen", || {
            std::net::TcpStream::connect(self.addr()).is_ok()
        });
        true
    }

    /// A clean stop (SIGTERM), so the broker saves its sessions as a restart would.
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Publishes with QoS 1 through broker outages: the client reconnects and resends until
/// every message is acknowledged.
fn publish_through_outages(
    broker: SocketAddr,
    id: &str,
    messages: Vec<(String, Vec<u8>)>,
) -> std::thread::JoinHandle<()> {
    let id = id.to_string();
    std::thread::spawn(move || {
        let mut options = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        options.set_keep_alive(Duration::from_secs(5)).set_clean_session(false);
        let (client, mut connection) = Client::new(options, 10_000);
        let total = messages.len();
        for (topic, payload) in messages {
            client.publish(topic, QoS::AtLeastOnce, false, payload).unwrap();
        }
        let mut acked = 0;
        let started = Instant::now();
        for event in connection.iter() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "publisher: only {acked} of {total} acknowledged"
            );
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == total {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let _ = client.disconnect();
    })
}

#[test]
fn cityops_reconnects_after_the_broker_restarts_and_every_reading_is_accounted_for() {
    let Some(mut broker) = OwnMosquitto::start() else {
        eprintln!("SKIPPED: no mosquitto binary on this machine (.ci/run installs one)");
        return;
    };
    let prefix = unique_prefix("restart");
    let dir = tempfile::tempdir().unwrap();
    let reading = |i: usize| {
        (
            format!("{prefix}/xicheng/sensor/d{i:03}"),
            serde_json::json!({"ts": common::T0 + i as i64 * 100, "kind": "gas_lel", "value": 60.0, "unit": "%LEL"})
                .to_string()
                .into_bytes(),
        )
    };
    let metrics = Arc::new(Metrics::new());
    let run = live_run_until(broker.addr(), &prefix, None, Arc::clone(&metrics), &dir);
    wait_until("cityops to subscribe", || {
        metrics.mqtt_subscribed.load(Ordering::Relaxed)
    });

    publish_all(
        broker.addr(),
        &format!("{prefix}-pub1"),
        (0..300).map(reading).collect(),
        &metrics,
    );
    wait_until("the first half to arrive", || {
        metrics.messages_in.load(Ordering::Relaxed) >= 300
    });
    broker.down();
    // Published while the broker is down: the publisher holds them and resends.
    let second_half = publish_through_outages(
        broker.addr(),
        &format!("{prefix}-pub2"),
        (300..600).map(reading).collect(),
    );
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        !metrics.mqtt_connected.load(Ordering::Relaxed),
        "cityops noticed the outage"
    );
    assert!(broker.up(), "mosquitto restarts");
    second_half.join().expect("the second half is acknowledged");
    let outcome = run.join().expect("pipeline thread");

    // Every reading fired its device's alert exactly once (a redelivered duplicate would
    // not fire again), so every published reading reached the rules.
    let fired: BTreeSet<String> = outcome
        .warnings
        .iter()
        .map(|w| w.key["device_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        fired.len(),
        600,
        "devices that fired; connection errors {}, outage {} ms, messages in {}",
        metrics.mqtt_connection_errors.load(Ordering::Relaxed),
        metrics.mqtt_outage_ms.load(Ordering::Relaxed),
        metrics.messages_in.load(Ordering::Relaxed)
    );
    assert_eq!(outcome.warnings.len(), 600);
    let s = &outcome.summary;
    assert!(
        s.readings_in >= 600 && s.readings_accepted >= 600,
        "{} in, {} accepted",
        s.readings_in,
        s.readings_accepted
    );
    assert_eq!(s.readings_rejected, 0);
    assert!(
        metrics.mqtt_connection_errors.load(Ordering::Relaxed) >= 1,
        "the outage is counted"
    );
    assert!(metrics.mqtt_outage_ms.load(Ordering::Relaxed) >= 1_000, "and timed");
}
