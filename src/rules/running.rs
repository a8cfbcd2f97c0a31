//! The running rule set: one task per rule, each fed by its own queue, and the fan-out that
//! sends each table's events to the queues of the rules reading it. Rules are swapped one
//! at a time: a new version's task first waits for the old version to drain its queue
//! (the decode workers stop feeding it at the in-band reroute), then takes over its alerts,
//! so no event is judged twice or by neither version.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::compile::CompiledRule;
use super::worker::{RuleReport, RuleWorker, WorkerContext};
use crate::flow::{RuleFanout, TableEvent};
use crate::state::snapshot::RuleSnapshot;

/// Events a rule's queue holds before the decode worker waits.
const RULE_QUEUE: usize = 64;

/// One rule version at work.
struct Running {
    rule: Arc<CompiledRule>,
    queue: mpsc::Sender<TableEvent>,
    task: JoinHandle<RuleWorker>,
}

/// Every rule at work, by id.
pub(crate) struct RuleSet {
    running: BTreeMap<String, Running>,
    /// Removed rules still draining their queues and resolving their alerts.
    retiring: Vec<JoinHandle<()>>,
    /// The context every worker shares; the per-rule fields are filled in at spawn.
    context: WorkerContext,
    runtime: tokio::runtime::Handle,
}

impl RuleSet {
    pub(crate) fn new(context: WorkerContext, runtime: tokio::runtime::Handle) -> Self {
        RuleSet {
            running: BTreeMap::new(),
            retiring: Vec::new(),
            context,
            runtime,
        }
    }

    /// Starts a rule, or a new version of one: the new version takes over from the old
    /// one once the old one has drained. Returns the replaced version.
    pub(crate) fn start(&mut self, rule: CompiledRule) -> Option<String> {
        self.start_from(rule, None)
    }

    /// Starts a rule from its state in a checkpoint (`saved`), or afresh.
    pub(crate) fn start_from(&mut self, rule: CompiledRule, saved: Option<RuleSnapshot>) -> Option<String> {
        let rule = Arc::new(rule);
        let (queue, rx) = mpsc::channel(RULE_QUEUE);
        let mut worker = RuleWorker::new(Arc::clone(&rule), self.context_for(&rule));
        let previous = self.running.remove(&rule.id);
        let replaced = previous.as_ref().map(|p| p.rule.version.clone());
        let task = match previous {
            None => self.runtime.spawn(async move {
                if let Some(saved) = saved {
                    worker.restore(saved).await;
                }
                worker.run(rx).await
            }),
            Some(previous) => {
                // Dropping the old queue's sender here, and the decode workers' copies at
                // the reroute, ends the old version's input.
                drop(previous.queue);
                let (old_task, id) = (previous.task, rule.id.clone());
                self.runtime.spawn(async move {
                    let mut worker = worker;
                    match old_task.await {
                        Ok(old) => worker.take_over(old).await,
                        Err(e) => {
                            tracing::error!(rule = %id, error = %e, "the previous version failed; starting afresh, its open windows lost (report this panic as a bug)")
                        }
                    }
                    worker.run(rx).await
                })
            }
        };
        self.running.insert(rule.id.clone(), Running { rule, queue, task });
        replaced
    }

    /// Stops a rule: it drains its queue, then resolves its firing alerts.
    pub(crate) fn remove(&mut self, id: &str) -> Option<String> {
        let removed = self.running.remove(id)?;
        self.context.metrics.rules.remove(id);
        drop(removed.queue);
        let (id, task) = (removed.rule.id.clone(), removed.task);
        self.retiring.push(self.runtime.spawn(async move {
            match task.await {
                Ok(mut old) => old.retire().await,
                Err(e) => tracing::error!(rule = %id, error = %e, "a removed rule's task failed; its firing alerts were not resolved (resolve them by hand in the receivers; report this panic as a bug)"),
            }
        }));
        Some(removed.rule.version.clone())
    }

    /// (id, version) of every running rule, by id.
    pub(crate) fn versions(&self) -> BTreeMap<String, String> {
        self.running
            .iter()
            .map(|(id, r)| (id.clone(), r.rule.version.clone()))
            .collect()
    }

    /// The queues of the running rules, per table.
    pub(crate) fn fanout(&self) -> RuleFanout {
        let mut fanout = RuleFanout::new(self.context.table_names.len());
        for running in self.running.values() {
            fanout.add(&running.rule.id, &running.rule.watched, &running.queue);
        }
        fanout
    }

    /// Waits for every rule to finish its input (the decode workers have ended) and
    /// returns their reports, by rule id.
    pub(crate) async fn finish(self) -> Result<Vec<RuleReport>, tokio::task::JoinError> {
        let RuleSet { running, retiring, .. } = self;
        let mut reports = Vec::new();
        for (_, running) in running {
            drop(running.queue);
            reports.push(running.task.await?.report());
        }
        for task in retiring {
            task.await?;
        }
        Ok(reports)
    }

    fn context_for(&self, rule: &CompiledRule) -> WorkerContext {
        let mut context = self.context.clone();
        context.table_name = rule.info.table.clone();
        // A `devices` rule may watch several tables and ends after an End from each.
        context.inputs = rule.watched.len();
        context
    }
}
