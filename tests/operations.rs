//! Operators acting on warnings through the HTTP API of a running pipeline: acknowledge,
//! assign, comment and close with an operator's token, refused without one (nothing
//! changes), every refusal a clear 4xx, and the alert's history in order with its
//! operators. The retained MQTT state and `/api/warnings` show the acknowledgement.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use cityops::pipeline::{self, RunOptions, Source};
use cityops::{DurationMs, Message};
use common::T0;
use serde_json::{Value, json};

pub const TOKEN: &str = "li-token-0001";

fn gas(device: &str, second: i64, value: f64) -> Message {
    let payload = json!({"ts": T0 + second * 1_000, "kind": "gas_lel", "value": value, "unit": "%LEL"});
    Message {
        at_ms: second * 1_000,
        topic: format!("city/xicheng/sensor/{device}"),
        payload: payload.to_string().into_bytes().into(),
        ..Message::default()
    }
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// A request; returns the status and the body as JSON (Null when empty or not JSON); status 0
/// when nothing answers (yet).
fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (_, body) => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            match body {
                Some(b) => r.header("Content-Type", "application/json").send(b.to_string()),
                None => r.send_empty(),
            }
        }
    };
    let Ok(mut response) = response else {
        return (0, Value::Null);
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until `/api/alerts` lists an alert for `device` passing `test`; returns it.
fn alert_of(base: &str, device: &str, test: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (_, body) = call("GET", &format!("{base}/api/alerts"), None, None);
        if let Some(alert) = body["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"]["device_id"] == device && test(a))
        {
            return alert.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no such alert of {device}: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn operators_acknowledge_assign_comment_and_close_with_a_token_and_nothing_changes_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let base = format!("http://{addr}");
    let config = common::operator_config(&addr, TOKEN);
    let (tx, rx) = crossbeam_channel::unbounded();
    let options = RunOptions {
        ..common::options(config, Source::Channel(rx), &dir.path().join("dead-letters.jsonl"))
    };
    let run = std::thread::spawn(move || pipeline::run(options).expect("the pipeline runs"));
    tx.send(gas("gas-7", 0, 60.0)).unwrap();
    let alert = alert_of(&base, "gas-7", |a| a["firing"] == true);
    let id = alert["alert_id"].as_str().unwrap().to_string();
    let act = |verb: &str, token: Option<&str>, body: Option<Value>| {
        call("POST", &format!("{base}/api/alerts/{id}/{verb}"), token, body)
    };

    // Without a token, or with a wrong one: 401, and nothing changed.
    assert_eq!(act("ack", None, None).0, 401);
    assert_eq!(act("ack", Some("guess-guess"), None).0, 401);
    assert_eq!(act("assign", None, Some(json!({"to": "x"}))).0, 401);
    let (_, history) = call("GET", &format!("{base}/api/alerts/{id}/history"), None, None);
    assert_eq!(history["history"].as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history["acknowledged"], Value::Null);

    // Validation: unknown alert, bad body, missing field, oversized text, unknown verb.
    let unknown = call(
        "POST",
        &format!("{base}/api/alerts/0000000000000000/ack"),
        Some(TOKEN),
        None,
    );
    assert_eq!(unknown.0, 404, "{}", unknown.1);
    assert_eq!(act("ack", Some(TOKEN), Some(json!(["not", "an", "object"]))).0, 400);
    assert_eq!(act("assign", Some(TOKEN), Some(json!({}))).0, 400);
    assert_eq!(
        act("comment", Some(TOKEN), Some(json!({"text": "x".repeat(3000)}))).0,
        413
    );
    assert_eq!(act("snooze", Some(TOKEN), None).0, 404);
    // Closing a firing alert is a conflict.
    assert_eq!(act("close", Some(TOKEN), None).0, 409);

    let (status, body) = act("ack", Some(TOKEN), Some(json!({"comment": "crew dispatched"})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alert"]["acknowledged"]["by"], "li");
    assert_eq!(act("ack", Some(TOKEN), None).0, 409, "already acknowledged");
    assert_eq!(
        act("assign", Some(TOKEN), Some(json!({"to": "xicheng gas unit"}))).0,
        200
    );
    assert_eq!(
        act("comment", Some(TOKEN), Some(json!({"text": "valve closed"}))).0,
        200
    );
    // The dashboard's view of what fires shows the marks.
    let (_, board) = call("GET", &format!("{base}/api/warnings"), None, None);
    let shown = board["firing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["alert_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(shown["acknowledged"]["by"], "li", "{shown}");
    assert_eq!(shown["assigned_to"], "xicheng gas unit");

    // Three clean readings resolve it (resolve: 3); then it can be closed.
    for second in 1..=3 {
        tx.send(gas("gas-7", second, 0.5)).unwrap();
    }
    alert_of(&base, "gas-7", |a| a["firing"] == false);
    let (status, body) = act(
        "close",
        Some(TOKEN),
        Some(json!({"feedback": "leak fixed, pipe replaced"})),
    );
    assert_eq!(status, 200, "{body}");

    let (_, history) = call("GET", &format!("{base}/api/alerts/{id}/history"), None, None);
    let events: Vec<(String, String, String)> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("event"), text("by"), text("detail"))
        })
        .collect();
    let event = |e: &str, by: &str, detail: &str| (e.to_string(), by.to_string(), detail.to_string());
    assert_eq!(
        events,
        vec![
            event("fired", "", ""),
            event("acknowledged", "li", "crew dispatched"),
            event("assigned", "li", "xicheng gas unit"),
            event("commented", "li", "valve closed"),
            event("resolved", "", ""),
            event("closed", "li", "leak fixed, pipe replaced"),
        ]
    );
    assert_eq!(history["closed"], true);
    // Each event has its time, in order.
    let times: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["at"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // The response statistics count it: acknowledged and resolved, no deadline passed (a
    // replay's clock runs no deadlines), 4 accepted actions.
    let (_, stats) = call("GET", &format!("{base}/api/stats"), None, None);
    let all = &stats["response"]["since_start"]["all"];
    assert_eq!(
        (
            &all["fired"],
            &all["acknowledged"],
            &all["acknowledged_in_time"],
            &all["resolved"],
            &all["resolved_in_time"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(1), &json!(1)),
        "{stats}"
    );
    assert_eq!(
        stats["response"]["since_start"]["by_level"]["red"]["response_rate"],
        1.0
    );
    let page = ureq::get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for line in [
        "cityops_operator_actions_total 4",
        "cityops_escalations_total 0",
        "cityops_response_rate{window=\"since_start\",level=\"red\"} 1",
        "cityops_alerts_firing 0",
    ] {
        assert!(page.lines().any(|l| l == line), "no `{line}` on /metrics");
    }

    drop(tx);
    let outcome = run.join().unwrap();
    // The notifications themselves: fired (no marks) and resolved (with the marks of the time).
    let gas7: Vec<&cityops::Warning> = outcome
        .warnings
        .iter()
        .filter(|w| w.key["device_id"] == "gas-7")
        .collect();
    assert_eq!(gas7.len(), 2);
    assert!(gas7[0].marks.acknowledged.is_none());
    assert_eq!(gas7[1].marks.acknowledged.as_ref().map(|a| a.by.as_str()), Some("li"));
    assert_eq!(gas7[1].marks.assigned_to.as_deref(), Some("xicheng gas unit"));
}

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cityops run` on a live broker with a state directory, one operator from the environment.
fn start_cityops(broker: std::net::SocketAddr, state: &std::path::Path, addr: &str) -> Killed {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cityops"))
        .args(["run", "--quiet"])
        .arg(format!("--mqtt=mqtt://{broker}"))
        .arg(format!("--state={}", state.display()))
        .arg(format!("--http={addr}"))
        .arg(format!("--queries={}", concat!(env!("CARGO_MANIFEST_DIR"), "/queries")))
        .arg(format!(
            "--dead-letter={}",
            state.with_extension("dead.jsonl").display()
        ))
        .env("CITYOPS_OPERATOR", format!("li:{TOKEN}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

#[test]
fn acknowledgements_and_silences_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let broker = common::rumqttd();
    let addr = free_addr();
    let base = format!("http://{addr}");
    let cityops = start_cityops(broker, &state, &addr);
    let started = Instant::now();
    while call("GET", &format!("{base}/health/ready"), None, None).0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "cityops did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut options = rumqttc::MqttOptions::new("operations-test-pub", broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    std::thread::spawn(move || for _ in connection.iter() {});
    let reading = json!({"ts": cityops::time::wall_now_ms(), "kind": "gas_lel", "value": 60.0, "unit": "%LEL"});
    client
        .publish(
            "city/xicheng/sensor/gas-9",
            rumqttc::QoS::AtLeastOnce,
            false,
            reading.to_string(),
        )
        .unwrap();
    let alert = alert_of(&base, "gas-9", |a| a["firing"] == true);
    let id = alert["alert_id"].as_str().unwrap().to_string();
    let (status, body) = call(
        "POST",
        &format!("{base}/api/alerts/{id}/ack"),
        Some(TOKEN),
        Some(json!({"comment": "crew dispatched"})),
    );
    assert_eq!(status, 200, "{body}");
    let now = cityops::time::wall_now_ms();
    let silence = json!({
        "matchers": [{"name": "device_id", "value": "gas-10", "isRegex": false, "isEqual": true}],
        "startsAt": cityops::time::format_ms(now),
        "endsAt": cityops::time::format_ms(now + 3_600_000),
        "createdBy": "li",
        "comment": "detector replaced tonight",
    });
    let (status, body) = call("POST", &format!("{base}/api/v2/silences"), Some(TOKEN), Some(silence));
    assert_eq!(status, 200, "{body}");
    let silence_id = body["silenceID"].as_str().unwrap().to_string();

    // SIGKILL: no shutdown, no checkpoint; the answers above were already durable.
    drop(cityops);
    let _cityops = start_cityops(broker, &state, &addr);
    let alert = alert_of(&base, "gas-9", |a| a["alert_id"] == id.as_str());
    assert_eq!(alert["acknowledged"]["by"], "li", "{alert}");
    let (_, history) = call("GET", &format!("{base}/api/alerts/{id}/history"), None, None);
    let events: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["fired", "acknowledged"], "{history}");
    let (_, silences) = call("GET", &format!("{base}/api/v2/silences"), None, None);
    assert_eq!(silences.as_array().unwrap().len(), 1, "{silences}");
    assert_eq!(silences[0]["id"], silence_id.as_str());
    assert_eq!(silences[0]["status"]["state"], "active");
    assert_eq!(silences[0]["comment"], "detector replaced tonight");
}

/// On the wall clock of a live run, a red alert nobody acknowledges within its deadline is
/// escalated exactly once, on its own MQTT topic; one acknowledged in time never is.
#[test]
fn a_live_deadline_escalates_an_unacknowledged_alert_once_on_its_own_topic() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let base = format!("http://{addr}");
    let broker = common::rumqttd();
    let mut options = rumqttc::MqttOptions::new("escalation-test-sub", broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(options, 100);
    client
        .subscribe("escalation-warnings/escalations/#", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let escalations = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let (subscribed_tx, subscribed) = crossbeam_channel::bounded(1);
    let sink = std::sync::Arc::clone(&escalations);
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = subscribed_tx.try_send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    sink.lock().unwrap().push(serde_json::from_slice(&p.payload).unwrap());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    subscribed.recv_timeout(Duration::from_secs(10)).expect("subscribed");

    let mut config = common::operator_config(&addr, TOKEN);
    config.operations.red.acknowledge = DurationMs(3_000);
    config.mqtt.warnings_prefix = "escalation-warnings".into();
    config.mqtt.client_id = "escalation-test".into();
    let url = cityops::BrokerUrl {
        host: broker.ip().to_string(),
        port: broker.port(),
        tls: false,
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let options = RunOptions {
        sinks: cityops::SinkConfig {
            collect: true,
            mqtt: Some((url, config.mqtt.clone())),
            ..cityops::SinkConfig::default()
        },
        clock: cityops::DetectionClock::Wall,
        ..common::options(config, Source::Channel(rx), &dir.path().join("dead-letters.jsonl"))
    };
    let run = std::thread::spawn(move || pipeline::run(options).expect("the pipeline runs"));
    let now = cityops::time::wall_now_ms();
    let live = |device: &str| {
        let payload = json!({"ts": now, "kind": "gas_lel", "value": 60.0, "unit": "%LEL"});
        Message {
            topic: format!("city/xicheng/sensor/{device}"),
            payload: payload.to_string().into_bytes().into(),
            ..Message::default()
        }
    };
    tx.send(live("gas-5")).unwrap();
    tx.send(live("gas-6")).unwrap();
    let acked = alert_of(&base, "gas-6", |a| a["firing"] == true);
    let id = acked["alert_id"].as_str().unwrap();
    let (status, body) = call("POST", &format!("{base}/api/alerts/{id}/ack"), Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    while escalations.lock().unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no escalation");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Deadlines run each second: three more seconds give any second escalation its chance.
    std::thread::sleep(Duration::from_secs(3));
    let seen = escalations.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["key"]["device_id"], "gas-5");
    assert_eq!(seen[0]["status"], "escalated");
    assert_eq!(seen[0]["escalation"], "acknowledge");
    let (_, history) = call(
        "GET",
        &format!("{base}/api/alerts/{}/history", seen[0]["alert_id"].as_str().unwrap()),
        None,
        None,
    );
    let events: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["fired", "escalated"], "{history}");
    drop(tx);
    let outcome = run.join().unwrap();
    let escalated: Vec<_> = outcome
        .warnings
        .iter()
        .filter(|w| w.status == cityops::WarningStatus::Escalated)
        .collect();
    assert_eq!(escalated.len(), 1);
}
