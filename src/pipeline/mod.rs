//! The only place that knows the whole graph: it loads and plans the rules, builds the
//! queues, starts the stages, waits for the source to end, shuts the stages down in order
//! and collects the summary.
//!
//! ```text
//! source ─► Handoff (crossbeam, per decode worker) ─► decode threads
//!        ─► TableEvent (tokio mpsc, per rule) ─► rule tasks (DataFusion, one per rule)
//!        ─► Warning (tokio mpsc) ─► sink thread ─► Vec<Box<dyn Sink>>
//! decode + rules ─► DeadLetter (crossbeam) ─► dead-letter writer
//! rule watcher ─► new RuleFanout ─► Ingest::Reroute in-band on every decode queue
//! with --state: source ─► Intake ─► wal thread (log, fdatasync, acks back) ─► Handoff
//!               wal ─► Ingest::Barrier ─► decode ─► TableEvent::Barrier ─► rules
//!               ─► Notice::Snapshot ─► sink thread (checkpoint, delivery record)
//! ```
//!
//! With state, `recover` first reads the log back into the decode queues (the checkpoint's
//! open windows refilled, then everything after its cut replayed) before the source starts.
//!
//! Threads, by the name `perf` and `top -H` show:
//!
//! | thread | started by | stops when | joined in |
//! |---|---|---|---|
//! | the caller's thread: the source (replay, or the MQTT loop) | `run` | fixture ends, `Shutdown` requested, or a live end condition | returns, then `run` shuts the rest down |
//! | `mqtt-clock` (live only) | `ingest::mqtt::subscribe` | the MQTT loop ends | `subscribe` (scoped) |
//! | `wal` (with state) | `restart::recover` | every `Intake` sender is dropped, after the source | `run`, right after the source |
//! | `decode-N` | `run` | `Ingest::End` from the handoff | `run`, first after the source |
//! | `rules` (tokio workers; one task per rule unit) | `RuleSet::apply` | every input table sent `TableEvent::End` | `RuleSet::finish` |
//! | `rule-reload` | `Watcher::start` | `Watcher::stop`, right after the source ends | `Watcher::stop` |
//! | `sinks` | `sink::start` | every `Warning` sender is dropped | `SinkHandle::finish` |
//! | `mqtt-warnings`, `webhook` (when configured) | `sink::open` | their sink is closed | `Sink::close` |
//! | `dead-letters` | `deadletter::start` | every `DeadLetter` sender is dropped | `DeadLetterWriter::finish` |
//! | HTTP server (a task on `rules`) | `http::start` | `HttpServer::stop`, after the rules finish | not joined: graceful shutdown |
//! | `leases` (`run --nats`) | `cluster::keeper::start` | the instance loop ends (leases given back) | `KeeperHandle::release_all` |
//! | `partition-N` (`run --nats`): a whole pipeline per held partition | `pipeline::partitions` | its partition is stopped (given up, or the run ends) | the instance loop's `stop` |
//! | `delivery-record` (`run --nats`) | `cluster::instance::open_fence` | the run ends | dropped with the fence |

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

mod operations;
mod options;
mod partitions;
mod restart;
mod sources;

pub use options::{PartitionFeed, RunError, RunOptions, RunOutcome, Source, StateOptions};
use restart::{last_arrivals, open_state, recover, remember_client_id, resolutions_of_removed};
use sources::{from_broker, replay_source};

use crate::alert::durable::Durable;
use crate::alert::sink::{self, Notice};
use crate::cluster::forward::ForwardSink;
use crate::cluster::instance::open_fence;
use crate::config::Config;
use crate::deadletter;
use crate::flow::Ingest;
use crate::http::live::{DashboardFeed, LiveState};
use crate::http::{self, HttpError};
use crate::ingest::decode::Decoder;
use crate::ingest::mqtt::Logged;
use crate::ingest::partition_feed::feed;
use crate::ingest::replay::Bursting;
use crate::ingest::wal::Intake;
use crate::ingest::worker::{DecodeSettings, DecodeWorker};
use crate::metrics::Metrics;
use crate::queue::Handoff;
use crate::rules::compile::{CompiledRule, compile_all};
use crate::rules::loader::load_dir;
use crate::rules::problem::{Problem, Severity};
use crate::rules::reload::{PublishFanout, Reloader, Watcher};
use crate::rules::running::RuleSet;
use crate::rules::worker::WorkerContext;
use crate::state::snapshot::RuleSnapshot;
use crate::summary::Summary;
use crate::topic::TopicPattern;

/// Warnings the sink queue holds before rules wait.
const WARNING_QUEUE: usize = 4096;
/// Dead letters the writer's queue holds before stages wait.
const DEAD_LETTER_QUEUE: usize = 65_536;

fn io(context: &str) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        context: context.to_string(),
        source,
    }
}

/// Loads and plans the rules of `config.rules.dir`; errors stop the run, warnings do not.
pub fn load_rules(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> Result<(Vec<CompiledRule>, Vec<Problem>), RunError> {
    let catalog = config.catalog();
    let (files, mut problems) = load_dir(&config.rules.dir);
    let (compiled, more) = runtime.block_on(compile_all(&files, &catalog, &config.engine));
    problems.extend(more);
    if problems.iter().any(|p| p.severity == Severity::Error) {
        return Err(RunError::Rules(problems));
    }
    if compiled.is_empty() {
        return Err(RunError::Rules(vec![Problem::error(
            &config.rules.dir,
            1,
            1,
            "no rules (*.sql files) found",
        )]));
    }
    Ok((compiled, problems))
}

/// Runs the pipeline over a fixture until it ends.
pub fn run(options: RunOptions) -> Result<RunOutcome, RunError> {
    // Settings that cannot work fail before anything is opened, truncated or started.
    let config = &options.config;
    let pattern = TopicPattern::parse(&config.topics.pattern)
        .map_err(|e| RunError::Config(format!("topics.pattern `{}`: {e}", config.topics.pattern)))?;
    let http_addr: Option<std::net::SocketAddr> = match config.http.bind.as_str() {
        "" => None,
        bind => Some(
            bind.parse()
                .map_err(|e| RunError::Config(format!("http.bind `{bind}`: {e}")))?,
        ),
    };
    // A cluster partition is one of many pipelines in the process: one rule thread each.
    let embedded = matches!(options.fixture, Source::Partition(_));
    if options.state.is_some() && matches!(options.fixture, Source::Cluster(_)) {
        return Err(RunError::Config(
            "--state with --nats: on a NATS stream the stream is the log and partitions are computed again from it on takeover; run without --state".to_string(),
        ));
    }
    let cores = match embedded {
        true => 1,
        false => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("rules")
        .enable_all()
        .build()
        .map_err(io("starting the rule runtime"))?;
    let (mut compiled, rule_warnings) = load_rules(config, &runtime)?;
    // A partition computes the rules over one device at a time; the whole-stream slot
    // the others (see `cluster::partition`).
    if let Source::Partition(feed) = &options.fixture {
        compiled.retain(|rule| rule.per_device != feed.whole_stream);
    }
    let state = options.state.as_ref().map(open_state).transpose()?;
    // A live source's client id stays with the state directory (see `Config::settle_client_id`).
    if let (Some(kept), Source::Mqtt(source)) = (&options.state, &options.fixture) {
        remember_client_id(&kept.dir, &source.config.client_id).map_err(io("recording the client id"))?;
    }
    let catalog = config.catalog();
    let engine = &config.engine;
    let metrics = options.metrics.clone().unwrap_or_else(|| Arc::new(Metrics::new()));
    let readiness = &metrics.readiness;
    readiness.rules_loaded.store(true, Ordering::Relaxed);
    readiness.recovered.store(state.is_none(), Ordering::Relaxed);
    readiness
        .live_source
        .store(matches!(options.fixture, Source::Mqtt(_)), Ordering::Relaxed);
    // What the dashboard shows; fed by the sink when an HTTP address is configured.
    let live = Arc::new(LiveState::new());
    let (warnings_tx, warnings_rx) = mpsc::channel(WARNING_QUEUE);
    let (desk, desk_access) = match embedded {
        true => (None, None),
        false => {
            let (desk, access) = operations::open_desk(
                config,
                state.as_ref().map(|s| &s.dir),
                options.clock,
                &warnings_tx,
                &metrics,
                &runtime,
            )?;
            (Some(desk), Some(access))
        }
    };
    // A cluster instance's fence (leases and the shared delivery record) guards its sinks.
    let cluster = match &options.fixture {
        Source::Cluster(source) => {
            let whole_stream = compiled.iter().any(|rule| !rule.per_device);
            let (ownership, fence) = open_fence(source, config, whole_stream, &metrics).map_err(RunError::Nats)?;
            Some((ownership, Arc::new(fence)))
        }
        _ => None,
    };
    let http = match http_addr {
        None => None,
        Some(addr) => Some(
            http::start(
                &runtime,
                addr,
                config.http.any_port_if_taken,
                config.http.token.clone(),
                Arc::clone(&metrics),
                Arc::clone(&live),
                desk_access,
            )
            .map_err(|e| match e {
                HttpError::OpenWithoutToken(_) => RunError::Config(e.to_string()),
                bind_failed => RunError::Http(bind_failed),
            })?,
        ),
    };

    // A run on a state directory continues the files the run before it wrote.
    let resumes = state.is_some();
    let rotation = deadletter::Rotation {
        max_bytes: config.dead_letters.max_file_mb.saturating_mul(1024 * 1024),
        keep: config.dead_letters.max_files,
    };
    let (dead_letters, dead_letter_writer) =
        deadletter::start(&options.dead_letter_path, rotation, DEAD_LETTER_QUEUE, resumes)
            .map_err(io("opening the dead-letter file"))?;
    let mut sink_config = options.sinks.clone();
    sink_config.append |= resumes;
    let mut sinks = match &options.fixture {
        Source::Partition(partition) => {
            let forward = ForwardSink::new(partition.partition, partition.epoch, partition.forward.clone());
            vec![Box::new(forward) as Box<dyn sink::Sink>]
        }
        _ => sink::open(&sink_config, &metrics)?,
    };
    if http.is_some() {
        sinks.push(Box::new(DashboardFeed::new(Arc::clone(&live))));
    }
    let durable = match &state {
        Some(state) => Some(Durable::open(
            &state.dir,
            state.checkpoint.as_ref(),
            Arc::clone(&metrics),
        )?),
        None => None,
    };
    let sink = sink::start(
        sinks,
        options.sinks.collect,
        warnings_rx,
        durable,
        desk,
        cluster
            .as_ref()
            .map(|(_, fence)| Arc::clone(fence) as Arc<dyn sink::Fence>),
        Arc::clone(&metrics),
    )?;

    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let results_tx = options.capture_results.then_some(results_tx);

    // Rules: one task each, fed by one queue each.
    let table_names: Vec<String> = catalog.tables().iter().map(|t| t.name.clone()).collect();
    let context = WorkerContext {
        results: results_tx.clone(),
        metrics: Arc::clone(&metrics),
        warnings: warnings_tx.clone(),
        clock: options.clock,
        table_name: String::new(),
        table_names,
        inputs: 1,
        close_at_end: state.is_none(),
    };
    // A run on a state directory starts from its checkpoint; a cluster partition from the
    // checkpoint its previous owner stored.
    let resumed = match &options.fixture {
        Source::Partition(feed) => feed.resume.as_deref(),
        _ => None,
    };
    let mut saved: BTreeMap<String, RuleSnapshot> = state
        .as_ref()
        .and_then(|s| s.checkpoint.as_ref())
        .or(resumed)
        .map(|c| c.rules.iter().map(|r| (r.rule.clone(), r.clone())).collect())
        .unwrap_or_default();
    let last_arrivals = last_arrivals(saved.values());
    let mut rule_set = RuleSet::new(context, runtime.handle().clone());
    for rule in compiled {
        let from = saved.remove(&rule.id);
        rule_set.start_from(rule, from);
    }
    // Rules removed while cityops was down resolve their alerts.
    for removed in saved.into_values() {
        for warning in resolutions_of_removed(&removed, options.clock, &metrics) {
            let _ = warnings_tx.blocking_send(Notice::Warning(warning));
        }
    }
    let fanout = rule_set.apply();
    let rule_set = Arc::new(Mutex::new(rule_set));
    // A cluster instance's partitions send their warnings into this run's sink queue.
    let mut cluster_warnings = cluster.is_some().then(|| warnings_tx.clone());
    if let Some((ownership, _)) = &cluster {
        ownership.drain_through(&warnings_tx);
    }
    drop(warnings_tx);
    drop(results_tx);

    // Decode workers: each owns some tables, so every table keeps its arrival order.
    let workers = match engine.decode_threads {
        0 => cores.min(catalog.tables().len()).max(1),
        n => n,
    };
    let (handoff, receivers) = Handoff::new(
        workers,
        pattern.clone(),
        catalog.clone(),
        engine.queue_capacity,
        Arc::clone(&metrics),
    );
    let decoder = Decoder::new(catalog.clone(), pattern, engine.max_payload_bytes, engine.max_future.0);
    let settings = DecodeSettings {
        batch_rows: engine.batch_rows,
        linger: Duration::from_millis(engine.linger.0.max(0) as u64),
        dry_linger: Duration::from_millis(engine.dry_linger.0.max(0) as u64),
        idle_timeout_ms: engine.idle_timeout.0,
    };
    let mut decode_threads = Vec::new();
    for (w, rx) in receivers.into_iter().enumerate() {
        let tables = handoff.tables_of(w);
        let mut worker = DecodeWorker::new(
            w,
            decoder.clone(),
            &catalog,
            tables,
            &fanout,
            dead_letters.clone(),
            Arc::clone(&metrics),
            settings,
        );
        worker.restore_arrivals(&last_arrivals);
        let thread = std::thread::Builder::new()
            .name(format!("decode-{w}"))
            .spawn(move || worker.run(rx))
            .map_err(io("starting a decode worker"))?;
        decode_threads.push(thread);
    }
    drop(fanout);
    let handoff = Arc::new(handoff);

    // Hot reload watches the rule files while the source runs.
    let checkpoint_after: CheckpointAfter = Arc::default();
    let interval = config.rules.reload_interval.0;
    let watcher = if interval > 0 {
        let reloader = Reloader::new(
            &config.rules.dir,
            catalog.clone(),
            engine.clone(),
            Arc::clone(&rule_set),
            reroute_through(Arc::clone(&handoff), Arc::clone(&checkpoint_after)),
            Arc::clone(&metrics),
            runtime.handle().clone(),
        );
        let interval = Duration::from_millis(interval as u64);
        Some(
            Watcher::start(reloader, interval, options.reload_reports.clone())
                .map_err(io("starting the rule watcher"))?,
        )
    } else {
        None
    };

    // The source runs on this thread until the fixture ends (or the live source stops).
    let started = Instant::now();
    let shutdown = options.stop.clone().unwrap_or_default();
    let sourced: Result<(), RunError> = match state {
        None => match &options.fixture {
            Source::Mqtt(source) => from_broker(source, &handoff, &metrics, &shutdown, None),
            Source::Cluster(source) => {
                let ownership = cluster
                    .as_ref()
                    .map(|(ownership, _)| Arc::clone(ownership))
                    .ok_or_else(|| RunError::Internal("a cluster run without its fence".to_string()))?;
                let partitions = partitions::Partitions {
                    config: config.clone(),
                    warnings: cluster_warnings
                        .take()
                        .ok_or_else(|| RunError::Internal("the cluster's warning queue is gone".to_string()))?,
                    metrics: Arc::clone(&metrics),
                    dead_letter_path: options.dead_letter_path.clone(),
                };
                partitions.run_instance(source, ownership, &shutdown)
            }
            Source::Partition(partition) => {
                feed(&partition.items, &mut Bursting::new(&handoff), &metrics, partition.plan)
                    .map(|_| ())
                    .map_err(|_| RunError::DecodeStopped)
            }
            // A channel may wait for its next message: what it sent goes on at once.
            channel @ Source::Channel(_) => {
                replay_source(channel, &mut &*handoff, options.speed, &metrics, &dead_letters, 0)
            }
            file => replay_source(
                file,
                &mut Bursting::new(&handoff),
                options.speed,
                &metrics,
                &dead_letters,
                0,
            ),
        },
        Some(state) => {
            let live_mqtt = matches!(options.fixture, Source::Mqtt(_));
            let recovered = recover(&state, &handoff, &metrics, live_mqtt, &shutdown)?;
            metrics.readiness.recovered.store(true, Ordering::Relaxed);
            *checkpoint_after.lock() = Some(recovered.intake.clone());
            let mut intake = recovered.intake.clone();
            let sourced = match &options.fixture {
                Source::Mqtt(source) => {
                    let logged = Logged {
                        intake: recovered.intake.clone(),
                        acks: recovered
                            .acks
                            .ok_or_else(|| RunError::Internal("no ack channel".to_string()))?,
                        expects_session: !state.dir.fresh,
                        recent: recovered.recent,
                    };
                    from_broker(source, &handoff, &metrics, &shutdown, Some(logged))
                }
                replayed => replay_source(
                    replayed,
                    &mut intake,
                    options.speed,
                    &metrics,
                    &dead_letters,
                    recovered.messages,
                ),
            };
            // The source has ended (a stop, its idle exit, its fixture's end): a log that
            // cannot be written must not hold the run up.
            shutdown.request();
            // A clean stop leaves a checkpoint behind: the next start replays nothing.
            let _ = intake.send(Intake::Checkpoint);
            drop(intake);
            drop(recovered.intake);
            checkpoint_after.lock().take();
            recovered.stage.finish().map_err(|_| RunError::DecodeStopped)?;
            sourced
        }
    };
    // No reload after the end: stop watching, then end the stream.
    if let Some(watcher) = watcher {
        watcher.stop();
    }
    let ended = handoff.broadcast(|| Ingest::End);
    drop(handoff);

    // Shutdown in pipeline order: decode workers, rules, sink, dead letters.
    for thread in decode_threads {
        thread
            .join()
            .map_err(|_| RunError::Internal("a decode worker panicked".to_string()))?;
    }
    let rule_set = Arc::try_unwrap(rule_set)
        .map_err(|_| RunError::Internal("the rule set is still shared after the watcher stopped".to_string()))?
        .into_inner()
        .map_err(|_| RunError::Internal("the rule set's lock was poisoned".to_string()))?;
    let reports = runtime
        .block_on(rule_set.finish())
        .map_err(|e| RunError::Internal(format!("a rule task failed: {e}")))?;
    let wall = started.elapsed();
    if let Some(server) = http {
        server.stop();
    }
    drop(dead_letters);
    let warnings = sink.finish()?;
    dead_letter_writer.finish().map_err(io("writing dead letters"))?;
    sourced?;
    ended.map_err(|_| RunError::DecodeStopped)?;
    let firing = reports.iter().map(|r| r.firing.len()).sum();
    let mut results = Vec::new();
    while let Ok(result) = results_rx.try_recv() {
        results.push(result);
    }
    Ok(RunOutcome {
        summary: Summary::collect(&metrics, wall, firing),
        warnings,
        reports,
        rule_warnings,
        results,
    })
}

/// How the rule watcher hands a new fan-out to the decode workers: in-band on every queue,
/// so each table switches at one exact point of its stream.
/// With state, a checkpoint follows every reroute at once: the log holds messages, not rule
/// versions, so a recovery must not replay across a reload.
fn reroute_through(handoff: Arc<Handoff>, checkpoint_after: CheckpointAfter) -> PublishFanout {
    Box::new(move |fanout| {
        handoff.broadcast(|| Ingest::Reroute(Arc::clone(&fanout)))?;
        if let Some(intake) = checkpoint_after.lock().as_ref() {
            let _ = intake.send(Intake::Checkpoint);
        }
        Ok(())
    })
}

/// Where a reroute asks for a checkpoint (the log stage's queue, once recovery started it).
type CheckpointAfter = Arc<parking_lot::Mutex<Option<crossbeam_channel::Sender<Intake>>>>;
