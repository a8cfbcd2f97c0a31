//! The `cityops` command line: parses arguments, calls the library, maps errors to exit
//! codes (0 ok, 1 failure, 2 rule or config problems).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};

use cityops::alert::sink::SinkConfig;
use cityops::config::Config;
use cityops::ingest::fixture::FixtureReader;
use cityops::ingest::mqtt::MqttSource;
use cityops::ingest::replay::Speed;
use cityops::mqtt::BrokerUrl;
use cityops::pipeline::{self, RunError, RunOptions, Source};
use cityops::rules::worker::DetectionClock;
use cityops::time::parse_duration_ms;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cityops",
    version,
    about = "City telemetry in, windowed SQL rules, graded warnings out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: with no source, replay the bundled demo city as fast as possible.
    Run(RunArgs),
    /// Plan every rule against the table schemas and report every problem.
    Check(CheckArgs),
    /// Run the declarative rule tests (one TOML file per case) on the virtual clock.
    Test(TestArgs),
    /// Capture live MQTT traffic into a fixture (and report the rate received).
    Record(RecordArgs),
    /// Publish a fixture to an MQTT broker: a load generator.
    Replay(ReplayArgs),
    /// Write a seeded synthetic city fixture with labelled incidents.
    Gen(GenArgs),
    /// Measure a replay through the full pipeline: throughput (`--speed max`) or latency at
    /// a fixed rate (`--speed 20000/s`); writes summary.json and .hgrm files.
    Bench(BenchArgs),
}

#[derive(Args)]
struct GenArgs {
    /// Devices of each kind (heat exchange stations, pressure meters, gas detectors).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Reporting interval of every device.
    #[arg(long, default_value = "60s")]
    interval: String,
    /// Length of the recording.
    #[arg(long, default_value = "1d")]
    duration: String,
    /// Start of the recording (UTC).
    #[arg(long, default_value = "2026-01-15T00:00:00Z")]
    start: String,
    /// Incidents to inject (one per chosen device).
    #[arg(long, default_value_t = 10)]
    incidents: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Readings per message (gateway payloads); 1 = one reading per message.
    #[arg(long, default_value_t = 1)]
    gateway: usize,
    /// Fixture to write (zstd when it ends in .zst).
    #[arg(long, value_name = "FILE", default_value = "city.jsonl.zst")]
    out: PathBuf,
    /// Where the incident labels go (JSON Lines: rule, key, from, to).
    #[arg(long, value_name = "FILE", default_value = "city-labels.jsonl")]
    labels: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// Fixture to replay; default: the embedded demo city.
    file: Option<PathBuf>,
    /// `max` (throughput), a factor of recorded speed, or a fixed rate such as `20000/s`.
    #[arg(long, default_value = "max")]
    speed: Speed,
    /// Rules directory (default: rules.dir of the config, `queries`).
    #[arg(long, value_name = "DIR")]
    queries: Option<PathBuf>,
    /// Config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where summary.json and the .hgrm files go.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    out: PathBuf,
    /// Incident labels from `cityops gen`: report incidents caught and missed, and warnings
    /// outside every label.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
}

#[derive(Args)]
struct RecordArgs {
    /// Broker to subscribe to (mqtt://host:1883, mqtts://host:8883).
    #[arg(long, value_name = "URL")]
    mqtt: String,
    /// Fixture to write (JSON Lines; zstd when it ends in .zst).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Subscription QoS (default: [mqtt] qos of the config).
    #[arg(long)]
    qos: Option<u8>,
    /// End after this many messages.
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,
    /// End once no message has come for this long (e.g. `5s`), after the first one.
    #[arg(long, value_name = "DURATION")]
    idle_exit: Option<String>,
    /// Config file (topics, [mqtt]).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ReplayArgs {
    /// Fixture to publish; default: the embedded demo city.
    file: Option<PathBuf>,
    /// Broker to publish to.
    #[arg(long, value_name = "URL")]
    to_mqtt: String,
    /// A factor of recorded speed (1, 60, …) or `max`.
    #[arg(long, default_value = "max")]
    speed: Speed,
    /// Publish QoS.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// QoS 1 messages sent ahead of the broker's acks (replaces [mqtt] inflight here). A
    /// deep window keeps the broker fed while the publisher waits for a core.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
    /// Config file ([mqtt] credentials, TLS).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TestArgs {
    /// Directory of test cases (default: `tests` under the rules directory).
    dir: Option<PathBuf>,
    /// Rules directory (default: rules.dir of the config, `queries`).
    #[arg(long, value_name = "DIR")]
    queries: Option<PathBuf>,
    /// Config file (default: the embedded defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Fixture to replay (JSON Lines, optionally .zst); default: the embedded demo city.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Rules directory (default: rules.dir of the config, `queries`).
    #[arg(long, value_name = "DIR")]
    queries: Option<PathBuf>,
    /// Config file (default: the embedded defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Replay speed: a factor of recorded speed (1, 60, …) or `max`.
    #[arg(long, default_value = "max")]
    speed: Speed,
    /// Also write each warning as a JSON object per line to FILE.
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,
    /// Where rejected and late rows go, with their reasons.
    #[arg(long, value_name = "FILE", default_value = "cityops-dead-letters.jsonl")]
    dead_letter: PathBuf,
    /// Do not print a line per warning (the summary is still printed).
    #[arg(long)]
    quiet: bool,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// Read live from this broker (mqtt://host:1883, mqtts://host:8883) instead of a fixture;
    /// ends on Ctrl-C. Credentials: [mqtt] in the config or CITYOPS_MQTT_USERNAME/PASSWORD.
    #[arg(long, value_name = "URL", conflicts_with = "replay")]
    mqtt: Option<String>,
    /// Live: subscription QoS (default: [mqtt] qos of the config, 1).
    #[arg(long, requires = "mqtt")]
    qos: Option<u8>,
    /// Live: end after this many messages.
    #[arg(long, value_name = "N", requires = "mqtt")]
    max_messages: Option<u64>,
    /// Live: end once no message has come for this long (e.g. `10s`), after the first one.
    #[arg(long, value_name = "DURATION", requires = "mqtt")]
    idle_exit: Option<String>,
    /// Publish warnings to this broker: `warnings/<level>/<rule>` (QoS 1) and retained
    /// state on `warnings/state/<rule>/<key>`.
    #[arg(long, value_name = "URL")]
    warnings_mqtt: Option<String>,
    /// Serve the dashboard, its API and /metrics on this address while running, e.g.
    /// 127.0.0.1:8080. The demo run serves on 127.0.0.1:8080 (or a free port) by default.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Serve no HTTP, not even the demo run's default dashboard.
    #[arg(long, conflicts_with = "http")]
    no_http: bool,
    /// POST each warning to this URL (retried; spooled on disk in [webhook] spool_dir while
    /// the receiver is down).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// Rules directory (default: rules.dir of the config, `queries`).
    dir: Option<PathBuf>,
    /// Config file (default: the embedded defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("cityops=info,warn")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Test(args) => test(args),
        Command::Record(args) => record(args),
        Command::Replay(args) => replay_to_mqtt(args),
        Command::Bench(args) => bench(args),
        Command::Gen(args) => generate(args),
    }
}

/// Where the demo run serves its dashboard (another free port when this one is taken).
const DEMO_HTTP: &str = "127.0.0.1:8080";

/// The config file (or the defaults), with `--queries` overriding its rules directory.
fn load_config(path: Option<&PathBuf>, queries: Option<PathBuf>) -> Result<Config, ExitCode> {
    let mut config = Config::load(path.map(PathBuf::as_path)).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    if let Some(dir) = queries {
        config.rules.dir = dir;
    }
    Ok(config)
}

fn run(args: RunArgs) -> ExitCode {
    let mut config = match load_config(args.config.as_ref(), args.queries.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(bind) = &args.http {
        config.http.bind = bind.clone();
    }
    let demo = args.replay.is_none() && args.mqtt.is_none();
    if args.no_http {
        config.http.bind.clear();
    } else if demo && config.http.bind.is_empty() {
        config.http.bind = DEMO_HTTP.to_string();
        config.http.any_port_if_taken = true;
    }
    let source = match live_source(&args, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let warnings_mqtt = match &args.warnings_mqtt {
        Some(url) => match url.parse::<BrokerUrl>() {
            Ok(url) => Some((url, config.mqtt.clone())),
            Err(e) => {
                eprintln!("error: --warnings-mqtt {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut webhook_config = config.webhook.clone();
    if args.webhook.is_some() {
        webhook_config.url = args.webhook.clone();
    }
    let webhook = webhook_config.url.is_some().then_some(webhook_config);
    let (fixture, clock) = match (source, args.replay) {
        (Some(live), _) => {
            eprintln!(
                "cityops: reading mqtt://{}:{} ({}) with rules from {}; Ctrl-C ends the run",
                live.url.host,
                live.url.port,
                live.filters.join(", "),
                config.rules.dir.display()
            );
            (Source::Mqtt(Box::new(live)), DetectionClock::Wall)
        }
        (None, replay) => {
            let fixture = match replay {
                Some(path) => Source::File(path),
                None => Source::Demo,
            };
            let shown = match &fixture {
                Source::File(p) => p.display().to_string(),
                _ => "the demo city (fixtures/demo, embedded)".to_string(),
            };
            eprintln!(
                "cityops: replaying {shown} at {} speed with rules from {}",
                speed_text(args.speed),
                config.rules.dir.display()
            );
            (fixture, DetectionClock::EventTime)
        }
    };
    let options = RunOptions {
        config,
        fixture,
        speed: args.speed,
        sinks: SinkConfig {
            stdout: !args.quiet,
            jsonl: args.jsonl,
            collect: false,
            mqtt: warnings_mqtt,
            webhook: webhook.clone(),
        },
        dead_letter_path: args.dead_letter.clone(),
        clock,
        capture_results: false,
        reload_reports: None,
        stop: Some(stop_on_ctrl_c()),
        metrics: None,
    };
    match pipeline::run(options) {
        Ok(outcome) => {
            for warning in &outcome.rule_warnings {
                eprintln!("{warning}");
            }
            println!("{}", outcome.summary);
            println!("dead letters: {}", args.dead_letter.display());
            if let Some(path) = args.summary_json {
                let written = serde_json::to_vec_pretty(&outcome.summary)
                    .map_err(std::io::Error::from)
                    .and_then(|json| std::fs::write(&path, json));
                if let Err(e) = written {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(RunError::Rules(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The live source the arguments ask for, if any.
fn live_source(args: &RunArgs, config: &Config) -> Result<Option<MqttSource>, String> {
    let Some(url) = &args.mqtt else { return Ok(None) };
    mqtt_source(url, args.qos, args.max_messages, args.idle_exit.as_deref(), config).map(Some)
}

/// A subscription from command-line settings over the config's.
fn mqtt_source(
    url: &str,
    qos: Option<u8>,
    max_messages: Option<u64>,
    idle_exit: Option<&str>,
    config: &Config,
) -> Result<MqttSource, String> {
    let url: BrokerUrl = url.parse().map_err(|e| format!("--mqtt {e}"))?;
    let mut config = config.clone();
    if let Some(qos) = qos {
        config.mqtt.qos = qos;
    }
    let mut source = MqttSource::new(url, &config)?;
    source.max_messages = max_messages;
    source.idle_exit = match idle_exit {
        Some(text) => Some(std::time::Duration::from_millis(
            parse_duration_ms(text).map_err(|e| format!("--idle-exit: {e}"))?.max(0) as u64,
        )),
        None => None,
    };
    Ok(source)
}

fn record(args: RecordArgs) -> ExitCode {
    let config = match load_config(args.config.as_ref(), None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let source = match mqtt_source(
        &args.mqtt,
        args.qos,
        args.max_messages,
        args.idle_exit.as_deref(),
        &config,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "cityops: recording {} into {}; Ctrl-C ends",
        source.filters.join(", "),
        args.out.display()
    );
    match cityops::record::record(&source, &args.out, &stop_on_ctrl_c()) {
        Ok(r) => {
            println!(
                "recorded {} messages in {:.3} s: {:.0} messages/s (QoS {})",
                r.messages,
                r.seconds,
                r.per_second(),
                source.config.qos
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn replay_to_mqtt(args: ReplayArgs) -> ExitCode {
    let config = match load_config(args.config.as_ref(), None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let prepared = args
        .to_mqtt
        .parse::<BrokerUrl>()
        .and_then(|url| cityops::mqtt::qos(args.qos).map(|qos| (url, qos)));
    let (url, qos) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let reader = match &args.file {
        Some(path) => FixtureReader::open(path),
        None => FixtureReader::demo(),
    };
    let mqtt = cityops::config::MqttConfig {
        inflight: args.inflight,
        ..config.mqtt.clone()
    };
    let published = reader
        .map_err(|e| e.to_string())
        .and_then(|mut reader| cityops::publish::publish(&mut reader, &url, &mqtt, qos, args.speed));
    match published {
        Ok(p) => {
            println!(
                "published {} messages in {:.3} s: {:.0} messages/s (QoS {}, speed {})",
                p.messages,
                p.seconds,
                p.messages as f64 / p.seconds.max(1e-9),
                args.qos,
                speed_text(args.speed)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A flag set by the first Ctrl-C (a second one ends the process the usual way).
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let watcher = std::thread::Builder::new().name("ctrl-c".to_string()).spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("cityops: stopping (Ctrl-C again to abort)");
            flag.store(true, Ordering::Relaxed);
            let _ = runtime.block_on(tokio::signal::ctrl_c());
            std::process::exit(130);
        }
    });
    if let Err(e) = watcher {
        eprintln!("warning: Ctrl-C will abort instead of stopping cleanly: {e}");
    }
    stop
}

fn generate(args: GenArgs) -> ExitCode {
    let parsed = (|| -> Result<cityops::generator::GenSettings, String> {
        Ok(cityops::generator::GenSettings {
            devices_per_kind: args.devices,
            interval_ms: parse_duration_ms(&args.interval)?.max(1),
            duration_ms: parse_duration_ms(&args.duration)?.max(1),
            start_ms: cityops::time::parse_ts_text(&args.start).map_err(|e| format!("--start: {e:?}"))?,
            incidents: args.incidents,
            seed: args.seed,
            gateway: args.gateway.max(1),
        })
    })();
    let settings = match parsed {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    match cityops::generator::generate(&settings, &args.out, &args.labels) {
        Ok(g) => {
            println!(
                "generated {} readings in {} messages ({} incidents) into {} and {} in {:.1} s",
                g.readings,
                g.messages,
                g.incidents,
                args.out.display(),
                args.labels.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    let mut config = match load_config(args.config.as_ref(), args.queries.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    config.rules.reload_interval = cityops::config::DurationMs(0);
    let rules = cityops::rules::loader::load_dir(&config.rules.dir).0.len();
    let fixture = match &args.file {
        Some(path) => Source::File(path.clone()),
        None => Source::Demo,
    };
    let metrics = Arc::new(cityops::metrics::Metrics::new());
    let options = RunOptions {
        config,
        fixture,
        speed: args.speed,
        sinks: SinkConfig {
            collect: args.labels.is_some(),
            ..SinkConfig::default()
        },
        dead_letter_path: args.out.join("dead-letters.jsonl"),
        clock: DetectionClock::EventTime,
        capture_results: false,
        reload_reports: None,
        stop: None,
        metrics: Some(Arc::clone(&metrics)),
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let outcome = match pipeline::run(options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let peak = cityops::bench::peak_rss_mib();
    println!("{}", outcome.summary);
    println!(
        "bench: {rules} rules, speed {}, {:.0} readings/s, peak RSS {}",
        speed_text(args.speed),
        outcome.summary.readings_per_second,
        peak.map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "unknown".to_string())
    );
    let mut json = match serde_json::to_value(&outcome.summary) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    json["rules"] = serde_json::json!(rules);
    json["speed"] = serde_json::json!(speed_text(args.speed));
    json["peak_rss_mib"] = serde_json::json!(peak);
    if let Some(path) = &args.labels {
        let scored = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| cityops::bench::score(&text, &outcome.warnings));
        match scored {
            Ok(score) => {
                println!(
                    "bench: incidents caught {}/{}; missed: [{}]; warnings outside the labels: {} [{}]",
                    score.caught,
                    score.labelled,
                    score.missed.join(", "),
                    score.unexpected.len(),
                    score.unexpected.join(", ")
                );
                json["labels"] = serde_json::json!(score);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let written = serde_json::to_vec_pretty(&json)
        .map_err(std::io::Error::from)
        .and_then(|bytes| std::fs::write(args.out.join("summary.json"), bytes))
        .and_then(|()| cityops::bench::write_hgrms(&metrics, &args.out));
    match written {
        Ok(files) => {
            println!(
                "bench: wrote summary.json and {} in {}",
                files.join(", "),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}

fn speed_text(speed: Speed) -> String {
    match speed {
        Speed::Max => "maximum".to_string(),
        Speed::Factor(f) => format!("{f}×"),
        Speed::Rate(r) => format!("{r} messages/s"),
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let config = match load_config(args.config.as_ref(), None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = args.dir.unwrap_or_else(|| config.rules.dir.clone());
    match cityops::check::check(&config, &dir) {
        Ok(report) => {
            for p in &report.problems {
                println!("{p}");
            }
            let errors = report
                .problems
                .iter()
                .filter(|p| p.severity == cityops::rules::problem::Severity::Error)
                .count();
            println!(
                "{} rule(s) ok, {} error(s), {} warning(s)",
                report.ok.len(),
                errors,
                report.problems.len() - errors
            );
            if report.has_errors() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: TestArgs) -> ExitCode {
    let config = match load_config(args.config.as_ref(), args.queries) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = args.dir.unwrap_or_else(|| config.rules.dir.join("tests"));
    let results = cityops::ruletest::run_dir(&config, &dir);
    let failed = results.iter().filter(|r| !r.passed).count();
    for result in &results {
        let verdict = if result.passed { "ok" } else { "FAILED" };
        println!("{} ... {verdict}", result.path.display());
        if !result.passed {
            println!("{}", result.report);
        }
    }
    println!("rule tests: {} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
