//! The running rule set: one task per unit, each fed by its own queue, and the fan-out that
//! sends each table's events to the queues of the units reading it. A unit is one rule, or
//! a window family: the rules sharing one aggregation (`compile::family`), so a rule book
//! of many threshold variants aggregates each table's rows once per family, not once per
//! rule. Changes are staged (`start`, `remove`) and applied together (`apply`): each unit
//! they touch is replaced by a new one, which waits for the units it replaces to drain
//! their queues (the decode workers stop feeding them at the in-band reroute), then takes
//! over their rules' alerts and, for a family that goes on, its open windows; so no event
//! is judged twice or by neither version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::compile::CompiledRule;
use super::worker::{Handover, RuleReport, RuleWorker, WorkerContext};
use crate::flow::{RuleFanout, TableEvent};
use crate::state::snapshot::RuleSnapshot;

/// Events a unit's queue holds before the decode worker waits.
const RULE_QUEUE: usize = 64;

/// One unit at work.
struct Running {
    rules: Vec<Arc<CompiledRule>>,
    queue: mpsc::Sender<TableEvent>,
    task: JoinHandle<RuleWorker>,
}

/// A rule to start, with its state in a checkpoint (or none: it starts afresh).
type Starting = (Arc<CompiledRule>, Option<RuleSnapshot>);

/// A change waiting for `apply`.
enum Change {
    /// A rule, or a new version of one.
    Start(Box<Starting>),
    Remove(String),
}

/// A new unit waiting for its part of the replaced units' state.
struct Heir {
    key: String,
    rules: Vec<String>,
    inherit: oneshot::Sender<Vec<Handover>>,
}

/// A unit being replaced: its key, its rules' ids, and its task, which ends once it drained.
struct Replaced {
    key: String,
    rules: Vec<String>,
    task: JoinHandle<RuleWorker>,
}

impl Heir {
    /// Whether the heir takes anything from `replaced`: its state (same key) or a rule.
    fn needs(&self, replaced: &Replaced) -> bool {
        replaced.key == self.key || replaced.rules.iter().any(|id| self.rules.contains(id))
    }
}

/// Every unit at work, by unit key (`unit_key`).
pub(crate) struct RuleSet {
    units: BTreeMap<String, Running>,
    /// The unit each running rule is in, by rule id.
    unit_of: BTreeMap<String, String>,
    staged: Vec<Change>,
    /// Hand-overs under way: replaced units' state going to the new ones, removed rules
    /// resolving their alerts.
    retiring: Vec<JoinHandle<()>>,
    /// The context every worker shares; the per-rule fields are filled in per rule.
    context: WorkerContext,
    runtime: tokio::runtime::Handle,
}

/// Which unit a rule runs in: its window family's, or its own.
fn unit_key(rule: &CompiledRule) -> String {
    match &rule.family {
        Some(family) => format!("family {family}"),
        None => format!("rule {}", rule.id),
    }
}

impl RuleSet {
    pub(crate) fn new(context: WorkerContext, runtime: tokio::runtime::Handle) -> Self {
        RuleSet {
            units: BTreeMap::new(),
            unit_of: BTreeMap::new(),
            staged: Vec::new(),
            retiring: Vec::new(),
            context,
            runtime,
        }
    }

    /// Stages a rule, or a new version of one. Returns the running version it replaces.
    pub(crate) fn start(&mut self, rule: CompiledRule) -> Option<String> {
        self.start_from(rule, None)
    }

    /// Stages a rule from its state in a checkpoint (`saved`), or afresh.
    pub(crate) fn start_from(&mut self, rule: CompiledRule, saved: Option<RuleSnapshot>) -> Option<String> {
        let replaced = self.version_of(&rule.id);
        self.staged.push(Change::Start(Box::new((Arc::new(rule), saved))));
        replaced
    }

    /// Stages a rule's removal: it drains its queue, then resolves its firing alerts.
    /// Returns the removed version.
    pub(crate) fn remove(&mut self, id: &str) -> Option<String> {
        let removed = self.version_of(id)?;
        self.context.metrics.rules.remove(id);
        self.staged.push(Change::Remove(id.to_string()));
        Some(removed)
    }

    /// (id, version) of every running rule, by id.
    pub(crate) fn versions(&self) -> BTreeMap<String, String> {
        self.units
            .values()
            .flat_map(|unit| unit.rules.iter().map(|r| (r.id.clone(), r.version.clone())))
            .collect()
    }

    /// Applies the staged changes and returns the new fan-out, for the decode workers.
    pub(crate) fn apply(&mut self) -> RuleFanout {
        let staged = std::mem::take(&mut self.staged);
        if !staged.is_empty() {
            self.apply_changes(staged);
        }
        self.fanout()
    }

    /// Waits for every unit to finish its input (the decode workers have ended) and
    /// returns their rules' reports, by rule id.
    pub(crate) async fn finish(self) -> Result<Vec<RuleReport>, tokio::task::JoinError> {
        let RuleSet { units, retiring, .. } = self;
        let mut reports = Vec::new();
        for (_, running) in units {
            drop(running.queue);
            reports.extend(running.task.await?.reports());
        }
        for task in retiring {
            task.await?;
        }
        reports.sort_by(|a, b| a.rule.cmp(&b.rule));
        Ok(reports)
    }

    fn version_of(&self, id: &str) -> Option<String> {
        let unit = self.units.get(self.unit_of.get(id)?)?;
        unit.rules.iter().find(|r| r.id == id).map(|r| r.version.clone())
    }

    /// Replaces every unit the changes touch, and starts the new ones.
    fn apply_changes(&mut self, staged: Vec<Change>) {
        let mut started: BTreeMap<String, Starting> = BTreeMap::new();
        let mut removed = BTreeSet::new();
        for change in staged {
            match change {
                Change::Start(starting) => {
                    removed.remove(&starting.0.id);
                    started.insert(starting.0.id.clone(), *starting);
                }
                Change::Remove(id) => {
                    started.remove(&id);
                    removed.insert(id);
                }
            }
        }
        // The touched units: those of the changed rules, and those the new versions join.
        let mut touched: BTreeSet<String> = started
            .keys()
            .chain(&removed)
            .filter_map(|id| self.unit_of.get(id).cloned())
            .collect();
        touched.extend(
            started
                .values()
                .map(|(rule, _)| unit_key(rule))
                .filter(|key| self.units.contains_key(key)),
        );

        // Their rules that go on unchanged, and the new versions, by the unit they run in.
        let mut members: BTreeMap<String, Vec<Starting>> = BTreeMap::new();
        let mut replaced = Vec::new();
        for key in touched {
            let Some(old) = self.units.remove(&key) else { continue };
            let rules = old.rules.iter().map(|r| r.id.clone()).collect();
            for rule in old.rules {
                self.unit_of.remove(&rule.id);
                if !started.contains_key(&rule.id) && !removed.contains(&rule.id) {
                    members.entry(key.clone()).or_default().push((rule, None));
                }
            }
            // Dropping the old queue's sender here, and the decode workers' copies at the
            // reroute, ends the old unit's input.
            drop(old.queue);
            replaced.push(Replaced {
                key,
                rules,
                task: old.task,
            });
        }
        for (rule, saved) in started.into_values() {
            members.entry(unit_key(&rule)).or_default().push((rule, saved));
        }

        let mut heirs = Vec::new();
        for (key, unit) in members {
            let (rules, saved): (Vec<_>, Vec<_>) = unit.into_iter().unzip();
            let saved: Vec<RuleSnapshot> = saved.into_iter().flatten().collect();
            let (queue, rx) = mpsc::channel(RULE_QUEUE);
            let mut worker = RuleWorker::new(rules.clone(), self.context.clone());
            let task = if replaced.is_empty() {
                self.runtime.spawn(async move {
                    if !saved.is_empty() {
                        worker.restore(saved).await;
                    }
                    worker.run(rx).await
                })
            } else {
                let (inherit, parts) = oneshot::channel();
                heirs.push(Heir {
                    key: key.clone(),
                    rules: rules.iter().map(|r| r.id.clone()).collect(),
                    inherit,
                });
                let unit = key.clone();
                self.runtime.spawn(async move {
                    match parts.await {
                        Ok(parts) => worker.take_over(&unit, parts).await,
                        Err(_) => tracing::error!(unit = %unit, "the units this one replaces failed; its rules start afresh, their open windows lost (report this as a bug)"),
                    }
                    worker.run(rx).await
                })
            };
            for rule in &rules {
                self.unit_of.insert(rule.id.clone(), key.clone());
            }
            self.units.insert(key, Running { rules, queue, task });
        }
        if !replaced.is_empty() {
            self.retiring.push(self.runtime.spawn(hand_over(replaced, heirs)));
        }
    }

    /// The queues of the running units, per table.
    fn fanout(&self) -> RuleFanout {
        let mut fanout = RuleFanout::new(self.context.table_names.len());
        for running in self.units.values() {
            let rules: Vec<&str> = running.rules.iter().map(|r| r.id.as_str()).collect();
            let watched = running.rules.first().map_or(&[][..], |r| r.watched.as_slice());
            fanout.add(&rules, watched, &running.queue);
        }
        fanout
    }
}

/// Waits for the replaced units to drain, hands each new unit its part of their state as
/// soon as every unit it takes from has drained (a unit on an unchanged table does not wait
/// for another table's drain), then resolves the alerts of the rules no unit took (the
/// removed ones).
async fn hand_over(replaced: Vec<Replaced>, heirs: Vec<Heir>) {
    let mut heirs: Vec<(Heir, Vec<usize>)> = heirs
        .into_iter()
        .map(|heir| {
            let needs = (0..replaced.len()).filter(|&i| heir.needs(&replaced[i])).collect();
            (heir, needs)
        })
        .collect();
    let mut handovers: Vec<Option<Handover>> = replaced.iter().map(|_| None).collect();
    let mut drained = vec![false; replaced.len()];
    let mut draining: FuturesUnordered<_> = replaced
        .into_iter()
        .enumerate()
        .map(|(i, unit)| async move { (i, unit.key, unit.task.await) })
        .collect();
    loop {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut heirs)
            .into_iter()
            .partition(|(_, needs)| needs.iter().all(|&i| drained[i]));
        heirs = waiting;
        for (heir, needs) in ready {
            let mut parts = Vec::new();
            for &i in &needs {
                if let Some(handover) = handovers[i].as_mut() {
                    parts.push(handover.split_off(&heir.key, &heir.rules));
                }
            }
            let _ = heir.inherit.send(parts);
        }
        let Some((i, key, result)) = draining.next().await else {
            break;
        };
        drained[i] = true;
        match result {
            Ok(worker) => handovers[i] = Some(worker.hand_over(key)),
            Err(e) => {
                tracing::error!(unit = %key, error = %e, "a replaced unit's task failed; its rules start afresh, their open windows lost and their firing alerts unresolved (resolve them by hand in the receivers; report this panic as a bug)")
            }
        }
    }
    for rest in handovers.into_iter().flatten() {
        rest.retire().await;
    }
}
