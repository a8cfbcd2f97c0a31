//! Per-rule health for the operations centre (`/api/rules`, the dashboard's rule table and
//! `/metrics`): each rule's version, when it last evaluated, rows in, breaches, errors, the
//! state it holds, and what it costs (evaluation time, and its share of all rules'). Rule workers update their entry with relaxed atomics as they work;
//! readers take a snapshot. An entry outlives a rule version: a new version takes over the
//! counters of the old one, and a removed rule's entry goes away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

use crate::time::{EpochMs, format_ms, wall_now_ms};

/// The live counters of one rule.
#[derive(Debug, Default)]
pub struct RuleHealth {
    version: Mutex<String>,
    kind: Mutex<String>,
    table: String,
    description: String,
    /// Rows fed to the rule.
    pub rows_in: AtomicU64,
    /// Batches the rule took in.
    pub batches: AtomicU64,
    /// Evaluations judged: windows closed, sessions closed, row batches, device snapshots.
    pub evaluations: AtomicU64,
    /// Result rows that were breaches.
    pub breaches: AtomicU64,
    pub errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Wall-clock time of the latest evaluation (0: none yet).
    last_evaluation_ms: AtomicI64,
    /// Event time up to which the rule has judged (windows' ends, row times).
    judged_through_ms: AtomicI64,
    /// Open windows, open sessions or watched devices: the state the rule holds now.
    pub state_size: AtomicU64,
    /// Alerts pending or firing.
    pub alerts: AtomicU64,
    /// Time spent evaluating, for the mean per batch.
    pub eval_ns: AtomicU64,
    /// How many rules share this rule's windows and aggregation, itself included.
    pub family_size: AtomicU64,
}

impl RuleHealth {
    /// Notes one evaluation that judged event time up to `through_ms`.
    pub fn evaluated(&self, through_ms: EpochMs) {
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        self.last_evaluation_ms.store(wall_now_ms(), Ordering::Relaxed);
        self.judged_through_ms.fetch_max(through_ms, Ordering::Relaxed);
    }

    pub fn failed(&self, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error.to_string());
    }

    fn view(&self, rule: &str) -> RuleHealthView {
        let at = |ms: i64| (ms > 0).then(|| format_ms(ms));
        let batches = self.batches.load(Ordering::Relaxed);
        let eval_ns = self.eval_ns.load(Ordering::Relaxed);
        RuleHealthView {
            rule: rule.to_string(),
            version: self.version.lock().clone(),
            kind: self.kind.lock().clone(),
            table: self.table.clone(),
            description: self.description.clone(),
            rows_in: self.rows_in.load(Ordering::Relaxed),
            batches,
            evaluations: self.evaluations.load(Ordering::Relaxed),
            last_evaluation: at(self.last_evaluation_ms.load(Ordering::Relaxed)),
            judged_through: at(self.judged_through_ms.load(Ordering::Relaxed)),
            breaches: self.breaches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
            state_size: self.state_size.load(Ordering::Relaxed),
            alerts: self.alerts.load(Ordering::Relaxed),
            mean_batch_eval_us: if batches == 0 {
                0.0
            } else {
                (eval_ns as f64 / batches as f64 / 1e3 * 10.0).round() / 10.0
            },
            eval_seconds: eval_ns as f64 / 1e9,
            cost_share: 0.0,
            family_size: self.family_size.load(Ordering::Relaxed).max(1),
        }
    }
}

/// One rule's health as `/api/rules` gives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleHealthView {
    pub rule: String,
    pub version: String,
    /// `row`, `tumble`, `hop`, `cumulate`, `session` or `devices`.
    pub kind: String,
    pub table: String,
    pub description: String,
    pub rows_in: u64,
    pub batches: u64,
    pub evaluations: u64,
    pub last_evaluation: Option<String>,
    pub judged_through: Option<String>,
    pub breaches: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub state_size: u64,
    pub alerts: u64,
    pub mean_batch_eval_us: f64,
    /// Time spent evaluating this rule since it started.
    pub eval_seconds: f64,
    /// This rule's part of every rule's evaluation time (0 to 1): which rules a large rule
    /// book spends its time on. A family's members share its time evenly.
    pub cost_share: f64,
    /// How many rules share this rule's windows and aggregation (a window family), itself
    /// included: 1 when it runs alone.
    pub family_size: u64,
}

/// Every rule's health, by rule id.
#[derive(Debug, Default)]
pub struct RuleBoard {
    rules: Mutex<BTreeMap<String, Arc<RuleHealth>>>,
}

impl RuleBoard {
    /// The entry of a rule starting (or of a new version, which keeps the old counters).
    pub fn register(&self, rule: &str, version: &str, kind: &str, table: &str, description: &str) -> Arc<RuleHealth> {
        let mut rules = self.rules.lock();
        let entry = rules.entry(rule.to_string()).or_insert_with(|| {
            Arc::new(RuleHealth {
                table: table.to_string(),
                description: description.to_string(),
                ..RuleHealth::default()
            })
        });
        *entry.version.lock() = version.to_string();
        *entry.kind.lock() = kind.to_string();
        Arc::clone(entry)
    }

    /// Forgets a removed rule.
    pub fn remove(&self, rule: &str) {
        self.rules.lock().remove(rule);
    }

    /// Every rule's health now, by rule id.
    pub fn snapshot(&self) -> Vec<RuleHealthView> {
        let mut views: Vec<RuleHealthView> = self.rules.lock().iter().map(|(id, h)| h.view(id)).collect();
        let total: f64 = views.iter().map(|v| v.eval_seconds).sum();
        if total > 0.0 {
            for view in &mut views {
                view.cost_share = (view.eval_seconds / total * 1e4).round() / 1e4;
            }
        }
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_version_keeps_the_counters_and_a_removed_rule_leaves() {
        let board = RuleBoard::default();
        let v1 = board.register("gas_leak", "aaaa", "row", "gas", "Gas above LEL");
        v1.rows_in.fetch_add(10, Ordering::Relaxed);
        v1.evaluated(1_700_000_000_000);
        v1.failed("boom");
        let v2 = board.register("gas_leak", "bbbb", "tumble", "gas", "Gas above LEL");
        v2.rows_in.fetch_add(5, Ordering::Relaxed);
        let views = board.snapshot();
        assert_eq!(views.len(), 1);
        let view = &views[0];
        assert_eq!((view.version.as_str(), view.kind.as_str()), ("bbbb", "tumble"));
        assert_eq!((view.rows_in, view.evaluations, view.errors), (15, 1, 1));
        assert_eq!(view.last_error.as_deref(), Some("boom"));
        assert_eq!(view.judged_through.as_deref(), Some("2023-11-14T22:13:20.000Z"));
        assert!(view.last_evaluation.is_some());
        board.remove("gas_leak");
        assert!(board.snapshot().is_empty());
    }

    #[test]
    fn each_rule_gets_its_share_of_the_evaluation_time() {
        let board = RuleBoard::default();
        let cheap = board.register("cheap", "v", "row", "gas", "");
        let dear = board.register("dear", "v", "tumble", "water", "");
        board.register("idle", "v", "tumble", "water", "");
        cheap.eval_ns.fetch_add(250_000_000, Ordering::Relaxed);
        dear.eval_ns.fetch_add(750_000_000, Ordering::Relaxed);
        let shares: Vec<(String, f64, f64)> = board
            .snapshot()
            .into_iter()
            .map(|v| (v.rule, v.eval_seconds, v.cost_share))
            .collect();
        assert_eq!(
            shares,
            [
                ("cheap".to_string(), 0.25, 0.25),
                ("dear".to_string(), 0.75, 0.75),
                ("idle".to_string(), 0.0, 0.0)
            ]
        );
    }
}
