//! The end-of-run report: readings in, rejected by reason, late rows per rule, windows
//! closed, warnings by level, throughput, and p50/p90/p99/p99.9/max per stage.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::flow::Reason;
use crate::level::Level;
use crate::metrics::{Metrics, Stage};

/// Latency percentiles of one stage, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StageLatency {
    pub stage: &'static str,
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Everything a run reports at exit.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub wall_seconds: f64,
    pub messages_in: u64,
    /// Accepted plus rejected: every reading that came in.
    pub readings_in: u64,
    pub readings_accepted: u64,
    pub readings_rejected: u64,
    pub rejected_by_reason: Vec<(String, u64)>,
    /// (table, rule, rows) for rows that came after their windows closed.
    pub late_by_rule: Vec<(String, String, u64)>,
    /// Late rows dead-lettered: each once, however many rules it was late for.
    pub late_dead_letters: u64,
    pub windows_closed: u64,
    pub warnings_by_level: Vec<(String, u64)>,
    pub resolved: u64,
    pub firing_at_end: usize,
    pub rule_errors: u64,
    pub queue_full_waits: u64,
    pub rules_reloaded: u64,
    pub reloads_rejected: u64,
    /// Live MQTT source: failed connects and dropped connections, and the time spent down.
    pub mqtt_connection_errors: u64,
    /// Connections another client with the same client id took over.
    pub mqtt_takeovers: u64,
    pub mqtt_outage_ms: u64,
    /// Warnings a sink could not deliver.
    pub sink_errors: u64,
    /// Webhook: delivered, retried sends, refused, not spooled (spool full), still spooled.
    pub webhook_delivered: u64,
    pub webhook_retries: u64,
    pub webhook_refused: u64,
    pub webhook_spool_full: u64,
    pub webhook_spooled: u64,
    /// Alertmanager format: firing alerts sent again to keep them active there.
    pub webhook_resent: u64,
    pub readings_per_second: f64,
    pub stages: Vec<StageLatency>,
    /// The durable state, when the run kept it.
    pub state: Option<StateSummary>,
}

/// What the durable state did in a run (`--state`).
#[derive(Debug, Clone, Serialize)]
pub struct StateSummary {
    pub checkpoints: u64,
    pub checkpoint_failures: u64,
    pub last_checkpoint_bytes: u64,
    pub last_checkpoint_ms: f64,
    pub log_bytes: u64,
    pub log_commits: u64,
    /// From the start until the first checkpoint after the log's replay (the state current).
    pub recovery_ms: u64,
    pub recovered_messages: u64,
    pub refilled_messages: u64,
    pub resends_skipped: u64,
    pub redeliveries_skipped: u64,
    pub sessions_lost: u64,
}

impl StateSummary {
    fn collect(metrics: &Metrics) -> Option<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &metrics.state;
        s.enabled.load(Relaxed).then(|| StateSummary {
            checkpoints: s.checkpoints.load(Relaxed),
            checkpoint_failures: s.checkpoint_failures.load(Relaxed),
            last_checkpoint_bytes: s.last_checkpoint_bytes.load(Relaxed),
            last_checkpoint_ms: s.last_checkpoint_us.load(Relaxed) as f64 / 1_000.0,
            log_bytes: s.log_bytes.load(Relaxed),
            log_commits: s.log_commits.load(Relaxed),
            recovery_ms: s.recovery_ms.load(Relaxed),
            recovered_messages: s.recovered_messages.load(Relaxed),
            refilled_messages: s.refilled_messages.load(Relaxed),
            resends_skipped: s.resends_skipped.load(Relaxed),
            redeliveries_skipped: s.redeliveries_skipped.load(Relaxed),
            sessions_lost: s.session_lost.load(Relaxed),
        })
    }
}

impl Summary {
    /// Writes the summary as pretty JSON (`--summary-json`).
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::from)?;
        std::fs::write(path, json)
    }

    /// Reads the final counters and histograms.
    pub fn collect(metrics: &Metrics, wall: Duration, firing_at_end: usize) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let accepted = metrics.readings_accepted.load(Relaxed);
        let rejected = metrics.rejected_total();
        let wall_seconds = wall.as_secs_f64();
        let stages = Stage::ALL
            .iter()
            .map(|stage| {
                let h = metrics.histogram(*stage);
                let us = |ns: u64| ns as f64 / 1_000.0;
                StageLatency {
                    stage: stage.as_str(),
                    count: h.len(),
                    p50_us: us(h.value_at_quantile(0.50)),
                    p90_us: us(h.value_at_quantile(0.90)),
                    p99_us: us(h.value_at_quantile(0.99)),
                    p999_us: us(h.value_at_quantile(0.999)),
                    max_us: us(h.max()),
                }
            })
            .collect();
        Summary {
            wall_seconds,
            messages_in: metrics.messages_in.load(Relaxed),
            readings_in: accepted + rejected,
            readings_accepted: accepted,
            readings_rejected: rejected,
            rejected_by_reason: Reason::ALL
                .iter()
                .filter(|r| **r != Reason::Late)
                .map(|r| (r.as_str().to_string(), metrics.rejected(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            late_by_rule: metrics.late().into_iter().map(|((t, r), n)| (t, r, n)).collect(),
            late_dead_letters: metrics.rejected(Reason::Late),
            windows_closed: metrics.windows_closed.load(Relaxed),
            warnings_by_level: Level::ALL
                .iter()
                .map(|l| (l.as_str().to_string(), metrics.warnings(*l)))
                .collect(),
            resolved: metrics.resolved.load(Relaxed),
            firing_at_end,
            rule_errors: metrics.rule_errors.load(Relaxed),
            queue_full_waits: metrics.queue_full_waits.load(Relaxed),
            rules_reloaded: metrics.rules_reloaded.load(Relaxed),
            reloads_rejected: metrics.reloads_rejected.load(Relaxed),
            mqtt_connection_errors: metrics.mqtt_connection_errors.load(Relaxed),
            mqtt_takeovers: metrics.mqtt_takeovers.load(Relaxed),
            mqtt_outage_ms: metrics.mqtt_outage_ms.load(Relaxed),
            sink_errors: metrics.sink_errors.load(Relaxed),
            webhook_delivered: metrics.webhook_delivered.load(Relaxed),
            webhook_retries: metrics.webhook_retries.load(Relaxed),
            webhook_refused: metrics.webhook_refused.load(Relaxed),
            webhook_spool_full: metrics.webhook_spool_full.load(Relaxed),
            webhook_spooled: metrics.webhook_spooled.load(Relaxed),
            webhook_resent: metrics.webhook_resent.load(Relaxed),
            readings_per_second: if wall_seconds > 0.0 {
                (accepted + rejected) as f64 / wall_seconds
            } else {
                0.0
            },
            stages,
            state: StateSummary::collect(metrics),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "── cityops summary ─────────────────────────────────────────────")?;
        writeln!(f, "messages in          {:>12}", self.messages_in)?;
        writeln!(
            f,
            "readings in          {:>12}   (accepted + rejected)",
            self.readings_in
        )?;
        writeln!(f, "  accepted           {:>12}", self.readings_accepted)?;
        writeln!(f, "  rejected           {:>12}", self.readings_rejected)?;
        for (reason, n) in &self.rejected_by_reason {
            writeln!(f, "    {reason:<18} {n:>10}")?;
        }
        let late: u64 = self.late_by_rule.iter().map(|(_, _, n)| n).sum();
        writeln!(
            f,
            "late rows (per rule) {late:>12}   ({} dead-lettered, once each)",
            self.late_dead_letters
        )?;
        for (table, rule, n) in &self.late_by_rule {
            writeln!(f, "    {:<30} {n:>6}", format!("{table}/{rule}"))?;
        }
        writeln!(f, "windows closed       {:>12}", self.windows_closed)?;
        let levels: Vec<String> = self.warnings_by_level.iter().map(|(l, n)| format!("{l} {n}")).collect();
        writeln!(
            f,
            "warnings fired       {:>12}   ({})",
            self.warnings_by_level.iter().map(|(_, n)| n).sum::<u64>(),
            levels.join(", ")
        )?;
        writeln!(f, "warnings resolved    {:>12}", self.resolved)?;
        writeln!(f, "firing at end        {:>12}", self.firing_at_end)?;
        writeln!(f, "rule errors          {:>12}", self.rule_errors)?;
        writeln!(f, "queue-full waits     {:>12}", self.queue_full_waits)?;
        if self.rules_reloaded + self.reloads_rejected > 0 {
            writeln!(
                f,
                "rules reloaded       {:>12}   ({} change(s) rejected)",
                self.rules_reloaded, self.reloads_rejected
            )?;
        }
        if self.mqtt_connection_errors > 0 {
            writeln!(
                f,
                "mqtt connection errs {:>12}   ({} ms disconnected, {} taken over by a client with the same id)",
                self.mqtt_connection_errors, self.mqtt_outage_ms, self.mqtt_takeovers
            )?;
        }
        if self.webhook_delivered + self.webhook_retries + self.webhook_spooled + self.webhook_spool_full > 0 {
            writeln!(
                f,
                "webhook delivered    {:>12}   ({} re-sent, {} retries, {} refused, {} spool full, {} left spooled)",
                self.webhook_delivered,
                self.webhook_resent,
                self.webhook_retries,
                self.webhook_refused,
                self.webhook_spool_full,
                self.webhook_spooled
            )?;
        }
        if self.sink_errors > 0 {
            writeln!(f, "sink errors          {:>12}", self.sink_errors)?;
        }
        if let Some(state) = &self.state {
            writeln!(
                f,
                "state                {:>12}   checkpoints (last {:.1} MiB in {:.1} ms; {} skipped), log {:.1} MiB in {} commits",
                state.checkpoints,
                state.last_checkpoint_bytes as f64 / 1_048_576.0,
                state.last_checkpoint_ms,
                state.checkpoint_failures,
                state.log_bytes as f64 / 1_048_576.0,
                state.log_commits
            )?;
            writeln!(
                f,
                "  recovery           {:>12} ms  ({} replayed, {} refilled, {} re-sends skipped, {} sessions lost)",
                state.recovery_ms,
                state.recovered_messages,
                state.refilled_messages,
                state.resends_skipped,
                state.sessions_lost
            )?;
        }
        writeln!(f, "wall time            {:>12.3} s", self.wall_seconds)?;
        writeln!(f, "throughput           {:>12.0} readings/s", self.readings_per_second)?;
        writeln!(
            f,
            "latency (µs)         {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "p50", "p90", "p99", "p99.9", "max"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "  {:<18} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                s.stage, s.count, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
            )?;
        }
        write!(f, "────────────────────────────────────────────────────────────────")
    }
}
