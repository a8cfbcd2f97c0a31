//! The example deployment (`docs/deploy/cityops.toml`, the config of
//! `docs/deploy/cityops.service`) as a service manager runs it: a copy with its absolute paths
//! moved into a temporary directory and its ports onto free ones starts a live run against
//! the in-process rumqttd, becomes ready on `/health/ready`, stops cleanly on SIGTERM with
//! exit 0 and its summary, and logs only JSON objects on stderr, as the config asks.
//!
//! The rewrite replaces the example's exact values and asserts each was there, so this test
//! fails loudly when the example changes under it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy/cityops.toml");
const QUERIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/queries");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn toml_path(path: &Path) -> String {
    let text = path.to_str().expect("a UTF-8 temp path");
    assert!(!text.contains('\''), "{text}");
    format!("'{text}'")
}

/// Replaces `from` (which must occur exactly once) with `to`.
fn replace_once(text: &mut String, from: &str, to: &str) {
    assert_eq!(
        text.matches(from).count(),
        1,
        "docs/deploy/cityops.toml no longer has `{from}` exactly once; update tests/service.rs with it"
    );
    *text = text.replacen(from, to, 1);
}

/// Every string value of a TOML document, with its dotted key.
fn strings(value: &toml::Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::String(s) => out.push((at.to_string(), s.clone())),
        toml::Value::Table(table) => {
            for (key, value) in table {
                strings(value, &format!("{at}.{key}"), out);
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|v| strings(v, at, out)),
        _ => {}
    }
}

/// `GET path` over HTTP/1.0: (status, body), or `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string();
    Some((status, body))
}

/// Collects a child's output on a thread, so a full pipe never stalls it.
fn collect(mut from: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, handle)
}

/// Kills the run if the test fails before it has stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_example_deployment_config_starts_a_live_run() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (http_port, webhook_port) = (free_port(), free_port());
    let broker = common::rumqttd();

    let mut config = std::fs::read_to_string(EXAMPLE).expect("docs/deploy/cityops.toml");
    replace_once(&mut config, "\"/etc/cityops/queries\"", &toml_path(Path::new(QUERIES)));
    replace_once(
        &mut config,
        "\"/var/lib/cityops/state\"",
        &toml_path(&tmp.path().join("state")),
    );
    replace_once(
        &mut config,
        "\"/var/lib/cityops/spool\"",
        &toml_path(&tmp.path().join("spool")),
    );
    replace_once(
        &mut config,
        "bind = \"127.0.0.1:9900\"",
        &format!("bind = \"127.0.0.1:{http_port}\""),
    );
    // Nothing listens there: nothing fires in this run, and whatever did would stay spooled.
    replace_once(
        &mut config,
        "url = \"http://127.0.0.1:9093/api/v2/alerts\"",
        &format!("url = \"http://127.0.0.1:{webhook_port}/api/v2/alerts\""),
    );
    replace_once(&mut config, "drain_on_exit = \"5s\"", "drain_on_exit = \"1s\"");

    // What the example must keep saying, and no path of the real machine left behind.
    let parsed: toml::Table = toml::from_str(&config).expect("the rewritten example is TOML");
    assert_eq!(parsed["log"]["format"].as_str(), Some("json"), "{config}");
    assert_eq!(parsed["mqtt"]["client_id"].as_str(), Some(""), "{config}");
    assert_eq!(parsed["mqtt"]["qos"].as_integer(), Some(1), "{config}");
    assert_eq!(parsed["mqtt"]["clean_session"].as_bool(), Some(false), "{config}");
    assert_eq!(parsed["webhook"]["format"].as_str(), Some("alertmanager"), "{config}");
    let mut values = Vec::new();
    strings(&toml::Value::Table(parsed.clone()), "", &mut values);
    for (key, value) in &values {
        assert!(
            !value.contains("/var/lib/cityops") && !value.contains("/etc/cityops"),
            "{key} = {value:?} was not moved into the temp dir"
        );
    }
    let config_path = tmp.path().join("cityops.toml");
    std::fs::write(&config_path, &config).expect("config written");

    let child = Command::new(env!("CARGO_BIN_EXE_cityops"))
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .arg("--mqtt")
        .arg(format!("mqtt://127.0.0.1:{}", broker.port()))
        .arg("--quiet")
        .arg("--dead-letter")
        .arg(tmp.path().join("dead.jsonl"))
        .current_dir(tmp.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cityops starts");
    let mut run = Running(child);
    let (stdout, stdout_reader) = collect(run.0.stdout.take().unwrap());
    let (stderr, stderr_reader) = collect(run.0.stderr.take().unwrap());

    // Ready: rules loaded, (empty) state recovered, connected and subscribed.
    let started = Instant::now();
    let body = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            panic!(
                "cityops ended before it was ready ({status}):\n{}",
                stderr.lock().unwrap()
            );
        }
        match http_get(http_port, "/health/ready") {
            Some((200, body)) => break body,
            other => assert!(
                started.elapsed() < Duration::from_secs(20),
                "/health/ready never answered 200 (last: {other:?}):\n{}",
                stderr.lock().unwrap()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ready: Value = serde_json::from_str(&body).expect("/health/ready is JSON");
    assert_eq!(ready["ready"], true, "{body}");
    assert_eq!(ready["checks"]["rules_loaded"], true, "{body}");
    assert_eq!(ready["checks"]["recovered"], true, "{body}");
    assert_eq!(ready["checks"]["broker_connected"], true, "{body}");

    let signalled = Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "no clean stop on SIGTERM:\n{}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stdout_reader.join().unwrap();
    stderr_reader.join().unwrap();
    let (stdout, stderr) = (stdout.lock().unwrap().clone(), stderr.lock().unwrap().clone());
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("cityops summary"), "{stdout}");

    // `[log] format = "json"`: every stderr line is one JSON object.
    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}\n{stderr}"));
        assert!(entry.is_object(), "{line}");
        for field in ["timestamp", "level", "target"] {
            assert!(entry.get(field).is_some(), "no `{field}` in {line}");
        }
        let message = entry
            .get("message")
            .or_else(|| entry.get("fields").and_then(|f| f.get("message")));
        assert!(message.is_some(), "no message in {line}");
        messages.push(message.and_then(Value::as_str).unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m.contains("stopping on SIGTERM")), "{stderr}");
    assert!(
        messages.iter().any(|m| m.contains("reading live telemetry")),
        "{stderr}"
    );
}
