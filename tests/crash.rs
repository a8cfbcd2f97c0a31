//! Crash recovery end to end: `cityops run --state DIR`, killed with SIGKILL at seeded points
//! of a live MQTT stream and restarted each time with the same arguments, ends with exactly
//! the notifications of an uninterrupted run on the same input.
//!
//! Both runs read the same generated city (`cityops gen`, plus three gas detectors left
//! firing at the end, so the retained state is not empty) from a Mosquitto of the test's
//! own, and write to every sink: JSON Lines, a webhook receiver and the MQTT warning topics.
//! The baseline runs once, uninterrupted. The crash run is killed twice while live (delays
//! drawn from a seeded PRNG, printed; `CITYOPS_CRASH_SEED` repeats them) and once in the
//! middle of its recovery (after `recovering from`, before `recovered in`);
//! messages published while it is dead wait in its persistent broker session. A final start
//! runs until its idle exit. Both runs use `--state`, so the end of input closes no windows
//! and the two must agree exactly. For each sink, with a notification's identity being
//! (`alert_id`, `transition`):
//! - the crash run has the same set of identities as the baseline: nothing lost;
//! - no identity the baseline lacks: nothing sent again under a new identity;
//! - every notification equals the baseline's of the same identity (wall-clock fields
//!   `detected_at` and `latency_ms` aside); a duplicate is allowed only with the same
//!   identity and content, and is counted;
//! - the retained states under `<prefix>/state/#` name the same alerts on the same topics.
//!
//! Without a `mosquitto` binary the test says it skipped (`.ci/run` installs one).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_cityops");
/// The shipped rules.
const QUERIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/queries");

/// Logged (tracing, info) when the live source's first connection is acknowledged.
const CONNECTED: &str = "mqtt connected";
/// Printed on stderr before a start with state replays its log...
const RECOVERING: &str = "recovering from";
/// ...and once it has.
const RECOVERED: &str = "recovered in";

/// The kill points' seed unless `CITYOPS_CRASH_SEED` gives another (decimal or 0x hex).
const DEFAULT_SEED: u64 = 0x5eed_c1a5_0b5e_0001;
/// Length of the generated recording (`--duration 3h`); 3,600× replays it in ~3 s.
const RECORDING_MS: i64 = 3 * 3_600_000;
/// How long a start may take to load its rules, recover and connect.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a run may take to end by its idle exit once its input is published.
const EXIT_LIMIT: Duration = Duration::from_secs(120);
/// Starts tried for a kill inside recovery before the test gives up.
const RECOVERY_TRIES: usize = 4;

#[test]
fn a_run_killed_anywhere_ends_with_the_notifications_of_an_uninterrupted_run() {
    let Some(broker) = OwnMosquitto::start() else {
        eprintln!("skipped: no mosquitto binary (.ci/run installs it)");
        return;
    };
    let seed = seed();
    println!("crash test: seed {seed:#x} (CITYOPS_CRASH_SEED={seed:#x} repeats these kill points)");
    let mut rng = XorShift::new(seed);
    let delays = [rng.kill_delay(), rng.kill_delay()];

    let dir = tempfile::tempdir().unwrap();
    let fixture = prepare_fixture(dir.path());

    let baseline = baseline_run(broker.addr(), dir.path(), &fixture);
    assert!(
        baseline.jsonl.len() >= 5,
        "the baseline gives too few notifications ({}) for the comparison to mean anything",
        baseline.jsonl.len()
    );
    let (crashed, kills) = crash_run(broker.addr(), dir.path(), &fixture, delays);

    let duplicates = [
        ("jsonl", compare_sink("JSON Lines", &baseline.jsonl, &crashed.jsonl)),
        ("webhook", compare_sink("webhook", &baseline.webhook, &crashed.webhook)),
        (
            "mqtt",
            compare_sink("MQTT warning topics", &baseline.mqtt, &crashed.mqtt),
        ),
    ];
    assert_eq!(
        crashed.retained, baseline.retained,
        "retained alert states (topic without the prefix → alert_id): crash run (left) vs baseline (right)"
    );

    println!(
        "crash test summary: seed {seed:#x}; {} notifications in the baseline, {} retained states",
        baseline.jsonl.len(),
        baseline.retained.len()
    );
    for kill in &kills {
        println!("  {kill}");
    }
    println!(
        "  duplicates after the crashes (same identity and content): {}",
        duplicates
            .iter()
            .map(|(sink, n)| format!("{sink} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The seed of the kill delays: `CITYOPS_CRASH_SEED` (decimal or 0x hex) or the default.
fn seed() -> u64 {
    match std::env::var("CITYOPS_CRASH_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse::<u64>(),
            };
            parsed.unwrap_or_else(|e| panic!("CITYOPS_CRASH_SEED `{text}`: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// xorshift64: a tiny deterministic PRNG for the kill points.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // An all-zero state would stay zero.
        XorShift(if seed == 0 { DEFAULT_SEED } else { seed })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A kill delay in [300 ms, 2500 ms].
    fn kill_delay(&mut self) -> Duration {
        Duration::from_millis(300 + self.next_u64() % 2_201)
    }
}

/// The input, whole (the baseline publishes it at once) and in two parts (the crash run
/// publishes the head while it is being killed, the tail before its final start).
struct Fixture {
    whole: PathBuf,
    head: PathBuf,
    tail: PathBuf,
}

/// Generates a small city (60 devices, 3 h, 6 incidents) and appends three gas detectors at
/// 60 %LEL just after the recording ends: `gas_lel_high` fires red for each at once and
/// nothing resolves them, so both runs end with alerts firing (and retained).
fn prepare_fixture(dir: &Path) -> Fixture {
    let generated = dir.join("generated.jsonl");
    let output = Command::new(BIN)
        .args(["gen", "--devices", "20", "--interval", "60s", "--duration", "3h"])
        .args(["--incidents", "6", "--seed", "7", "--out"])
        .arg(&generated)
        .arg("--labels")
        .arg(dir.join("labels.jsonl"))
        .output()
        .expect("cityops gen runs");
    assert!(
        output.status.success(),
        "cityops gen failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<String> = std::fs::read_to_string(&generated)
        .expect("generated fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        lines.len() > 1_000,
        "the generated fixture has only {} lines",
        lines.len()
    );
    for i in 0..3_i64 {
        let at = RECORDING_MS + (i + 1) * 1_000;
        let payload = json!({"ts": common::T0 + at, "kind": "gas_lel", "value": 60.0, "unit": "%LEL"});
        lines.push(
            json!({"at": at, "topic": format!("city/xicheng/sensor/gas-crash-{i}"), "payload": payload}).to_string(),
        );
    }
    let cut = lines.len() * 9 / 10;
    let write = |name: &str, lines: &[String]| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{}\n", lines.join("\n"))).expect("fixture written");
        path
    };
    Fixture {
        whole: write("whole.jsonl", &lines),
        head: write("head.jsonl", &lines[..cut]),
        tail: write("tail.jsonl", &lines[cut..]),
    }
}

/// What one run's sinks ended with.
struct Outputs {
    /// The JSON Lines file, one warning per line.
    jsonl: Vec<Value>,
    /// The webhook bodies, in arrival order.
    webhook: Vec<Value>,
    /// The warnings on `<prefix>/<level>/<rule>`, each with its topic (minus the prefix)
    /// added as `mqtt_topic`, so the topic is compared too.
    mqtt: Vec<Value>,
    /// Retained alert states: topic without the prefix → alert_id.
    retained: BTreeMap<String, String>,
}

/// The uninterrupted run: starts, takes the whole fixture, ends by its idle exit.
fn baseline_run(broker: SocketAddr, root: &Path, fixture: &Fixture) -> Outputs {
    let hook = WebhookReceiver::start();
    let setup = RunSetup::new(root, "base", broker, &hook.url());
    let watcher = Subscriber::start(broker, "base-watcher", &format!("{}/#", setup.prefix));
    let mut cityops = Instance::start(&setup, "baseline");
    cityops.wait_for(&[CONNECTED], START_LIMIT);
    // The subscription follows the connection's acknowledgement.
    std::thread::sleep(Duration::from_millis(500));
    publish(&fixture.whole, &setup);
    let (status, stderr) = cityops.wait_exit(EXIT_LIMIT);
    assert!(
        status.success(),
        "baseline: cityops ended with {status}; stderr:\n{}",
        stderr.join("\n")
    );
    collect(&setup, &hook, &watcher)
}

/// The crash run: killed twice while live, once during recovery, then run to its idle
/// exit. Returns its outputs and a line per kill.
fn crash_run(broker: SocketAddr, root: &Path, fixture: &Fixture, delays: [Duration; 2]) -> (Outputs, Vec<String>) {
    let hook = WebhookReceiver::start();
    let setup = RunSetup::new(root, "crash", broker, &hook.url());
    let watcher = Subscriber::start(broker, "crash-watcher", &format!("{}/#", setup.prefix));
    let mut kills = Vec::new();

    // Start 1: live; killed `delays[0]` after the publisher began.
    let mut cityops = Instance::start(&setup, "crash start 1");
    cityops.wait_for(&[CONNECTED], START_LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    let publisher = Background::spawn(replay_command(&fixture.head, &setup));
    std::thread::sleep(delays[0]);
    let (how, _) = cityops.kill();
    kills.push(format!(
        "start 1: killed {} ms after the publisher began{how}",
        delays[0].as_millis()
    ));

    // Start 2: recovers, goes live, killed `delays[1]` after connecting.
    let mut cityops = Instance::start(&setup, "crash start 2");
    cityops.wait_for(&[CONNECTED], START_LIMIT);
    cityops.assert_recovered();
    std::thread::sleep(delays[1]);
    let (how, _) = cityops.kill();
    kills.push(format!(
        "start 2: recovered, killed {} ms after connecting{how}",
        delays[1].as_millis()
    ));

    // Start 3: killed as soon as its recovery begins. When recovery was over before the kill
    // (it can take only milliseconds), that start was still killed somewhere, and the next
    // start tries again.
    let mut inside_recovery = None;
    for attempt in 0..RECOVERY_TRIES {
        let label = format!("crash start {}", 3 + attempt);
        let mut cityops = Instance::start(&setup, &label);
        let which = cityops.wait_for(&[RECOVERING, CONNECTED], START_LIMIT);
        let recovered_before_kill = cityops.has_line(RECOVERED);
        let (how, stderr) = cityops.kill();
        let recovered_at_all = stderr.iter().any(|l| l.contains(RECOVERED));
        if which == 0 && !recovered_before_kill && !recovered_at_all {
            kills.push(format!(
                "start {}: killed during recovery (after `{RECOVERING}`, never `{RECOVERED}`){how}",
                3 + attempt
            ));
            inside_recovery = Some(label);
            break;
        }
        kills.push(format!(
            "start {}: meant to be killed during recovery, but recovery had ended (or not begun) by the kill{how}; trying again",
            3 + attempt
        ));
    }
    assert!(
        inside_recovery.is_some(),
        "none of {RECOVERY_TRIES} starts could be killed inside its recovery (the `{RECOVERED}` line had always \
         been written by the time of the kill), so this test would not prove that a kill during recovery is \
         survived; kills so far:\n{}",
        kills.join("\n")
    );

    // The rest of the input goes to the broker while no cityops runs: the final start finds
    // messages waiting in its session, so its idle exit (counted from a first message)
    // always comes.
    let output = publisher.wait();
    assert!(
        output.status.success(),
        "the publisher of the head failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    publish(&fixture.tail, &setup);

    let mut cityops = Instance::start(&setup, "crash final start");
    cityops.wait_for(&[CONNECTED], START_LIMIT);
    cityops.assert_recovered();
    let (status, stderr) = cityops.wait_exit(EXIT_LIMIT);
    assert!(
        status.success(),
        "crash run: the final start ended with {status}; stderr:\n{}",
        stderr.join("\n")
    );
    kills.push("final start: recovered and ended by its idle exit".to_string());
    (collect(&setup, &hook, &watcher), kills)
}

/// Reads what a finished run's sinks hold.
fn collect(setup: &RunSetup, hook: &WebhookReceiver, watcher: &Subscriber) -> Outputs {
    let prefix = &setup.prefix;
    let state = format!("{prefix}/state/");
    let mqtt = watcher
        .settle(Duration::from_secs(1), Duration::from_secs(10))
        .into_iter()
        .filter(|(topic, _)| topic.starts_with(&format!("{prefix}/")) && !topic.starts_with(&state))
        .map(|(topic, payload)| {
            let mut warning: Value = serde_json::from_slice(&payload).unwrap_or_else(|e| {
                panic!(
                    "{topic}: not a warning JSON ({e}): {}",
                    String::from_utf8_lossy(&payload)
                )
            });
            assert!(warning.is_object(), "{topic}: not a JSON object: {warning}");
            let topic = topic[prefix.len()..].to_string();
            warning
                .as_object_mut()
                .unwrap()
                .insert("mqtt_topic".to_string(), Value::String(topic));
            warning
        })
        .collect();
    Outputs {
        jsonl: read_jsonl(&setup.jsonl()),
        webhook: hook.settle(Duration::from_millis(500), Duration::from_secs(10)),
        mqtt,
        retained: retained_states(setup.broker, prefix),
    }
}

/// Every line of a JSON Lines file, parsed; a torn or bad line fails the test.
fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{} line {}: not JSON ({e}): {line}", path.display(), n + 1))
        })
        .collect()
}

/// The retained alert states a console connecting now sees: topic without the prefix →
/// alert_id (empty retained messages are cleared states and do not count).
fn retained_states(broker: SocketAddr, prefix: &str) -> BTreeMap<String, String> {
    let console = Subscriber::start(broker, &format!("{prefix}-console"), &format!("{prefix}/state/#"));
    console
        .settle(Duration::from_secs(1), Duration::from_secs(5))
        .into_iter()
        .filter(|(_, payload)| !payload.is_empty())
        .map(|(topic, payload)| {
            let state: Value = serde_json::from_slice(&payload)
                .unwrap_or_else(|e| panic!("{topic}: retained state is not JSON ({e})"));
            let alert_id = state["alert_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{topic}: retained state without alert_id: {state}"))
                .to_string();
            (topic[prefix.len()..].to_string(), alert_id)
        })
        .collect()
}

/// One sink's notifications by identity (alert_id, transition).
#[derive(Default)]
struct Indexed {
    by_identity: BTreeMap<(String, u32), Value>,
    /// Notifications whose identity came before with the same content.
    duplicates: usize,
    /// Notifications whose identity came before with other content.
    conflicts: Vec<String>,
}

/// Indexes notifications by identity, normalized (see `normalized`).
fn index(sink: &str, notifications: &[Value]) -> Indexed {
    let mut indexed = Indexed::default();
    for notification in notifications {
        let alert_id = notification["alert_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{sink}: a notification without alert_id: {notification}"))
            .to_string();
        let transition = notification["transition"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or_else(|| panic!("{sink}: a notification without a u32 transition: {notification}"));
        let content = normalized(notification);
        match indexed.by_identity.entry((alert_id, transition)) {
            Entry::Vacant(slot) => {
                slot.insert(content);
            }
            Entry::Occupied(slot) if *slot.get() == content => indexed.duplicates += 1,
            Entry::Occupied(slot) => indexed.conflicts.push(format!(
                "{:?}:\n  first: {}\n  again: {content}",
                slot.key(),
                slot.get()
            )),
        }
    }
    indexed
}

/// A notification without its wall-clock fields (`detected_at`, `latency_ms`), floats
/// rounded to 9 significant digits (a recomputed aggregate may differ in the last bits).
fn normalized(notification: &Value) -> Value {
    let mut value = notification.clone();
    if let Some(object) = value.as_object_mut() {
        object.remove("detected_at");
        object.remove("latency_ms");
    }
    round_floats(&mut value);
    value
}

fn round_floats(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            let rounded: f64 = format!("{f:.8e}").parse().unwrap_or(f);
            *value = json!(rounded);
        }
        Value::Array(items) => items.iter_mut().for_each(round_floats),
        Value::Object(map) => map.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// Checks one sink of the crash run against the baseline's: the same identities, none
/// new, each with the baseline's content. Returns the crash run's duplicates.
fn compare_sink(sink: &str, baseline: &[Value], crashed: &[Value]) -> usize {
    let base = index(&format!("{sink}, baseline"), baseline);
    let crash = index(&format!("{sink}, crash run"), crashed);
    assert!(
        base.conflicts.is_empty(),
        "{sink}: the uninterrupted run sent one identity with two contents:\n{}",
        base.conflicts.join("\n")
    );
    assert!(
        crash.conflicts.is_empty(),
        "{sink}: after the crashes an identity was sent again with other content:\n{}",
        crash.conflicts.join("\n")
    );
    let base_ids: BTreeSet<&(String, u32)> = base.by_identity.keys().collect();
    let crash_ids: BTreeSet<&(String, u32)> = crash.by_identity.keys().collect();
    let new: Vec<String> = crash_ids
        .difference(&base_ids)
        .map(|id| format!("{id:?}: {}", crash.by_identity[*id]))
        .collect();
    assert!(
        new.is_empty(),
        "{sink}: the crash run sent {} notification(s) with an identity the uninterrupted run never had:\n{}",
        new.len(),
        new.join("\n")
    );
    let lost: Vec<String> = base_ids
        .difference(&crash_ids)
        .map(|id| format!("{id:?}: {}", base.by_identity[*id]))
        .collect();
    assert!(
        lost.is_empty(),
        "{sink}: {} notification(s) of the uninterrupted run are missing after the crashes:\n{}",
        lost.len(),
        lost.join("\n")
    );
    for (id, content) in &crash.by_identity {
        assert_eq!(
            content, &base.by_identity[id],
            "{sink}: notification {id:?} of the crash run (left) differs from the uninterrupted run's (right)"
        );
    }
    if base.duplicates > 0 {
        println!("{sink}: the baseline itself had {} duplicate(s)", base.duplicates);
    }
    crash.duplicates
}

/// One cityops run's names and files: the arguments every start of the run repeats.
struct RunSetup {
    dir: PathBuf,
    broker: SocketAddr,
    /// `[mqtt] warnings_prefix`.
    prefix: String,
    webhook: String,
}

impl RunSetup {
    /// Creates `<root>/<name>/` with the run's config (`client_id` and prefix from `name`,
    /// its own spool, a checkpoint every second, no rule reload) and the publisher's.
    fn new(root: &Path, name: &str, broker: SocketAddr, webhook: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let setup = RunSetup {
            dir,
            broker,
            prefix: format!("{name}-warnings"),
            webhook: webhook.to_string(),
        };
        std::fs::write(
            setup.config(),
            format!(
                r#"[mqtt]
client_id = "cityops-{name}"
warnings_prefix = "{prefix}"

[webhook]
spool_dir = "{spool}"
max_backoff = "500ms"
drain_on_exit = "10s"

[rules]
reload_interval = "0s"

[state]
checkpoint_interval = "1s"
"#,
                prefix = setup.prefix,
                spool = setup.dir.join("spool").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            setup.publisher_config(),
            format!("[mqtt]\nclient_id = \"publisher-{name}\"\n"),
        )
        .unwrap();
        setup
    }

    fn config(&self) -> PathBuf {
        self.dir.join("cityops.toml")
    }

    /// The replay publisher's config: only its own client id.
    fn publisher_config(&self) -> PathBuf {
        self.dir.join("publisher.toml")
    }

    fn jsonl(&self) -> PathBuf {
        self.dir.join("warnings.jsonl")
    }

    /// `cityops run` with every sink, state, idle exit; info logs on stderr.
    fn command(&self) -> Command {
        let url = format!("mqtt://{}", self.broker);
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .arg("--mqtt")
            .arg(&url)
            .arg("--state")
            .arg(self.dir.join("state"))
            .arg("--queries")
            .arg(QUERIES)
            .arg("--config")
            .arg(self.config())
            .arg("--jsonl")
            .arg(self.jsonl())
            .arg("--dead-letter")
            .arg(self.dir.join("dead-letters.jsonl"))
            .arg("--warnings-mqtt")
            .arg(&url)
            .arg("--webhook")
            .arg(&self.webhook)
            .args(["--idle-exit", "3s", "--no-http", "--quiet"])
            .env("RUST_LOG", "cityops=info,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }
}

/// `cityops replay FIXTURE` to the run's broker, QoS 1, at 3,600× recorded speed.
fn replay_command(fixture: &Path, setup: &RunSetup) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("replay")
        .arg(fixture)
        .arg("--to-mqtt")
        .arg(format!("mqtt://{}", setup.broker))
        .args(["--speed", "3600", "--qos", "1", "--config"])
        .arg(setup.publisher_config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Publishes a fixture and waits until the broker has acknowledged all of it.
fn publish(fixture: &Path, setup: &RunSetup) {
    let output = replay_command(fixture, setup).output().expect("cityops replay runs");
    assert!(
        output.status.success(),
        "publishing {} failed ({}): {}",
        fixture.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A child process running in the background, killed if the test ends first.
struct Background(Option<Child>);

impl Background {
    fn spawn(mut command: Command) -> Self {
        Background(Some(command.spawn().expect("background process starts")))
    }

    /// Waits for it to end by itself.
    fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One start of `cityops run`, its stderr read line by line by a thread: each line goes to
/// a channel (for waiting on it) and to a list (for reports).
struct Instance {
    label: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Instance {
    fn start(setup: &RunSetup, label: &str) -> Self {
        let mut child = setup.command().spawn().expect("cityops starts");
        let pipe = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let all = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match pipe.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        all.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                }
            }
        });
        Instance {
            label: label.to_string(),
            child: Some(child),
            lines,
            stderr,
            reader: Some(reader),
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Whether a stderr line read so far contains `needle`.
    fn has_line(&self, needle: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for the next stderr line containing one of `needles`; returns which. Fails
    /// when the process ends first or `limit` passes.
    fn wait_for(&mut self, needles: &[&str], limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                        return i;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no stderr line with {needles:?} within {limit:?}; stderr so far:\n{}",
                    self.label,
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "{}: cityops ended ({status:?}) before a stderr line with {needles:?}; stderr:\n{}",
                        self.label,
                        self.stderr_text()
                    )
                }
            }
        }
    }

    /// Checks the start recovered from its state directory before going live.
    fn assert_recovered(&self) {
        assert!(
            self.has_line(RECOVERING) && self.has_line(RECOVERED),
            "{}: went live without `{RECOVERING}` and `{RECOVERED}` on stderr:\n{}",
            self.label,
            self.stderr_text()
        );
    }

    /// SIGKILL; returns a note when it had already ended by itself, and its whole stderr.
    fn kill(mut self) -> (String, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let status = child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let how = match status.signal() {
            Some(9) => String::new(),
            _ => format!(" (it had already ended by itself: {status})"),
        };
        (how, self.stderr.lock().unwrap().clone())
    }

    /// Waits (at most `limit`) for it to end by itself; returns its status and stderr.
    fn wait_exit(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: cityops did not end by its idle exit within {limit:?}; stderr:\n{}",
                    self.label,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.stderr.lock().unwrap().clone())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Mosquitto of the test's own on a free port: sessions in memory (persistent sessions
/// keep QoS 1 messages for a client while it is down), no queue limit.
struct OwnMosquitto {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl OwnMosquitto {
    /// `None` when the machine has no `mosquitto` binary.
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 100\n"
            ),
        )
        .unwrap();
        let child = match Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("cannot start mosquitto: {e}"),
        };
        let mut broker = OwnMosquitto { _dir: dir, port, child };
        let started = Instant::now();
        while TcpStream::connect(broker.addr()).is_err() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("mosquitto ended ({status}) before listening on port {port}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(broker)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message a subscriber received: topic, payload.
type Received = (String, Vec<u8>);

/// A QoS 1 subscriber collecting what it receives until dropped.
struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    client: Client,
}

impl Subscriber {
    /// Connects and subscribes; returns once the broker granted the subscription.
    fn start(broker: SocketAddr, id: &str, filter: &str) -> Self {
        let mut options = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        options
            .set_max_packet_size(1 << 24, 1 << 24)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(options, 100);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let (subscribed_tx, subscribed) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{id}: not subscribed to {filter}: {e}"));
        Subscriber { received, client }
    }

    /// Waits until nothing new has come for `quiet` (at most `limit`); returns everything.
    fn settle(&self, quiet: Duration, limit: Duration) -> Vec<Received> {
        settle(|| self.received.lock().unwrap().len(), quiet, limit);
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Waits until `count` has not changed for `quiet`, or `limit` has passed.
fn settle(count: impl Fn() -> usize, quiet: Duration, limit: Duration) {
    let started = Instant::now();
    let mut last = count();
    let mut since = Instant::now();
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
}

/// A minimal blocking HTTP receiver for the webhook: stores each request's JSON body (a
/// body that is not JSON is kept as a string, so the comparison reports it), then answers
/// 200. Serves keep-alive and one-shot connections, Content-Length and chunked bodies.
struct WebhookReceiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl WebhookReceiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let store = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let store = Arc::clone(&store);
                // A connection cut mid-request (cityops killed) just ends its thread.
                std::thread::spawn(move || {
                    let _ = serve_connection(stream, &store);
                });
            }
        });
        WebhookReceiver { addr, bodies }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Waits until nothing new has come for `quiet` (at most `limit`); returns every body.
    fn settle(&self, quiet: Duration, limit: Duration) -> Vec<Value> {
        settle(|| self.bodies.lock().unwrap().len(), quiet, limit);
        self.bodies.lock().unwrap().clone()
    }
}

/// Serves one connection's requests until the client closes it.
fn serve_connection(stream: TcpStream, bodies: &Mutex<Vec<Value>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        if request_line.trim().is_empty() {
            continue;
        }
        let (mut length, mut chunked, mut close) = (0_usize, false, false);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "expect" if value.eq_ignore_ascii_case("100-continue") => {
                    writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                }
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        };
        if !body.is_empty() {
            let value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            // Stored before the answer: a sender killed before it records the delivery
            // sends again (a duplicate), never loses it.
            bodies.lock().unwrap().push(value);
        }
        writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// A chunked request body (trailers skipped).
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let invalid = |e: std::num::ParseIntError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).map_err(invalid)?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0_u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}
