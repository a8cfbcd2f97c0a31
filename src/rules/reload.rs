//! Hot reload: while the pipeline runs, a watcher thread reads the rule files every
//! `rules.reload_interval`, plans each changed or new rule exactly as `cityops check` does,
//! and swaps it in (`running::RuleSet`), then publishes the new fan-out through the
//! callback the pipeline gave it (which hands it to the decode workers in-band). A rule
//! that does not plan is rejected with its problems and its running version goes on; rules
//! whose text did not change are not touched and keep their windows and alerts. A deleted
//! rule stops and resolves its firing alerts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::compile::compile;
use super::loader::load_dir;
use super::problem::{Problem, Severity};
use super::running::RuleSet;
use crate::config::EngineConfig;
use crate::flow::{Closed, RuleFanout};
use crate::metrics::Metrics;
use crate::schema::Catalog;

/// One rule's version change: `from: None` is an added rule, `to: None` a removed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    pub id: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl std::fmt::Display for Swap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "∅".to_string());
        write!(f, "{} {} → {}", self.id, version(&self.from), version(&self.to))
    }
}

/// What one reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    pub swapped: Vec<Swap>,
    /// Errors that kept a rule's running version (or kept a new rule out).
    pub rejected: Vec<Problem>,
    /// Warnings on versions that were swapped in.
    pub warnings: Vec<Problem>,
    /// Every running rule's version after the reload, by id.
    pub versions: BTreeMap<String, String>,
}

/// How the reloader hands a new fan-out on; `Err` when the decode workers have gone.
pub(crate) type PublishFanout = Box<dyn Fn(Arc<RuleFanout>) -> Result<(), Closed> + Send>;

/// Checks the rule files against the running rules and swaps changes in.
pub(crate) struct Reloader {
    dir: PathBuf,
    catalog: Catalog,
    engine: EngineConfig,
    rules: Arc<Mutex<RuleSet>>,
    /// Hands a new fan-out to the decode workers (built by the pipeline, which knows them).
    publish: PublishFanout,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    /// Per rule id, what was last rejected (its version, or its load problems), so one
    /// broken edit is reported once rather than at every check.
    rejected: HashMap<String, String>,
}

impl Reloader {
    pub(crate) fn new(
        dir: &Path,
        catalog: Catalog,
        engine: EngineConfig,
        rules: Arc<Mutex<RuleSet>>,
        publish: PublishFanout,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Reloader {
            dir: dir.to_path_buf(),
            catalog,
            engine,
            rules,
            publish,
            metrics,
            runtime,
            rejected: HashMap::new(),
        }
    }

    /// One check. Returns what changed, or `None` when nothing did.
    pub(crate) fn check(&mut self) -> Result<Option<ReloadReport>, Closed> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        let (files, problems) = load_dir(&self.dir);
        // A problem with the directory itself (not one file) says nothing about which
        // rules were removed: keep everything as it is until the directory reads again.
        if problems.iter().any(|p| rule_id(&p.path).is_none()) {
            return Ok(None);
        }
        let mut broken: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
        for problem in problems.into_iter().filter(|p| p.severity == Severity::Error) {
            if let Some(id) = rule_id(&problem.path) {
                broken.entry(id).or_default().push(problem);
            }
        }
        let Ok(mut rules) = self.rules.lock() else {
            return Ok(None);
        };
        let running = rules.versions();
        let mut report = ReloadReport::default();
        for (id, problems) in &broken {
            let mark = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
            if self.rejected.get(id) != Some(&mark) {
                self.rejected.insert(id.clone(), mark);
                report.rejected.extend(problems.iter().cloned());
            }
        }
        for file in &files {
            let version = file.version();
            if running.get(&file.id) == Some(&version) {
                self.rejected.remove(&file.id);
                continue;
            }
            if self.rejected.get(&file.id) == Some(&version) {
                continue;
            }
            match self.runtime.block_on(compile(file, &self.catalog, &self.engine)) {
                Ok((rule, warnings)) => {
                    self.rejected.remove(&file.id);
                    report.warnings.extend(warnings);
                    let from = rules.start(rule);
                    report.swapped.push(Swap {
                        id: file.id.clone(),
                        from,
                        to: Some(version),
                    });
                }
                Err(problems) => {
                    self.rejected.insert(file.id.clone(), version);
                    report
                        .rejected
                        .extend(problems.into_iter().filter(|p| p.severity == Severity::Error));
                }
            }
        }
        for id in running.keys() {
            if !files.iter().any(|f| &f.id == id) && !broken.contains_key(id) {
                let from = rules.remove(id);
                report.swapped.push(Swap {
                    id: id.clone(),
                    from,
                    to: None,
                });
            }
        }
        if report.swapped.is_empty() && report.rejected.is_empty() {
            return Ok(None);
        }
        if !report.swapped.is_empty() {
            (self.publish)(Arc::new(rules.apply()))?;
        }
        report.versions = rules.versions();
        drop(rules);
        self.log(&report);
        Ok(Some(report))
    }

    fn log(&self, report: &ReloadReport) {
        let metrics = &self.metrics;
        metrics
            .rules_reloaded
            .fetch_add(report.swapped.len() as u64, Ordering::Relaxed);
        metrics
            .reloads_rejected
            .fetch_add(report.rejected.len() as u64, Ordering::Relaxed);
        for problem in &report.rejected {
            tracing::warn!(
                "rule change rejected, the running version goes on (fix the rule and save it again): {problem}"
            );
        }
        for problem in &report.warnings {
            tracing::warn!("{problem}");
        }
        if !report.swapped.is_empty() {
            let swapped: Vec<String> = report.swapped.iter().map(Swap::to_string).collect();
            let versions: Vec<String> = report.versions.iter().map(|(id, v)| format!("{id}@{v}")).collect();
            tracing::info!(
                "rules reloaded: {}; running: {}",
                swapped.join(", "),
                versions.join(" ")
            );
        }
    }
}

/// The rule id a problem belongs to: the stem of a `.sql` file.
fn rule_id(path: &Path) -> Option<String> {
    if path.extension().is_none_or(|e| e != "sql") {
        return None;
    }
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// The watcher thread; stops at `stop`.
pub(crate) struct Watcher {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    /// Checks every `interval`; each reload's report also goes to `reports`, when given.
    pub(crate) fn start(
        mut reloader: Reloader,
        interval: Duration,
        reports: Option<crossbeam_channel::Sender<ReloadReport>>,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("rule-reload".to_string())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match reloader.check() {
                        Ok(Some(report)) => {
                            if let Some(reports) = &reports {
                                let _ = reports.send(report);
                            }
                        }
                        Ok(None) => {}
                        Err(Closed) => break,
                    }
                }
            })?;
        Ok(Watcher { stop, thread })
    }

    /// Stops watching and waits for a check in progress to finish.
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
