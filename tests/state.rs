//! Durable state (`--state DIR`) as an operator meets it: a replay killed with SIGKILL at
//! seeded points — once with a torn record at the log's end, once with its newest
//! checkpoint corrupted — and restarted on its state directory writes exactly the warnings
//! of an uninterrupted run; a state directory of another format is refused, naming it; a
//! rule changed while cityops was down keeps its firing alert (same id) and one removed
//! resolves its alerts; a broker that lost the session is detected and counted. The live
//! MQTT crash test with every sink is `tests/crash.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cityops::pipeline::{self, RunOptions, Source, StateOptions};
use cityops::{Config, DetectionClock, Message, SinkConfig, Speed, Warning, WarningStatus};
use common::{MIN, Scenario, T0};
use serde_json::{Value, json};

fn cityops() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cityops"))
}

/// A tiny seeded generator (xorshift64*), so kill points are reproducible.
struct Seeded(u64);

impl Seeded {
    fn next_in(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        low + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (high - low)
    }
}

/// `cityops run` on the demo at 40 000× (about two seconds), keeping state in `state`,
/// with checkpoints every 300 ms.
fn demo_run(dir: &Path, state: &Path, jsonl: &Path) -> Command {
    let queries = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/queries"));
    replay_run(dir, None, queries, "40000", state, jsonl)
}

/// `cityops run` replaying `fixture` (the demo when `None`) at `speed` with the rules of
/// `queries`, keeping state in `state`, with checkpoints every 300 ms.
fn replay_run(dir: &Path, fixture: Option<&Path>, queries: &Path, speed: &str, state: &Path, jsonl: &Path) -> Command {
    let config = dir.join("cityops.toml");
    std::fs::write(
        &config,
        "[state]\ncheckpoint_interval = \"300ms\"\n[rules]\nreload_interval = \"0s\"\n",
    )
    .unwrap();
    let mut command = cityops();
    command
        .args(["run", "--speed", speed, "--no-http", "--quiet"])
        .arg("--config")
        .arg(&config)
        .arg("--queries")
        .arg(queries)
        .arg("--state")
        .arg(state)
        .arg("--jsonl")
        .arg(jsonl)
        .arg("--dead-letter")
        .arg(dir.join("dead-letters.jsonl"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(fixture) = fixture {
        command.arg("--replay").arg(fixture);
    }
    command
}

/// Runs to the end; returns stderr.
fn finish(mut command: Command) -> String {
    let out = command.output().expect("cityops runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "cityops failed:\n{stderr}");
    stderr
}

/// Starts a run and kills it (SIGKILL) after `after`; returns what it wrote on stderr.
fn kill_after(mut command: Command, after: Duration) -> String {
    let mut child: Child = command.spawn().expect("cityops starts");
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let started = Instant::now();
    while started.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap()
}

/// The notifications of a JSON Lines file by identity (alert id, number), with the
/// wall-clock latency removed. Panics when one identity carries two different contents.
fn by_identity(path: &Path) -> (BTreeMap<(String, u64), Value>, usize) {
    let mut seen = BTreeMap::new();
    let mut duplicates = 0;
    for mut warning in common::read_jsonl(path) {
        warning.as_object_mut().unwrap().remove("latency_ms");
        let id = (
            warning["alert_id"].as_str().unwrap().to_string(),
            warning["transition"].as_u64().unwrap(),
        );
        if let Some(earlier) = seen.get(&id) {
            assert_eq!(earlier, &warning, "one identity, two different notifications");
            duplicates += 1;
        } else {
            seen.insert(id, warning);
        }
    }
    (seen, duplicates)
}

/// The newest file of a directory whose name starts with `prefix`.
fn newest(dir: &Path, prefix: &str) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    files
        .pop()
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

#[test]
fn a_replay_killed_at_seeded_points_writes_exactly_the_warnings_of_an_uninterrupted_run() {
    let s = Scenario::new();
    let dir = s.dir.path().to_path_buf();
    kill_and_compare(&s, 0x5eed_2026_1202, (300, 1_800), |state, jsonl| {
        demo_run(&dir, state, jsonl)
    });
}

const SESSIONS: &str = "-- description: A run of readings (gaps under 5 minutes) that peaked above 20 %LEL
-- level: orange
SELECT device_id, count(*) AS readings, max(value) AS peak
FROM sensor
WHERE kind = 'gas_lel'
GROUP BY session(ts, INTERVAL '5 minutes'), device_id
HAVING max(value) > 20
";

const HOPPING: &str = "-- description: Half-hour mean above 8 %LEL, every 5 minutes
-- level: yellow
SELECT device_id, avg(value) AS mean
FROM sensor
WHERE kind = 'gas_lel'
GROUP BY hop(ts, INTERVAL '5 minutes', INTERVAL '30 minutes'), device_id
HAVING avg(value) > 8
";

const CUMULATING: &str = "-- description: More than 200 readings so far this hour
-- level: blue
SELECT device_id, count(*) AS readings
FROM sensor
WHERE kind = 'gas_lel'
GROUP BY cumulate(ts, INTERVAL '10 minutes', INTERVAL '1 hour'), device_id
HAVING count(*) > 200
";

/// 30 gas detectors reading every 10 s for 6 hours; each falls silent 10 minutes an hour
/// (so sessions split) and reads 25 %LEL for a quarter of an hour once every 2 hours.
fn gas_fixture(path: &Path) {
    let mut lines = Vec::new();
    for second in (0..6 * 3600).step_by(10) {
        let minute = second / 60;
        for device in 0..30i64 {
            let silent_from = (device * 7) % 50;
            if (silent_from..silent_from + 10).contains(&(minute % 60)) {
                continue;
            }
            let high = (minute + device * 11) % 120 < 15;
            let value = if high { 25.0 } else { 2.0 + (device % 3) as f64 };
            let at = second * 1_000 + device;
            lines.push(
                json!({"at": at, "topic": format!("city/xicheng/sensor/gas-{device:02}"),
                       "payload": {"ts": T0 + at, "kind": "gas_lel", "value": value}})
                .to_string(),
            );
        }
    }
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// Runs `command()` killed at four seeded points, with a torn record appended to the log
/// after the second kill and the newest checkpoint corrupted after the third, then to its
/// end; asserts the warnings equal those of one uninterrupted run (`whole`).
fn kill_and_compare(s: &Scenario, seed: u64, kill_window_ms: (u64, u64), command: impl Fn(&Path, &Path) -> Command) {
    finish(command(&s.path("state-whole"), &s.path("whole.jsonl")));
    let (expected, repeats) = by_identity(&s.path("whole.jsonl"));
    assert!(expected.len() >= 10, "the run gives warnings: {}", expected.len());
    assert_eq!(repeats, 0);

    let state = s.path("state");
    let jsonl = s.path("killed.jsonl");
    let mut seed = Seeded(seed);
    let mut kills = Vec::new();
    for round in 0..4 {
        let after = Duration::from_millis(seed.next_in(kill_window_ms.0, kill_window_ms.1));
        kills.push(after);
        let stderr = kill_after(command(&state, &jsonl), after);
        println!("round {round}, killed after {after:?}:\n{stderr}");
        match round {
            // A crash mid-write leaves half a record at the log's end.
            1 => {
                let segment = newest(&state.join("log"), "");
                let mut bytes = std::fs::read(&segment).unwrap();
                bytes.extend_from_slice(&[200, 0, 0, 0, 7, 7, 7, 7, 1, 2]);
                std::fs::write(&segment, bytes).unwrap();
            }
            // The newest checkpoint turns out unreadable: the one before serves.
            2 => {
                let checkpoint = newest(&state.join("checkpoints"), "checkpoint-");
                let mut bytes = std::fs::read(&checkpoint).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x5a;
                std::fs::write(&checkpoint, bytes).unwrap();
            }
            _ => {}
        }
    }
    let stderr = finish(command(&state, &jsonl));
    assert!(stderr.contains("recovered in"), "{stderr}");
    let (got, duplicates) = by_identity(&jsonl);
    println!("killed after {kills:?}; {duplicates} notification(s) delivered twice with the same identity");
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let new: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} notifications never came: {missing:?}",
        missing.len()
    );
    assert!(
        new.is_empty(),
        "{} notifications with a new identity: {new:?}",
        new.len()
    );
    for (id, warning) in &expected {
        assert_eq!(&got[id], warning, "notification {id:?} differs");
    }
}

/// Each windowed rule beside a variant with another threshold: the pairs run as families
/// (one aggregation each), whose shared windows must come back whole after every kill.
#[test]
fn session_hop_and_cumulate_windows_and_their_families_survive_kills_at_seeded_points() {
    let s = Scenario::new();
    s.rule("sessions", SESSIONS)
        .rule("hopping", HOPPING)
        .rule("hopping_low", &HOPPING.replace("avg(value) > 8", "avg(value) > 4"))
        .rule("cumulating", CUMULATING)
        .rule(
            "cumulating_low",
            &CUMULATING.replace("count(*) > 200", "count(*) > 150"),
        );
    let fixture = s.path("gas.jsonl");
    gas_fixture(&fixture);
    let (dir, queries) = (s.dir.path().to_path_buf(), s.path("queries"));
    kill_and_compare(&s, 0x5e55_1015, (200, 1_500), |state, jsonl| {
        replay_run(&dir, Some(&fixture), &queries, "12000", state, jsonl)
    });
}

#[test]
fn a_state_directory_of_another_format_is_refused_with_its_name() {
    let s = Scenario::new();
    let state = s.path("old-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("FORMAT"), "cityops-state 0\n").unwrap();
    let out = demo_run(s.dir.path(), &state, &s.path("w.jsonl")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&state.display().to_string()) && stderr.contains("incompatible"),
        "{stderr}"
    );
    // A directory holding other files is not taken over either.
    let other = s.path("photos");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("a.jpg"), "x").unwrap();
    let out = demo_run(s.dir.path(), &other, &s.path("w.jsonl")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1, "nothing written into it");
}

const LOW_V1: &str = "-- description: Pressure below 0.20 MPa for a minute
-- level: yellow
-- resolve: 1
SELECT district, device_id, avg(pressure_mpa) AS pressure_mpa
FROM water
WHERE kind = 'pressure'
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id
HAVING avg(pressure_mpa) < 0.20
";

/// The same alert key, a different threshold: a changed rule.
const LOW_V2: &str = "-- description: Pressure below 0.22 MPa for a minute
-- level: yellow
-- resolve: 1
SELECT district, device_id, avg(pressure_mpa) AS pressure_mpa
FROM water
WHERE kind = 'pressure'
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id
HAVING avg(pressure_mpa) < 0.22
";

const HIGH: &str = "-- description: Pressure above 0.60 MPa
-- level: orange
SELECT district, device_id, pressure_mpa
FROM water
WHERE kind = 'pressure' AND pressure_mpa > 0.60
";

/// One pressure reading a minute (at second 10) from `from` to `to` (exclusive).
fn readings(from: i64, to: i64, device: &str, pressure: impl Fn(i64) -> f64) -> Vec<Message> {
    (from..to)
        .map(|minute| {
            let at_ms = minute * MIN + 10_000;
            let payload = json!({"ts": T0 + at_ms, "kind": "pressure", "pressure_mpa": pressure(minute)});
            Message {
                at_ms,
                topic: format!("city/xicheng/water/{device}"),
                payload: payload.to_string().into_bytes().into(),
                ..Message::default()
            }
        })
        .collect()
}

/// A run over `messages` keeping state in the scenario's `state` directory.
fn run_on_state(s: &Scenario, messages: Vec<Message>) -> Vec<Warning> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for m in messages {
        tx.send(m).unwrap();
    }
    drop(tx);
    let mut config = Config::default();
    config.rules.dir = s.path("queries");
    config.rules.reload_interval = cityops::DurationMs(0);
    let options = RunOptions {
        state: Some(StateOptions {
            dir: s.path("state"),
            checkpoint_interval: Duration::from_secs(60),
        }),
        ..common::options(config, Source::Channel(rx), &s.path("dead-letters.jsonl"))
    };
    pipeline::run(options).expect("the pipeline runs").warnings
}

#[test]
fn a_rule_changed_while_down_keeps_its_alert_and_a_removed_rule_resolves_its_alerts() {
    let s = Scenario::new();
    s.rule("low", LOW_V1).rule("high", HIGH);
    // First run: d1 sags to 0.15 MPa from minute 2 (fires), d2 spikes at minute 3.
    let mut first = readings(0, 6, "d1", |m| if m >= 2 { 0.15 } else { 0.35 });
    first.extend(readings(3, 4, "d2", |_| 0.7));
    first.sort_by_key(|m| m.at_ms);
    let before = run_on_state(&s, first.clone());
    let fired: Vec<&Warning> = before.iter().filter(|w| w.rule == "low").collect();
    assert_eq!(fired.len(), 1, "{before:#?}");
    assert_eq!((fired[0].status, fired[0].transition), (WarningStatus::Firing, 1));
    let high: Vec<&Warning> = before.iter().filter(|w| w.rule == "high").collect();
    assert_eq!(high.len(), 1);

    // While down: `low` changes its threshold (same key), `high` is deleted.
    s.rule("low", LOW_V2);
    std::fs::remove_file(s.path("queries/high.sql")).unwrap();
    // The second run is handed the whole stream again: it skips what the log holds.
    let mut second = first;
    second.extend(readings(6, 12, "d1", |m| if m < 9 { 0.21 } else { 0.35 }));
    let after = run_on_state(&s, second);

    let resolved_high: Vec<&Warning> = after.iter().filter(|w| w.rule == "high").collect();
    assert_eq!(resolved_high.len(), 1, "{after:#?}");
    assert_eq!(resolved_high[0].status, WarningStatus::Resolved);
    assert_eq!(
        (resolved_high[0].alert_id.as_str(), resolved_high[0].transition),
        (high[0].alert_id.as_str(), 2)
    );
    // The changed rule took the firing alert over: 0.21 MPa is a breach for v2, so the alert
    // goes on firing (no new notification) until d1 recovers, then resolves under its id.
    let low: Vec<&Warning> = after.iter().filter(|w| w.rule == "low").collect();
    assert_eq!(low.len(), 1, "{after:#?}");
    assert_eq!(low[0].status, WarningStatus::Resolved);
    assert_eq!(
        (low[0].alert_id.as_str(), low[0].transition),
        (fired[0].alert_id.as_str(), 2)
    );
    assert_eq!(low[0].window_start.as_deref(), Some(common::at(9 * MIN).as_str()));
}

/// A Mosquitto of the test's own, without persistence: restarting it loses every session.
struct ForgetfulMosquitto {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl ForgetfulMosquitto {
    fn start(dir: tempfile::TempDir, port: u16) -> Option<Self> {
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\n")).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(ForgetfulMosquitto { dir, port, child })
    }

    fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        ForgetfulMosquitto::start(dir, self.port).expect("mosquitto restarts")
    }
}

impl Drop for ForgetfulMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A live run with state for about a second; returns how many lost sessions it saw.
fn live_second(s: &Scenario, port: u16) -> u64 {
    live_second_with(s, port, SinkConfig::default())
}

/// As `live_second`, with these sinks.
fn live_second_with(s: &Scenario, port: u16, sinks: SinkConfig) -> u64 {
    let mut config = Config::default();
    config.rules.dir = s.path("queries");
    config.mqtt.client_id = "cityops-session-test".to_string();
    let url: cityops::BrokerUrl = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
    let source = cityops::MqttSource::new(url, &config).unwrap();
    let metrics = std::sync::Arc::new(cityops::Metrics::new());
    let stop = cityops::Shutdown::new();
    let stopper = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_200));
        stopper.request();
    });
    let options = RunOptions {
        clock: DetectionClock::Wall,
        speed: Speed::Max,
        sinks,
        stop: Some(stop),
        metrics: Some(std::sync::Arc::clone(&metrics)),
        state: Some(StateOptions {
            dir: s.path("state"),
            checkpoint_interval: Duration::from_secs(10),
        }),
        ..common::options(config, Source::Mqtt(Box::new(source)), &s.path("dead-letters.jsonl"))
    };
    pipeline::run(options).expect("the live run ends cleanly");
    metrics.state.session_lost.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_broker_that_lost_the_session_is_detected_and_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(broker) = ForgetfulMosquitto::start(tempfile::tempdir().unwrap(), port) else {
        println!("skipped: no mosquitto binary (.ci/run installs it)");
        return;
    };
    let s = Scenario::new();
    s.rule("high", HIGH);
    assert_eq!(live_second(&s, port), 0, "a fresh state directory expects no session");
    // The broker still holds the session: nothing lost.
    assert_eq!(live_second(&s, port), 0, "the broker kept the session");
    // Restarted without persistence, it has forgotten it.
    let _broker = broker.restart();
    assert_eq!(live_second(&s, port), 1, "the lost session is counted");
}

/// The retained messages under `filter`, as (topic, payload), read for about a second.
fn retained(port: u16, filter: &str) -> Vec<(String, Vec<u8>)> {
    let mut options = rumqttc::MqttOptions::new("state-test-reader", "127.0.0.1", port);
    options.set_clean_session(true);
    let (client, mut connection) = rumqttc::Client::new(options, 64);
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
    let mut found = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
            connection.recv_timeout(Duration::from_millis(100))
            && p.retain
            && !p.payload.is_empty()
        {
            found.push((p.topic.clone(), p.payload.to_vec()));
        }
    }
    found
}

#[test]
fn a_stale_retained_state_is_cleared_at_the_first_checkpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(_broker) = ForgetfulMosquitto::start(tempfile::tempdir().unwrap(), port) else {
        println!("skipped: no mosquitto binary (.ci/run installs it)");
        return;
    };
    // A state a crashed run without state left behind: firing forever.
    let mut options = rumqttc::MqttOptions::new("state-test-ghost", "127.0.0.1", port);
    options.set_clean_session(true);
    let (client, mut connection) = rumqttc::Client::new(options, 8);
    let ghost = json!({"alert_id": "0000000000000000", "status": "firing"}).to_string();
    client
        .publish("heal/state/high/xicheng/d9", rumqttc::QoS::AtLeastOnce, true, ghost)
        .unwrap();
    for event in connection.iter() {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = event {
            break;
        }
    }
    assert_eq!(retained(port, "heal/state/#").len(), 1, "the stale state is there");

    let s = Scenario::new();
    s.rule("high", HIGH);
    let url: cityops::BrokerUrl = format!("mqtt://127.0.0.1:{port}").parse().unwrap();
    let mut mqtt = Config::default().mqtt;
    mqtt.client_id = "cityops-heal".to_string();
    mqtt.warnings_prefix = "heal".to_string();
    let sinks = SinkConfig {
        mqtt: Some((url, mqtt)),
        ..SinkConfig::default()
    };
    live_second_with(&s, port, sinks);
    assert_eq!(
        retained(port, "heal/state/#"),
        Vec::new(),
        "the stale state was cleared"
    );
}
