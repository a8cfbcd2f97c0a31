//! The `cityops` command line and nothing else: parses arguments, calls the library, prints
//! what it returns and maps errors to exit codes (0 ok, 1 failure, 2 rule, config or usage
//! problems). Each subcommand is one function returning `Result<(), CliError>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use cityops::pipeline::{self, RunError, RunOptions, Source, StateOptions};
use cityops::time::{parse_duration_ms, parse_ts_text};
use cityops::tools;
use cityops::{
    BrokerUrl, ClusterSource, Config, DetectionClock, FixtureReader, LogFormat, MqttConfig, MqttSource, Severity,
    Shutdown, SinkConfig, mqtt_qos, shipped_rules_dir,
};

mod cli;

use cli::{BenchArgs, CheckArgs, Cli, Command, GenArgs, RecordArgs, ReplayArgs, RunArgs, TestArgs, TokenHashArgs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = log_format(&cli);
    init_logging(format);
    let done = match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Test(args) => test(args),
        Command::Record(args) => record(args),
        Command::Replay(args) => replay_to_mqtt(args),
        Command::Bench(args) => bench(args),
        Command::Gen(args) => generate(args),
        Command::TokenHash(args) => token_hash(args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A JSON log stays all JSON, its last word included.
            match (e.message.is_empty(), format) {
                (true, _) => {}
                (false, LogFormat::Json) => tracing::error!("{}", e.message),
                (false, LogFormat::Text) => eprintln!("{}", e.message),
            }
            ExitCode::from(e.code)
        }
    }
}

/// The log format: `--log-format`, else the `run` config's `[log] format`, else text.
fn log_format(cli: &Cli) -> LogFormat {
    if let Some(format) = cli.log_format {
        return format;
    }
    match &cli.command {
        // A config that does not load is reported by the command itself.
        Command::Run(args) => Config::load(args.config.as_deref()).map_or(LogFormat::Text, |c| c.log.format),
        _ => LogFormat::Text,
    }
}

/// Log lines go to stderr, filtered by `RUST_LOG` (default: cityops at info, the rest at warn).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("cityops=info,warn"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => {
            logs.json().flatten_event(true).with_current_span(false).init();
            // A panic's message goes into the JSON log too, not as a plain line beside it.
            std::panic::set_hook(Box::new(|info| {
                tracing::error!(panic = %info, "a thread panicked (report this as a bug, with the log lines before it)");
            }));
        }
    }
}

/// How a subcommand failed: the exit code and what to print on stderr.
#[derive(Debug)]
struct CliError {
    /// The process exit code: 1 when the work failed, 2 for bad input.
    code: u8,
    /// What goes to stderr; empty when the command printed its own report.
    message: String,
}

impl CliError {
    /// Exit 1: the work itself failed.
    fn failure(message: impl std::fmt::Display) -> Self {
        CliError {
            code: 1,
            message: format!("error: {message}"),
        }
    }

    /// Exit 2: a problem with the config, the rules or the arguments.
    fn invalid(message: impl std::fmt::Display) -> Self {
        CliError {
            code: 2,
            message: format!("error: {message}"),
        }
    }

    /// Exit 1 or 2 with nothing more to print (the command printed its own report).
    fn quiet(code: u8) -> Self {
        CliError {
            code,
            message: String::new(),
        }
    }
}

impl From<RunError> for CliError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Rules(problems) => CliError {
                code: 2,
                message: problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"),
            },
            RunError::Config(_) => CliError::invalid(e),
            other => CliError::failure(other),
        }
    }
}

/// Where the demo run serves its dashboard (another free port when this one is taken).
const DEMO_HTTP: &str = "127.0.0.1:8080";

/// The config file (or the defaults), with `--queries` overriding its rules directory.
fn load_config(path: Option<&PathBuf>, queries: Option<PathBuf>) -> Result<Config, CliError> {
    let mut config = Config::load(path.map(PathBuf::as_path)).map_err(CliError::invalid)?;
    if let Some(dir) = queries {
        config.rules.dir = dir;
    }
    Ok(config)
}

fn run(args: RunArgs) -> Result<(), CliError> {
    let mut config = load_config(args.config.as_ref(), args.queries.clone())?;
    if let Some(dir) = &args.state {
        config.state.dir = Some(dir.clone());
    }
    config.settle_client_id();
    if let Some(bind) = &args.http {
        config.http.bind = bind.clone();
    }
    let demo = args.replay.is_none() && args.mqtt.is_none() && args.nats.is_none();
    if let Some(instance) = &args.instance {
        config.cluster.instance = instance.clone();
    }
    if args.no_http {
        config.http.bind.clear();
    } else if demo && config.http.bind.is_empty() {
        config.http.bind = DEMO_HTTP.to_string();
        config.http.any_port_if_taken = true;
    }
    // The demo carries its rules: without a rules directory here, the shipped ones run.
    let shipped_rules = match demo && args.queries.is_none() && !config.rules.dir.exists() {
        true => {
            let dir =
                shipped_rules_dir().map_err(|e| CliError::failure(format!("cannot write the shipped rules: {e}")))?;
            config.rules.dir = dir.path().to_path_buf();
            Some(dir)
        }
        false => None,
    };
    let source = live_source(&args, &config).map_err(CliError::invalid)?;
    let warnings_mqtt = match &args.warnings_mqtt {
        Some(url) => {
            let url = url
                .parse::<BrokerUrl>()
                .map_err(|e| CliError::invalid(format!("--warnings-mqtt {e}")))?;
            Some((url, config.mqtt.clone()))
        }
        None => None,
    };
    let mut webhook = config.webhook.clone();
    if args.webhook.is_some() {
        webhook.url = args.webhook.clone();
    }
    let webhook = webhook.url.is_some().then_some(webhook);
    let state = config.state.dir.clone().map(|dir| StateOptions {
        dir,
        checkpoint_interval: std::time::Duration::from_millis(config.state.checkpoint_interval.0.max(1) as u64),
    });
    if source.is_some() && state.is_none() && args.nats.is_none() {
        tracing::warn!(
            "this run keeps no state: a restart loses open windows and firing alerts, and messages acked but not yet judged; use --state DIR"
        );
    }
    let nats = match &args.nats {
        Some(url) => Some(ClusterSource {
            url: url.clone(),
            max_messages: args.max_messages,
            idle_exit: idle_exit(args.idle_exit.as_deref()).map_err(CliError::invalid)?,
        }),
        None => None,
    };
    let (fixture, clock) = match (source, args.replay) {
        _ if nats.is_some() => {
            let cluster = nats.ok_or_else(|| CliError::failure("no NATS source".to_string()))?;
            tracing::info!(
                nats = %cluster.url,
                stream = %config.cluster.stream,
                partitions = config.cluster.partitions,
                rules = %config.rules.dir.display(),
                "running as a cluster instance; Ctrl-C or SIGTERM hands its partitions over"
            );
            (Source::Cluster(Box::new(cluster)), DetectionClock::Wall)
        }
        (Some(live), _) => {
            tracing::info!(
                broker = %format!("mqtt://{}:{}", live.url.host, live.url.port),
                filters = %live.filters.join(", "),
                client_id = %live.config.client_id,
                rules = %config.rules.dir.display(),
                "reading live telemetry; Ctrl-C or SIGTERM ends the run"
            );
            (Source::Mqtt(Box::new(live)), DetectionClock::Wall)
        }
        (None, replay) => {
            let shown = match &replay {
                Some(path) => path.display().to_string(),
                None => "the demo city (fixtures/demo, embedded)".to_string(),
            };
            let rules = match shipped_rules.is_some() {
                true => "the shipped rules (built in)".to_string(),
                false => config.rules.dir.display().to_string(),
            };
            tracing::info!(speed = %args.speed, "replaying {shown} with rules from {rules}");
            (replay.map_or(Source::Demo, Source::File), DetectionClock::EventTime)
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
            webhook,
            append: false,
        },
        dead_letter_path: args.dead_letter.clone(),
        clock,
        capture_results: false,
        reload_reports: None,
        stop: Some(shutdown_on_ctrl_c()),
        metrics: None,
        state,
    };
    let outcome = pipeline::run(options);
    drop(shipped_rules);
    let outcome = outcome?;
    for warning in &outcome.rule_warnings {
        tracing::warn!("{warning}");
    }
    println!("{}", outcome.summary);
    println!("dead letters: {}", args.dead_letter.display());
    if let Some(path) = args.summary_json {
        outcome
            .summary
            .write_json(&path)
            .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
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
    source.idle_exit = crate::idle_exit(idle_exit)?;
    Ok(source)
}

/// `--idle-exit`: how long a live run waits without a message before it ends.
fn idle_exit(text: Option<&str>) -> Result<Option<std::time::Duration>, String> {
    text.map(|text| {
        parse_duration_ms(text)
            .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64))
            .map_err(|e| format!("--idle-exit: {e}"))
    })
    .transpose()
}

fn record(args: RecordArgs) -> Result<(), CliError> {
    let config = load_config(args.config.as_ref(), None)?;
    let source = mqtt_source(
        &args.mqtt,
        args.qos,
        args.max_messages,
        args.idle_exit.as_deref(),
        &config,
    )
    .map_err(CliError::invalid)?;
    tracing::info!(
        "recording {} into {}; Ctrl-C or SIGTERM ends",
        source.filters.join(", "),
        args.out.display()
    );
    let recorded = tools::record::record(&source, &args.out, &shutdown_on_ctrl_c()).map_err(CliError::failure)?;
    println!(
        "recorded {} messages in {:.3} s: {:.0} messages/s (QoS {})",
        recorded.messages,
        recorded.seconds,
        recorded.per_second(),
        source.config.qos
    );
    Ok(())
}

fn replay_to_nats(args: &ReplayArgs, url: &str) -> Result<(), CliError> {
    let config = load_config(args.config.as_ref(), None)?;
    let reader = match &args.file {
        Some(path) => FixtureReader::open(path),
        None => FixtureReader::demo(),
    };
    let published = reader
        .map_err(|e| e.to_string())
        .and_then(|mut reader| cityops::publish_to_nats(&mut reader, url, &config, args.speed))
        .map_err(CliError::failure)?;
    println!(
        "published {} messages in {:.3} s: {:.0} messages/s into stream {} ({} partitions, speed {}){}",
        published.messages,
        published.seconds,
        published.messages as f64 / published.seconds.max(1e-9),
        config.cluster.stream,
        config.cluster.partitions,
        args.speed,
        match published.skipped {
            0 => String::new(),
            n => format!("; {n} skipped: their topics are not valid NATS subjects"),
        }
    );
    Ok(())
}

fn replay_to_mqtt(args: ReplayArgs) -> Result<(), CliError> {
    if let Some(url) = &args.to_nats {
        return replay_to_nats(&args, url);
    }
    let mut config = load_config(args.config.as_ref(), None)?;
    config.settle_client_id();
    let (url, qos) = args
        .to_mqtt
        .clone()
        .unwrap_or_default()
        .parse::<BrokerUrl>()
        .and_then(|url| mqtt_qos(args.qos).map(|qos| (url, qos)))
        .map_err(CliError::invalid)?;
    let reader = match &args.file {
        Some(path) => FixtureReader::open(path),
        None => FixtureReader::demo(),
    };
    let mqtt = MqttConfig {
        inflight: args.inflight,
        ..config.mqtt.clone()
    };
    let published = reader
        .map_err(|e| e.to_string())
        .and_then(|mut reader| tools::replay::publish(&mut reader, &url, &mqtt, qos, args.speed))
        .map_err(CliError::failure)?;
    println!(
        "published {} messages in {:.3} s: {:.0} messages/s (QoS {}, speed {})",
        published.messages,
        published.seconds,
        published.messages as f64 / published.seconds.max(1e-9),
        args.qos,
        args.speed
    );
    Ok(())
}

/// A shutdown handle set by the first Ctrl-C or SIGTERM (a second one of either ends the process).
fn shutdown_on_ctrl_c() -> Shutdown {
    let shutdown = Shutdown::new();
    let handle = shutdown.clone();
    let watcher = std::thread::Builder::new().name("signals".to_string()).spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        // SIGINT (Ctrl-C) or SIGTERM (`systemctl stop`, Docker, Kubernetes): a clean stop;
        // a second one of either aborts.
        let Some(name) = runtime.block_on(stop_signal()) else {
            return;
        };
        tracing::info!(
            "stopping on {name}: input closed, queued work finishing, sinks flushing (send it again to abort)"
        );
        handle.request();
        let again = runtime.block_on(stop_signal());
        std::process::exit(if again == Some("SIGTERM") { 143 } else { 130 });
    });
    if let Err(e) = watcher {
        tracing::warn!(error = %e, "Ctrl-C and SIGTERM will abort instead of stopping cleanly: the signal watcher could not start; run with --state DIR so that an abort loses nothing");
    }
    shutdown
}

/// Waits for SIGINT or SIGTERM; `None` when neither can be watched.
async fn stop_signal() -> Option<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).ok()?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.ok().map(|()| "SIGINT"),
        _ = terminate.recv() => Some("SIGTERM"),
    }
}

fn token_hash(args: TokenHashArgs) -> Result<(), CliError> {
    let token = match args.token {
        Some(token) => token,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CliError::invalid(format!("reading the token from stdin: {e}")))?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if token.len() < 8 {
        return Err(CliError::invalid("a token needs at least 8 characters"));
    }
    println!("sha256:{}", cityops::token_hash(&token));
    Ok(())
}

fn generate(args: GenArgs) -> Result<(), CliError> {
    let settings = tools::generator::GenSettings {
        devices_per_kind: args.devices,
        interval_ms: parse_duration_ms(&args.interval).map_err(CliError::invalid)?.max(1),
        duration_ms: parse_duration_ms(&args.duration).map_err(CliError::invalid)?.max(1),
        start_ms: parse_ts_text(&args.start).map_err(|e| CliError::invalid(format!("--start: {e:?}")))?,
        incidents: args.incidents,
        seed: args.seed,
        gateway: args.gateway.max(1),
    };
    let started = std::time::Instant::now();
    let generated = tools::generator::generate(&settings, &args.out, &args.labels).map_err(CliError::failure)?;
    println!(
        "generated {} readings in {} messages ({} incidents) into {} and {} in {:.1} s",
        generated.readings,
        generated.messages,
        generated.incidents,
        args.out.display(),
        args.labels.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench(args: BenchArgs) -> Result<(), CliError> {
    let config = load_config(args.config.as_ref(), args.queries.clone())?;
    let out = args.out.clone();
    let report = tools::bench::run(tools::bench::BenchRequest {
        config,
        fixture: args.file,
        speed: args.speed,
        out: args.out,
        labels: args.labels,
    })
    .map_err(|e| match e {
        tools::bench::BenchError::Run(e) => CliError::from(e),
        other => CliError::failure(other),
    })?;
    println!("{}", report.summary);
    println!(
        "bench: {} rules, speed {}, {:.0} readings/s, peak RSS {}",
        report.rules,
        report.speed,
        report.summary.readings_per_second,
        report
            .peak_rss_mib
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "unknown".to_string())
    );
    if let Some(score) = &report.score {
        println!(
            "bench: incidents caught {}/{}; missed: [{}]; warnings outside the labels: {} [{}]",
            score.caught,
            score.labelled,
            score.missed.join(", "),
            score.unexpected.len(),
            score.unexpected.join(", ")
        );
    }
    println!(
        "bench: wrote summary.json and {} in {}",
        report.hgrm_files.join(", "),
        out.display()
    );
    Ok(())
}

fn check(args: CheckArgs) -> Result<(), CliError> {
    let config = load_config(args.config.as_ref(), None)?;
    let dir = args.dir.unwrap_or_else(|| config.rules.dir.clone());
    let report = tools::check::check(&config, &dir).map_err(CliError::failure)?;
    for p in &report.problems {
        println!("{p}");
    }
    let errors = report.problems.iter().filter(|p| p.severity == Severity::Error).count();
    println!(
        "{} rule(s) ok, {} error(s), {} warning(s)",
        report.ok.len(),
        errors,
        report.problems.len() - errors
    );
    if report.has_errors() {
        return Err(CliError::quiet(2));
    }
    Ok(())
}

fn test(args: TestArgs) -> Result<(), CliError> {
    let config = load_config(args.config.as_ref(), args.queries)?;
    let dir = args.dir.unwrap_or_else(|| config.rules.dir.join("tests"));
    let results = tools::rule_test::run_dir(&config, &dir);
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
        return Err(CliError::quiet(1));
    }
    Ok(())
}
