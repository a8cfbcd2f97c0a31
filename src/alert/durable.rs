//! The sink thread's durable side (with `--state`): it records each notification once every
//! sink has confirmed it, skips the notifications a recovery computes again that the sinks
//! already have, keeps what fires now, and assembles checkpoints from the rules' snapshots.
//! A checkpoint is written only once every sink has confirmed everything before its cut;
//! after the first one of a run (taken right after recovery) the sinks reconcile what their
//! receivers show (the retained MQTT states) with what fires.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::sink::{Sink, SinkError};
use super::warning::{Warning, WarningStatus};
use crate::flow::Cut;
use crate::metrics::Metrics;
use crate::state::StateDir;
use crate::state::assembly::{Assembler, checkpoint_at};
use crate::state::checkpoint::{self, Checkpoint};
use crate::state::deliveries::{Deliveries, Identity};
use crate::state::log;
use crate::state::snapshot::RuleSnapshot;

/// Deliveries, checkpoints and the alerts firing now, for the sink thread.
pub(crate) struct Durable {
    checkpoint_dir: PathBuf,
    log_dir: PathBuf,
    deliveries: Deliveries,
    /// Per rule: the latest checkpoint whose cut its notifications now come after.
    after_cut: HashMap<String, u64>,
    /// The checkpoint recovered from (0: none); rules not yet past a cut come after it.
    recovered_from: u64,
    /// Delivered, not yet confirmed by every sink nor recorded.
    unconfirmed: Vec<(Identity, u64)>,
    /// The alerts firing now, by rule and key.
    firing: BTreeMap<(String, String), Warning>,
    assembler: Assembler,
    reconciled: bool,
    metrics: Arc<Metrics>,
}

impl Durable {
    /// Opens the delivery record of `state`; `recovered` is the checkpoint the run starts
    /// from, whose firing alerts are what fires until the log's replay says otherwise.
    pub(crate) fn open(
        state: &StateDir,
        recovered: Option<&Checkpoint>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let deliveries = Deliveries::open(&state.deliveries_path()).map_err(SinkError::Write)?;
        let mut firing = BTreeMap::new();
        for rule in recovered.iter().flat_map(|c| &c.rules) {
            for alert in rule.alerts.iter().filter(|a| a.firing) {
                let warning = Warning::still_firing(rule, alert);
                firing.insert(firing_key(&warning), warning);
            }
        }
        Ok(Durable {
            checkpoint_dir: state.checkpoint_dir(),
            log_dir: state.log_dir(),
            deliveries,
            after_cut: HashMap::new(),
            recovered_from: recovered.map_or(0, |c| c.number),
            unconfirmed: Vec::new(),
            firing,
            assembler: Assembler::default(),
            reconciled: false,
            metrics,
        })
    }

    /// Whether the sinks already have the notification of this identity (a recovery computed
    /// it again).
    pub(crate) fn already_delivered(&self, identity: &Identity) -> bool {
        let again = self.deliveries.contains(identity);
        if again {
            self.metrics.state.resends_skipped.fetch_add(1, Relaxed);
        }
        again
    }

    /// Notes a notification that went to the sinks (`sent`) or was skipped as already sent;
    /// `paged`: the paging sinks had it (a silenced alert is not among what their receivers
    /// show as firing).
    pub(crate) fn delivered(&mut self, warning: &Warning, identity: Identity, sent: bool, paged: bool) {
        match warning.status {
            WarningStatus::Firing if paged => {
                self.firing.insert(firing_key(warning), warning.clone());
            }
            WarningStatus::Firing => {}
            WarningStatus::Resolved => {
                self.firing.remove(&firing_key(warning));
            }
            WarningStatus::Escalated => {}
        }
        if sent {
            let after = self
                .after_cut
                .get(&warning.rule)
                .copied()
                .unwrap_or(self.recovered_from);
            self.unconfirmed.push((identity, after));
        }
    }

    /// Has every sink confirm what it was given, then records it as delivered. What a sink
    /// could not confirm stays unrecorded (a recovery would send it again, same identity).
    pub(crate) fn settle(&mut self, sinks: &mut [Box<dyn Sink>]) -> Result<bool, SinkError> {
        if self.unconfirmed.is_empty() {
            return Ok(true);
        }
        // Every sink settles, even after one could not.
        let settled: Vec<bool> = sinks.iter_mut().map(|sink| sink.settle()).collect();
        let confirmed = settled.iter().all(|ok| *ok);
        if !confirmed {
            return Ok(false);
        }
        // A record that cannot be written (a full disk) leaves the notifications unrecorded,
        // to be recorded at the next settle; the sinks go on.
        if let Err(e) = self.deliveries.record(self.unconfirmed.iter().cloned()) {
            tracing::error!(error = %e, "the delivery record cannot be written (is the disk full?); a recovery now would send these notifications again, with their identities: free space on the state directory's disk");
            return Ok(false);
        }
        self.unconfirmed.clear();
        Ok(true)
    }

    /// Takes one rule's snapshot; writes the checkpoint once every rule's is in.
    pub(crate) fn on_snapshot(
        &mut self,
        cut: Cut,
        expected: &Arc<[String]>,
        snapshot: RuleSnapshot,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<(), SinkError> {
        self.after_cut.insert(snapshot.rule.clone(), cut.checkpoint);
        let added = self.assembler.add(cut, expected, snapshot);
        for abandoned in added.abandoned {
            self.metrics.state.checkpoint_failures.fetch_add(1, Relaxed);
            tracing::error!(
                checkpoint = abandoned.checkpoint,
                missing = ?abandoned.missing,
                "checkpoint abandoned: these rules sent no state (their task likely died: look for their panic or error above, then restart cityops)"
            );
        }
        match added.whole {
            Some((cut, rules)) => self.write_checkpoint(cut, rules, sinks),
            None => Ok(()),
        }
    }

    fn write_checkpoint(
        &mut self,
        cut: Cut,
        rules: Vec<RuleSnapshot>,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<(), SinkError> {
        let started = Instant::now();
        // Everything before the cut must be at the receivers before the state says it was sent.
        let settled = self.settle(sinks)?;
        let metrics = &self.metrics.state;
        if !settled {
            metrics.checkpoint_failures.fetch_add(1, Relaxed);
            tracing::warn!(
                checkpoint = cut.checkpoint,
                "checkpoint skipped: a sink has not confirmed its warnings; the next one tries again (check that the --warnings-mqtt broker is up, and the --jsonl and webhook.spool_dir disks have space)"
            );
            return Ok(());
        }
        if !self.reconciled {
            let firing: Vec<Warning> = self.firing.values().cloned().collect();
            for sink in sinks.iter_mut() {
                sink.reconcile(&firing);
            }
            self.reconciled = true;
            // The first checkpoint of a run follows the log's replay: the recovered state is
            // current from here on.
            let since_start_ms = self.metrics.now_ns() / 1_000_000;
            metrics.recovery_ms.store(since_start_ms, Relaxed);
            tracing::info!(
                since_start_ms,
                "state current: the first checkpoint of the run is being written"
            );
        }
        if let Err(e) = self.deliveries.sync() {
            metrics.checkpoint_failures.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "checkpoint skipped: the delivery record cannot be synced; the next one tries again (free space on the state directory's disk and check it for I/O errors)");
            return Ok(());
        }
        let checkpoint = checkpoint_at(cut, rules);
        let manifest = match checkpoint::write(&self.checkpoint_dir, &checkpoint) {
            Ok(manifest) => manifest,
            Err(e) => {
                metrics.checkpoint_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "checkpoint not written (is the disk full?); the previous one still holds; free space on the state directory's disk");
                return Ok(());
            }
        };
        if let Some(oldest) = manifest.checkpoints.first()
            && let Err(e) = self.deliveries.prune(oldest.number)
        {
            tracing::warn!(error = %e, "the delivery record could not be pruned; it is pruned at the next checkpoint (if this repeats, check free space and permissions in the state directory)");
        }
        if let Some(from) = manifest.keep_log_from()
            && let Err(e) = log::delete_before(&self.log_dir, from)
        {
            tracing::warn!(error = %e, "old log segments could not be deleted; they are tried again at the next checkpoint (if this repeats, check permissions on log/ in the state directory)");
        }
        let newest = manifest.newest().cloned();
        metrics.checkpoints.fetch_add(1, Relaxed);
        metrics
            .last_checkpoint_ms
            .store(checkpoint.taken_ms.max(0) as u64, Relaxed);
        metrics
            .last_checkpoint_bytes
            .store(newest.map_or(0, |n| n.bytes), Relaxed);
        metrics
            .last_checkpoint_us
            .store(started.elapsed().as_micros() as u64, Relaxed);
        metrics.log_bytes.store(log::size_bytes(&self.log_dir), Relaxed);
        tracing::debug!(
            checkpoint = checkpoint.number,
            covers_seq = checkpoint.covers_seq,
            replay_from = checkpoint.replay_from,
            "checkpoint written"
        );
        Ok(())
    }
}

/// Which alert a warning is about: its rule and key.
fn firing_key(warning: &Warning) -> (String, String) {
    (
        warning.rule.clone(),
        serde_json::Value::Object(warning.key.clone()).to_string(),
    )
}
