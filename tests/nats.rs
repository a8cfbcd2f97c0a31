//! Scale-out on NATS JetStream against real `nats-server` processes (Debian's 2.9), each
//! test on loopback ports of its own: a 3-node JetStream cluster (or one server where the
//! test is about the server's mapping). `.ci/run` installs nats-server and names it in
//! `CITYOPS_TEST_NATS`; without it these tests say so and pass.
//!
//! The cluster tests publish the demo with `replay --to-nats` and run three `cityops run
//! --nats` instances as processes. Their warnings together must equal the golden demo
//! warnings (without `detected_at` and `latency_ms`, which are wall-clock), none twice,
//! also when the NATS node leading the stream is killed mid-stream; when an instance is
//! killed mid-stream or stalls past its lease and comes back, none twice but what it had
//! sent and not yet recorded when it stopped (at-least-once), and a stalled one writes
//! nothing after it comes back that was sent before. A district rule
//! (computed in the whole-stream slot) gives the same warnings on one instance, on three,
//! and in one process reading the demo file.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cityops::{Config, FixtureReader, Speed};
use serde_json::Value;

/// The cluster tests are heavy (three servers, three instances): one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Partitions of the test stream.
const PARTITIONS: u32 = 8;
/// The lease of the test instances (short, so takeovers are quick).
const LEASE: Duration = Duration::from_secs(2);
/// How often the test instances checkpoint their partitions (short, so a takeover in a
/// short test goes on from a checkpoint rather than from the stream's start).
const CHECKPOINT_EVERY: &str = "1s";
/// How long instances under load wait for more input before they end: the publisher starts
/// once the instances share the partitions, which a loaded machine can take seconds to do,
/// and an instance that ends before then never sees the readings.
const IDLE_UNDER_LOAD: &str = "15s";

fn nats_binary() -> Option<String> {
    match std::env::var("CITYOPS_TEST_NATS") {
        Ok(binary) => Some(binary),
        Err(_) => {
            eprintln!("CITYOPS_TEST_NATS is not set: skipping the NATS test (.ci/run sets it)");
            None
        }
    }
}

/// `n` distinct free loopback ports: every listener is held until all are chosen, so no two
/// are the same port.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A nats-server process, killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
}

impl Server {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How many times a server (or a cluster) is started on fresh ports when a port it was given
/// was taken between choosing it and the server binding it (another process's outgoing
/// connection can take any ephemeral port).
const START_TRIES: usize = 5;

/// Starts nats-server on `config` and waits until it listens on `port`; `Err` (with the
/// server's own log) when it exits first, as it does when one of its ports is taken.
fn start_server(binary: &str, config: &Path, port: u16) -> Result<Server, String> {
    let log = config.with_extension("log");
    let child = Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("nats-server starts");
    let mut server = Server {
        child: Some(child),
        port,
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            server.child = None;
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("nats-server on port {port} exited ({status}): {said}"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nats-server did not listen on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// Runs `start` on fresh ports until it succeeds, at most `START_TRIES` times; each try
/// has a directory of its own under `dir` (a failed try's store stays out of the next).
fn start_on_fresh_ports<T>(dir: &Path, mut start: impl FnMut(&Path) -> Result<T, String>) -> T {
    let mut errors = Vec::new();
    for attempt in 0..START_TRIES {
        let dir = dir.join(format!("try-{attempt}"));
        std::fs::create_dir_all(&dir).unwrap();
        match start(&dir) {
            Ok(started) => return started,
            Err(e) => errors.push(e),
        }
    }
    panic!("nats-server did not start in {START_TRIES} tries: {errors:#?}");
}

/// One JetStream server with `extra` in its config.
fn single_server(binary: &str, dir: &Path, extra: &str) -> Server {
    start_on_fresh_ports(dir, |dir| {
        let port = free_ports(1)[0];
        let config = dir.join("single.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nserver_name: single\njetstream {{ store_dir: {:?} }}\n{extra}\n",
                dir.join("single-store")
            ),
        )
        .unwrap();
        start_server(binary, &config, port)
    })
}

/// A 3-node JetStream cluster on loopback (all three on fresh ports again when one fails to
/// start: the nodes name each other's ports).
fn three_node_cluster(binary: &str, dir: &Path) -> Vec<Server> {
    start_on_fresh_ports(dir, |dir| {
        let ports = free_ports(6);
        let (client, cluster) = ports.split_at(3);
        let routes: Vec<String> = cluster.iter().map(|c| format!("nats-route://127.0.0.1:{c}")).collect();
        (0..3)
            .map(|i| {
                let config = dir.join(format!("n{i}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "listen: 127.0.0.1:{}\nserver_name: n{i}\njetstream {{ store_dir: {:?} }}\ncluster {{\n  name: cityops-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                        client[i],
                        dir.join(format!("n{i}-store")),
                        cluster[i],
                        routes.join(", ")
                    ),
                )
                .unwrap();
                start_server(binary, &config, client[i])
            })
            .collect()
    })
}

fn urls(servers: &[Server]) -> String {
    servers.iter().map(Server::url).collect::<Vec<_>>().join(",")
}

/// The cluster settings of the tests.
fn cluster_config(replicas: usize) -> Config {
    let mut config = Config::default();
    config.cluster.partitions = PARTITIONS;
    config.cluster.replicas = replicas;
    config.cluster.lease = cityops::DurationMs(LEASE.as_millis() as i64);
    config
}

fn config_file(dir: &Path, replicas: usize) -> PathBuf {
    let path = dir.join("cityops.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\npartitions = {PARTITIONS}\nreplicas = {replicas}\nlease = \"{}ms\"\ncheckpoint_interval = \"{CHECKPOINT_EVERY}\"\n",
            LEASE.as_millis()
        ),
    )
    .unwrap();
    path
}

/// Publishes the demo into the stream, retrying while a new cluster elects its leaders.
fn publish_demo(url: &str, config: &Config, speed: Speed) -> u64 {
    let started = Instant::now();
    loop {
        let mut reader = FixtureReader::demo().unwrap();
        match cityops::publish_to_nats(&mut reader, url, config, speed) {
            Ok(published) => {
                assert_eq!(published.skipped, 0);
                return published.messages;
            }
            Err(e) if started.elapsed() < Duration::from_secs(30) && e.contains("creating or opening stream") => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("replay --to-nats: {e}"),
        }
    }
}

/// A `cityops run --nats` process; its warnings go to `<dir>/<name>.jsonl`, its log
/// (JSON) is kept in memory.
struct Instance {
    name: String,
    child: Option<Child>,
    jsonl: PathBuf,
    log: std::sync::Arc<Mutex<Vec<Value>>>,
}

impl Instance {
    fn start(dir: &Path, name: &str, url: &str, config: &Path, idle_exit: &str) -> Self {
        let queries = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/queries"));
        Self::start_with_rules(dir, name, url, config, idle_exit, queries)
    }

    /// Like `start`, with the rules of `queries`.
    fn start_with_rules(dir: &Path, name: &str, url: &str, config: &Path, idle_exit: &str, queries: &Path) -> Self {
        let jsonl = dir.join(format!("{name}.jsonl"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cityops"))
            .args(["--log-format", "json", "run", "--quiet", "--no-http"])
            .arg(format!("--nats={url}"))
            .arg(format!("--instance={name}"))
            .arg(format!("--config={}", config.display()))
            .arg(format!("--queries={}", queries.display()))
            .arg(format!("--jsonl={}", jsonl.display()))
            .arg(format!(
                "--dead-letter={}",
                dir.join(format!("{name}-dead.jsonl")).display()
            ))
            .arg(format!("--idle-exit={idle_exit}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cityops starts");
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let lines = std::sync::Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                lines.lock().unwrap().push(value);
            }
        });
        Instance {
            name: name.to_string(),
            child: Some(child),
            jsonl,
            log,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {}", self.name);
    }

    /// Waits for the process to end by itself; its exit status.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{} did not end within {limit:?}; its log ends:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Log lines whose message contains `text`.
    fn logged(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
            .count()
    }

    /// Its last stderr lines, for a failure's message.
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        let tail: Vec<String> = log.iter().rev().take(40).rev().map(Value::to_string).collect();
        tail.join("\n")
    }

    /// Waits for the process to end by itself and asserts it succeeded.
    fn assert_ends_well(&mut self, limit: Duration) {
        let status = self.wait(limit);
        assert!(
            status.success(),
            "{} failed ({status}); its log ends:\n{}",
            self.name,
            self.log_tail()
        );
    }

    fn warnings(&self) -> Vec<Value> {
        match std::fs::read_to_string(&self.jsonl) {
            // A killed instance may leave its last line half written: it was not sent.
            Ok(text) => text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A warning without its wall-clock fields, floats rounded as the golden file's, as
/// comparable text.
fn comparable(warning: &Value) -> String {
    let mut warning = warning.clone();
    if let Some(obj) = warning.as_object_mut() {
        obj.entry("latency_ms").or_insert(Value::from(0.0));
    }
    let warning: cityops::Warning = serde_json::from_value(warning).expect("a warning");
    let mut stable = common::stable(&warning);
    if let Some(obj) = stable.as_object_mut() {
        obj.remove("detected_at");
    }
    stable.to_string()
}

fn golden() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/demo-warnings.jsonl");
    let mut lines: Vec<String> = common::read_jsonl(&path).iter().map(comparable).collect();
    lines.sort();
    lines
}

/// A notification's identity: `alert_id#transition`.
fn identity(warning: &Value) -> String {
    format!("{}#{}", warning["alert_id"], warning["transition"])
}

/// The instances' warnings together equal the golden file, and no notification was sent
/// twice.
fn assert_golden_once(instances: &[Instance], what: &str) {
    assert_golden_once_but(instances, what, &std::collections::BTreeSet::new());
}

/// Like `assert_golden_once`, except that the notifications in `unrecorded` may have gone
/// out twice: an instance stopped (killed, stalled) between sending a notification and
/// recording it in the delivery record leaves it for its successor to send again
/// (at-least-once). Pass what the stopped instance had sent when it was stopped.
fn assert_golden_once_but(instances: &[Instance], what: &str, unrecorded: &std::collections::BTreeSet<String>) {
    let all: Vec<Value> = instances.iter().flat_map(Instance::warnings).collect();
    let mut seen = BTreeMap::new();
    for w in &all {
        *seen.entry(identity(w)).or_insert(0) += 1;
    }
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(k, n)| **n > 1 && !unrecorded.contains(*k))
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "{what}: sent more than once: {twice:?}");
    let mut once = std::collections::BTreeSet::new();
    let all: Vec<Value> = all.into_iter().filter(|w| once.insert(identity(w))).collect();
    let mut actual: Vec<String> = all.iter().map(comparable).collect();
    actual.sort();
    let expected = golden();
    if actual != expected {
        for instance in instances {
            for line in instance.log.lock().unwrap().iter() {
                let message = line["message"].as_str().unwrap_or_default();
                if line["level"] != "INFO" || message.contains("cluster") || message.contains("leases") {
                    eprintln!("{}: {line}", instance.name);
                }
            }
        }
        let missing: Vec<&String> = expected.iter().filter(|e| !actual.contains(e)).collect();
        let extra: Vec<&String> = actual.iter().filter(|a| !expected.contains(a)).collect();
        panic!(
            "{what}: {} warnings against the golden {}\nmissing ({}):\n{}\nunexpected ({}):\n{}",
            actual.len(),
            expected.len(),
            missing.len(),
            missing
                .iter()
                .take(10)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            extra.len(),
            extra.iter().take(10).map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        );
    }
}

/// Each instance's share of the partitions, per its log.
fn partitions_claimed(instance: &Instance) -> usize {
    instance.logged("claimed partition")
}

#[test]
fn the_partition_hash_matches_the_servers_partition_mapping() {
    let Some(binary) = nats_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.cluster.partitions = 32;
    let (from, to) = cityops::nats_server_mapping(&config).unwrap();
    assert_eq!(from, "city.*.*.*");
    let server = single_server(&binary, dir.path(), &format!("mappings = {{ {from:?}: {to:?} }}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures::StreamExt;
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut mapped = client.subscribe("cityops.>").await.unwrap();
        client.flush().await.unwrap();
        let topics: Vec<String> = (0..300)
            .map(|i| format!("city/district-{}/water/wm-{i:04}", i % 7))
            .collect();
        for topic in &topics {
            client.publish(topic.replace('/', "."), "{}".into()).await.unwrap();
        }
        client.flush().await.unwrap();
        for topic in &topics {
            let message = tokio::time::timeout(Duration::from_secs(5), mapped.next())
                .await
                .expect("the mapped message arrives")
                .unwrap();
            assert_eq!(
                message.subject.as_str(),
                cityops::nats_stream_subject(&config, topic).unwrap(),
                "{topic}: the server's partition() and cityops's differ"
            );
        }
    });
}

#[test]
fn three_instances_send_the_golden_demo_warnings_once() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let servers = three_node_cluster(&binary, dir.path());
    let url = urls(&servers);
    let file = config_file(dir.path(), 3);
    let published = publish_demo(&url, &cluster_config(3), Speed::Max);
    assert_eq!(published, 254_507);
    let mut instances: Vec<Instance> = (1..=3)
        .map(|i| Instance::start(dir.path(), &format!("node-{i}"), &url, &file, "4s"))
        .collect();
    for instance in &mut instances {
        instance.assert_ends_well(Duration::from_secs(240));
    }
    assert_golden_once(&instances, "three instances");
    assert!(
        instances.iter().all(|i| partitions_claimed(i) > 0),
        "every instance took a share: {:?}",
        instances.iter().map(partitions_claimed).collect::<Vec<_>>()
    );
}

#[test]
fn a_takeover_goes_on_from_the_stored_checkpoints_and_from_the_first_reading_when_they_are_unusable() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let server = single_server(&binary, dir.path(), "");
    let url = server.url();
    let file = config_file(dir.path(), 1);
    assert_eq!(publish_demo(&url, &cluster_config(1), Speed::Max), 254_507);
    let mut first = Instance::start(dir.path(), "first", &url, &file, "4s");
    first.assert_ends_well(Duration::from_secs(240));
    assert_golden_once(std::slice::from_ref(&first), "one instance");
    let sent = first.warnings().iter().filter(|w| w["status"] != "escalated").count() as u64;
    // The next instance goes on from every partition's checkpoint: everything it computes
    // again after the cuts was sent already.
    let second = taking_over(dir.path(), "second", &url, &file, "from its checkpoint");
    assert!(
        already_sent(&second) < sent,
        "a resume computes less than the whole stream"
    );
    // Every checkpoint made unusable: the third computes every partition from its first
    // reading, and finds everything it computes sent.
    let corrupted = ask_jetstream(&url, async |js| {
        use futures::StreamExt;
        let store = js.get_object_store("cityops-checkpoints").await.unwrap();
        let mut names = Vec::new();
        let mut list = store.list().await.unwrap();
        while let Some(info) = list.next().await {
            names.push(info.unwrap().name);
        }
        for name in &names {
            store.put(name.as_str(), &mut &b"not a checkpoint"[..]).await.unwrap();
        }
        names.len()
    });
    assert_eq!(corrupted, PARTITIONS as usize);
    let third = taking_over(dir.path(), "third", &url, &file, "checkpoint is unusable");
    for p in 0..PARTITIONS {
        assert_eq!(
            third.logged(&format!("consuming partition {p} from its first reading")),
            1
        );
    }
    assert_eq!(
        already_sent(&third),
        sent,
        "every notification computed again, and found sent"
    );
}

/// Runs one instance over a stream whose warnings were all sent: it logs `each` once per
/// partition and sends nothing.
fn taking_over(dir: &Path, name: &str, url: &str, file: &Path, each: &str) -> Instance {
    let mut instance = Instance::start(dir, name, url, file, "4s");
    instance.assert_ends_well(Duration::from_secs(240));
    assert_eq!(instance.logged(each), PARTITIONS as usize, "{}", instance.log_tail());
    assert!(instance.warnings().is_empty(), "sent again: {:?}", instance.warnings());
    instance
}

/// What an instance's closing line counts as computed again and found already sent.
fn already_sent(instance: &Instance) -> u64 {
    let log = instance.log.lock().unwrap();
    let left = log
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("cluster: left")))
        .unwrap_or_else(|| panic!("{} logged no closing line", instance.name));
    left["already_sent"].as_u64().unwrap()
}

/// Runs `ask` on the cluster at `url`, on a runtime of its own.
fn ask_jetstream<T>(url: &str, ask: impl AsyncFnOnce(async_nats::jetstream::Context) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let servers: Vec<&str> = url.split(',').collect();
        let client = async_nats::connect(servers.as_slice()).await.unwrap();
        ask(async_nats::jetstream::new(client)).await
    })
}

/// Who holds each partition now, per the lease bucket.
fn lease_owners(url: &str) -> BTreeMap<u32, String> {
    ask_jetstream(url, async |js| {
        // Empty until the bucket exists (and while a new cluster cannot answer yet).
        let Ok(store) = js.get_key_value("cityops-leases").await else {
            return BTreeMap::new();
        };
        let mut owners = BTreeMap::new();
        for p in 0..PARTITIONS {
            if let Ok(Some(value)) = store.get(format!("p.{p}")).await
                && let Ok(lease) = serde_json::from_slice::<Value>(&value)
            {
                owners.insert(p, lease["owner"].as_str().unwrap_or_default().to_string());
            }
        }
        owners
    })
}

/// Starts three instances and waits until every partition is held, by at least two of
/// them (the third may still be joining: partitions are balanced as instances come).
fn three_instances(dir: &Path, url: &str, file: &Path, idle_exit: &str) -> Vec<Instance> {
    let instances: Vec<Instance> = (1..=3)
        .map(|i| Instance::start(dir, &format!("node-{i}"), url, file, idle_exit))
        .collect();
    wait_for(
        Duration::from_secs(60),
        || {
            let owners = lease_owners(url);
            let holders: std::collections::BTreeSet<&String> = owners.values().filter(|o| !o.is_empty()).collect();
            owners.len() == PARTITIONS as usize && owners.values().all(|o| !o.is_empty()) && holders.len() >= 2
        },
        || format!("the instances did not share the partitions: {:?}", lease_owners(url)),
    );
    instances
}

/// Waits until `condition` holds, looking every 50 ms; fails with `what()` after `limit`.
fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool, what: impl FnOnce() -> String) {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > limit {
            panic!("after {limit:?}: {}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `instance` holds a partition (instances share them out over a few rounds).
fn wait_until_holding(url: &str, instances: &[Instance], instance: &str) {
    wait_for(
        Duration::from_secs(60),
        || lease_owners(url).values().any(|o| o == instance),
        || {
            let logs: Vec<String> = instances
                .iter()
                .map(|i| format!("{}:\n{}", i.name, i.log_tail()))
                .collect();
            format!(
                "{instance} never held a partition: {:?}\n{}",
                lease_owners(url),
                logs.join("\n")
            )
        },
    );
}

/// Publishes the demo at `rate` readings/s on a thread of its own.
fn publish_paced(url: &str, rate: f64) -> std::thread::JoinHandle<u64> {
    let url = url.to_string();
    std::thread::spawn(move || publish_demo(&url, &cluster_config(3), Speed::Rate(rate)))
}

/// A 3-node cluster with its stream, three instances sharing the partitions, and the demo
/// being published at 30,000 readings/s; the servers and files live as long as it does.
struct UnderLoad {
    dir: tempfile::TempDir,
    _servers: Vec<Server>,
    url: String,
    /// The instances' config file.
    config: PathBuf,
    instances: Vec<Instance>,
    publisher: Option<std::thread::JoinHandle<u64>>,
}

impl UnderLoad {
    /// `idle_exit`: how long the instances wait for more input before they end.
    fn start(binary: &str, idle_exit: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let servers = three_node_cluster(binary, dir.path());
        let url = urls(&servers);
        let file = config_file(dir.path(), 3);
        // The stream exists before the instances start.
        publish_demo_prefix(&url);
        let instances = three_instances(dir.path(), &url, &file, idle_exit);
        let publisher = Some(publish_paced(&url, 30_000.0));
        UnderLoad {
            dir,
            _servers: servers,
            url,
            config: file,
            instances,
            publisher,
        }
    }

    /// Waits for the whole demo to be stored and for the instances at `alive` to end.
    fn finish(&mut self, alive: &[usize]) {
        let published = self.publisher.take().unwrap().join().unwrap();
        assert_eq!(published, 254_507);
        for &i in alive {
            let instance = &mut self.instances[i];
            instance.assert_ends_well(Duration::from_secs(240));
        }
    }
}

#[test]
fn a_killed_instance_s_partitions_are_taken_over_and_nothing_is_lost_or_sent_twice() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut run = UnderLoad::start(&binary, IDLE_UNDER_LOAD);
    std::thread::sleep(Duration::from_secs(3));
    let victim = &run.instances[1];
    wait_until_holding(&run.url, &run.instances, &victim.name);
    let held: Vec<u32> = lease_owners(&run.url)
        .into_iter()
        .filter(|(_, owner)| *owner == victim.name)
        .map(|(p, _)| p)
        .collect();
    assert!(!held.is_empty(), "node-2 held no partition when it was killed");
    // Its partitions' state is stored before it dies, so the survivors go on from there.
    wait_for(
        Duration::from_secs(60),
        || {
            held.iter()
                .all(|p| victim.logged(&format!("partition {p}'s state is checkpointed")) > 0)
        },
        || format!("node-2 stored no checkpoint of {held:?}:\n{}", victim.log_tail()),
    );
    victim.signal("KILL");
    let unrecorded = unrecorded(&run.url, victim);
    wait_for(
        2 * LEASE,
        || {
            let owners = lease_owners(&run.url);
            held.iter()
                .all(|p| owners.get(p).is_some_and(|o| !o.is_empty() && *o != victim.name))
        },
        || {
            format!(
                "partitions {held:?} were not taken over within two leases: {:?}",
                lease_owners(&run.url)
            )
        },
    );
    run.finish(&[0, 2]);
    let resumed: usize = [0, 2]
        .iter()
        .map(|i| run.instances[*i].logged("from its checkpoint"))
        .sum();
    assert!(resumed > 0, "no survivor went on from a stored checkpoint");
    assert_golden_once_but(&run.instances, "one instance killed mid-stream", &unrecorded);
}

#[test]
fn stopped_and_balanced_partitions_are_handed_over_at_their_last_reading_and_nothing_is_sent_twice() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut run = UnderLoad::start(&binary, IDLE_UNDER_LOAD);
    std::thread::sleep(Duration::from_secs(3));
    wait_until_holding(&run.url, &run.instances, "node-2");
    let leaver = &mut run.instances[1];
    leaver.signal("TERM");
    leaver.assert_ends_well(Duration::from_secs(60));
    assert_eq!(leaver.logged("without its last checkpoint"), 0, "{}", leaver.log_tail());
    // Each partition node-2 read mid-stream: the stream sequence its last checkpoint covers.
    let handed = handed_over(leaver);
    assert!(!handed.is_empty(), "node-2 handed nothing over:\n{}", leaver.log_tail());
    // Once node-1 and node-3 hold every partition, a fourth instance joins mid-stream: they
    // give it partitions for balance.
    wait_for(
        Duration::from_secs(30),
        || {
            lease_owners(&run.url)
                .values()
                .filter(|o| *o == "node-1" || *o == "node-3")
                .count()
                == PARTITIONS as usize
        },
        || format!("node-2's partitions were not taken up: {:?}", lease_owners(&run.url)),
    );
    let node_4 = Instance::start(run.dir.path(), "node-4", &run.url, &run.config, IDLE_UNDER_LOAD);
    run.instances.push(node_4);
    wait_until_holding(&run.url, &run.instances, "node-4");
    run.finish(&[0, 2, 3]);
    // Every handover, at the stop or for balance, was taken up from exactly its checkpoint.
    let mut balanced = 0;
    for (from, instance) in run.instances.iter().enumerate() {
        for (partition, covers_seq) in handed_over(instance) {
            let successor = run.instances.iter().enumerate().position(|(i, other)| {
                i != from
                    && other.log.lock().unwrap().iter().any(|l| {
                        l["message"].as_str().is_some_and(|m| m.contains("from its checkpoint"))
                            && l["partition"].as_u64() == Some(partition)
                            && l["covers_seq"].as_u64() == Some(covers_seq)
                    })
            });
            let Some(to) = successor else {
                panic!(
                    "no successor went on from {}'s last checkpoint of partition {partition} (through {covers_seq})",
                    instance.name
                )
            };
            balanced += usize::from(from != 1 && to == 3);
        }
    }
    assert!(balanced > 0, "node-4 took no partition handed over for balance");
    // Everything sent before a handover was recorded before its lease went: nothing twice.
    assert_golden_once(&run.instances, "one instance stopped, one joined, mid-stream");
}

/// The (partition, stream sequence) of each checkpoint `instance` handed a partition over
/// with.
fn handed_over(instance: &Instance) -> Vec<(u64, u64)> {
    instance
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("handed over with its checkpoint"))
        })
        .map(|l| (l["partition"].as_u64().unwrap(), l["covers_seq"].as_u64().unwrap()))
        .collect()
}

#[test]
fn an_instance_stalled_past_its_lease_sends_nothing_stale_when_it_comes_back() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut run = UnderLoad::start(&binary, IDLE_UNDER_LOAD);
    std::thread::sleep(Duration::from_secs(2));
    let stalled = &run.instances[1];
    wait_until_holding(&run.url, &run.instances, &stalled.name);
    stalled.signal("STOP");
    // Once the signal took effect: what node-2 had written, and what of it was unrecorded.
    std::thread::sleep(Duration::from_millis(200));
    let written_before_stop = stalled.warnings().len();
    let unrecorded = unrecorded(&run.url, stalled);
    std::thread::sleep(3 * LEASE);
    let owners = lease_owners(&run.url);
    assert!(
        owners.values().all(|o| *o != stalled.name),
        "node-2's partitions were not taken while it stalled: {owners:?}"
    );
    stalled.signal("CONT");
    run.finish(&[0, 1, 2]);
    assert!(
        run.instances[1].logged("a peer holds partition") > 0,
        "node-2 came back and found its partitions taken"
    );
    // Nothing node-2 wrote after it came back was sent by anyone before (by a peer that
    // took its partitions, or by node-2 itself before it stalled): the fence looks at the
    // lease last, right before the send, so what node-2 had in hand when it froze is
    // dropped once it finds its partitions taken.
    let node_2 = run.instances[1].warnings();
    let mut elsewhere: BTreeMap<String, usize> = BTreeMap::new();
    for w in run
        .instances
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .flat_map(|(_, i)| i.warnings())
    {
        *elsewhere.entry(identity(&w)).or_default() += 1;
    }
    for w in &node_2[..written_before_stop] {
        *elsewhere.entry(identity(w)).or_default() += 1;
    }
    let stale: Vec<String> = node_2[written_before_stop..]
        .iter()
        .map(identity)
        .filter(|id| elsewhere.contains_key(id))
        .collect();
    assert!(
        stale.is_empty(),
        "node-2 sent these again after it came back: {stale:?}"
    );
    // What node-2 had sent but not recorded when it stalled, its successor sends again
    // (at-least-once); anything else twice fails.
    assert_golden_once_but(&run.instances, "one instance stalled past its lease", &unrecorded);
}

/// What `stopped` (just killed or stalled) had sent but not yet recorded in the delivery
/// record: its successor sends these again (see `assert_golden_once_but`).
fn unrecorded(url: &str, stopped: &Instance) -> std::collections::BTreeSet<String> {
    let sent = stopped.warnings();
    ask_jetstream(url, async |js| {
        let record = js.get_key_value("cityops-deliveries").await.unwrap();
        let mut unrecorded = std::collections::BTreeSet::new();
        for w in &sent {
            let key = format!("{}.{}", w["alert_id"].as_str().unwrap(), w["transition"]);
            if !matches!(record.get(key).await, Ok(Some(_))) {
                unrecorded.insert(identity(w));
            }
        }
        unrecorded
    })
}

/// The server (`n0`, `n1`, `n2`: its index) leading the readings stream.
fn stream_leader(url: &str) -> usize {
    ask_jetstream(url, async |js| {
        let mut stream = js.get_stream("CITYOPS").await.unwrap();
        let info = stream.info().await.unwrap();
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("the stream has a leader");
        leader
            .trim_start_matches('n')
            .parse()
            .expect("a server of the test cluster")
    })
}

/// The wall-clock ms of the last reading any instance read, from their closing log lines.
fn last_reading_ms(instances: &[Instance]) -> i64 {
    instances
        .iter()
        .flat_map(|i| i.log.lock().unwrap().clone())
        .filter_map(|line| line["last_reading_ms"].as_i64())
        .max()
        .unwrap_or_default()
}

#[test]
fn a_nats_node_killed_mid_stream_loses_nothing() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_node_cluster(&binary, dir.path());
    let url = urls(&servers);
    let file = config_file(dir.path(), 3);
    // The whole demo is in the stream first: what is tested is reading it, and the leases
    // and the delivery record, through the loss (the publisher's side has its own test).
    assert_eq!(publish_demo(&url, &cluster_config(3), Speed::Max), 254_507);
    let mut instances: Vec<Instance> = (1..=3)
        .map(|i| Instance::start(dir.path(), &format!("node-{i}"), &url, &file, "10s"))
        .collect();
    // The stream's leader: its readings, its consumers and (likely) some lease and record
    // leaders go with it. Killed as soon as the first partition is claimed: three instances
    // read the whole demo within a second or two of claiming, so any later moment may find
    // them done.
    let leader = stream_leader(&url);
    let started = Instant::now();
    // Their logs say it at once; asking the lease bucket can take a loaded cluster seconds.
    while instances.iter().all(|i| partitions_claimed(i) == 0) {
        assert!(started.elapsed() < Duration::from_secs(60), "no partition was claimed");
        std::thread::sleep(Duration::from_millis(10));
    }
    servers[leader].kill();
    let killed_ms = wall_ms();
    for instance in &mut instances {
        instance.assert_ends_well(Duration::from_secs(240));
    }
    assert!(
        last_reading_ms(&instances) > killed_ms,
        "the instances had read the whole stream before the node was killed: not mid-stream"
    );
    assert_golden_once(&instances, "a NATS node killed mid-stream");
}

#[test]
fn replay_to_nats_stores_every_reading_once_through_a_node_killed_mid_publish() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_node_cluster(&binary, dir.path());
    let url = urls(&servers);
    publish_demo_prefix(&url);
    let publisher = publish_paced(&url, 30_000.0);
    std::thread::sleep(Duration::from_secs(3));
    let leader = stream_leader(&url);
    servers[leader].kill();
    assert_eq!(publisher.join().unwrap(), 254_507);
    let survivors: Vec<String> = servers.iter().filter(|s| s.child.is_some()).map(Server::url).collect();
    let stored = ask_jetstream(&survivors.join(","), async |js| {
        let mut stream = js.get_stream("CITYOPS").await.unwrap();
        stream.info().await.unwrap().state.messages
    });
    assert_eq!(stored, 254_507, "every reading stored once: none lost, none twice");
}

/// Now, in ms since the epoch.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Creates the stream (and waits for a new cluster's leaders) by publishing nothing.
fn publish_demo_prefix(url: &str) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    loop {
        let mut reader = FixtureReader::open(&empty).unwrap();
        match cityops::publish_to_nats(&mut reader, url, &cluster_config(3), Speed::Max) {
            Ok(_) => break,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(30), "the stream: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// A rules directory with a district rule (`tests/rules/district`: cold rooms counted per
/// district, not per device) beside a per-device one (`room_temp_low`).
fn district_rules(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(rules.join("heating")).unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, to) in [
        (
            "tests/rules/district/heating/district_cold_rooms.sql",
            "heating/district_cold_rooms.sql",
        ),
        ("queries/heating/room_temp_low.sql", "heating/room_temp_low.sql"),
    ] {
        std::fs::copy(manifest.join(from), rules.join(to)).unwrap();
    }
    rules
}

/// The warnings of instances that ended well, comparable and sorted, none sent twice.
fn warnings_once(instances: &[Instance], what: &str) -> Vec<String> {
    let all: Vec<Value> = instances.iter().flat_map(Instance::warnings).collect();
    let mut identities: Vec<String> = all
        .iter()
        .map(|w| format!("{}#{}", w["alert_id"], w["transition"]))
        .collect();
    let count = identities.len();
    identities.sort();
    identities.dedup();
    assert_eq!(identities.len(), count, "{what}: a notification was sent twice");
    let mut comparable: Vec<String> = all.iter().map(comparable).collect();
    comparable.sort();
    comparable
}

#[test]
fn a_district_rule_gives_the_same_warnings_on_one_instance_and_on_three() {
    let Some(binary) = nats_binary() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let servers = three_node_cluster(&binary, dir.path());
    let url = urls(&servers);
    assert_eq!(publish_demo(&url, &cluster_config(3), Speed::Max), 254_507);
    let rules = district_rules(dir.path());
    let mut results = Vec::new();
    for count in [1, 3] {
        // Each run its own leases and delivery record, on the same stream.
        let config = dir.path().join(format!("cityops-{count}.toml"));
        std::fs::write(
            &config,
            format!(
                "[cluster]\npartitions = {PARTITIONS}\nreplicas = 3\nlease = \"{}ms\"\nlease_bucket = \"leases-{count}\"\ndeliveries_bucket = \"deliveries-{count}\"\ncheckpoint_bucket = \"checkpoints-{count}\"\ncheckpoint_interval = \"{CHECKPOINT_EVERY}\"\n",
                LEASE.as_millis()
            ),
        )
        .unwrap();
        let mut instances: Vec<Instance> = (1..=count)
            .map(|i| {
                Instance::start_with_rules(dir.path(), &format!("of-{count}-node-{i}"), &url, &config, "4s", &rules)
            })
            .collect();
        for instance in &mut instances {
            instance.assert_ends_well(Duration::from_secs(240));
        }
        if count == 3 {
            assert!(
                instances.iter().all(|i| partitions_claimed(i) > 0),
                "every instance took a share: {:?}",
                instances.iter().map(partitions_claimed).collect::<Vec<_>>()
            );
        }
        results.push(warnings_once(&instances, &format!("{count} instance(s)")));
    }
    // And the same as one process reading the demo file.
    let plain = dir.path().join("plain.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_cityops"))
        .args(["run", "--speed", "max", "--quiet", "--no-http"])
        .arg(format!("--queries={}", rules.display()))
        .arg(format!("--jsonl={}", plain.display()))
        .arg(format!(
            "--dead-letter={}",
            dir.path().join("plain-dead.jsonl").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut from_file: Vec<String> = std::fs::read_to_string(&plain)
        .unwrap()
        .lines()
        .map(|l| comparable(&serde_json::from_str(l).unwrap()))
        .collect();
    from_file.sort();
    let district = results[0].iter().filter(|w| w.contains("district_cold_rooms")).count();
    assert!(district > 0, "the district rule fires on the demo: {:?}", results[0]);
    assert!(results[0].len() > district, "the per-device rule fires beside it");
    assert_eq!(results[0], results[1], "one instance and three differ");
    assert_eq!(results[0], from_file, "the cluster and one process on the file differ");
}
