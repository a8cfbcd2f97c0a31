//! The `/metrics` page in Prometheus text format (version 0.0.4): every counter of the run
//! (messages, readings accepted, rejected per reason, late per table and rule, windows,
//! warnings per level, rule errors, reloads, MQTT and webhook delivery), gauges (MQTT
//! connection, webhook spool), per-rule counters from the rule board, and a latency summary
//! per stage from the HdrHistograms.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::alert::desk::book::Desk;
use crate::alert::desk::silence::SilenceState;
use crate::alert::desk::stats::TallyReport;
use crate::flow::Reason;
use crate::level::Level;
use crate::metrics::{DeskCounters, Metrics, RuleHealthView, Stage};

/// Renders every metric.
pub(crate) fn render(metrics: &Metrics) -> String {
    let mut out = String::new();
    let counters: [(&str, &str, u64); 16] = [
        (
            "cityops_messages_in_total",
            "Messages taken from the source",
            metrics.messages_in.load(Relaxed),
        ),
        (
            "cityops_readings_accepted_total",
            "Readings decoded into the tables",
            metrics.readings_accepted.load(Relaxed),
        ),
        (
            "cityops_windows_closed_total",
            "Windows (and sessions) closed and judged",
            metrics.windows_closed.load(Relaxed),
        ),
        (
            "cityops_warnings_resolved_total",
            "Resolved notifications",
            metrics.resolved.load(Relaxed),
        ),
        (
            "cityops_rule_errors_total",
            "Rule evaluations that failed",
            metrics.rule_errors.load(Relaxed),
        ),
        (
            "cityops_queue_full_waits_total",
            "Times the source waited on a full decode queue",
            metrics.queue_full_waits.load(Relaxed),
        ),
        (
            "cityops_rules_reloaded_total",
            "Rule versions swapped in, added or removed by hot reload",
            metrics.rules_reloaded.load(Relaxed),
        ),
        (
            "cityops_rule_reloads_rejected_total",
            "Rule changes rejected by hot reload",
            metrics.reloads_rejected.load(Relaxed),
        ),
        (
            "cityops_mqtt_connection_errors_total",
            "Failed connects and lost connections of the MQTT source",
            metrics.mqtt_connection_errors.load(Relaxed),
        ),
        (
            "cityops_mqtt_takeovers_total",
            "MQTT source connections closed right after they were accepted, again and again (another client uses the same client id)",
            metrics.mqtt_takeovers.load(Relaxed),
        ),
        (
            "cityops_mqtt_outage_milliseconds_total",
            "Time the MQTT source spent disconnected",
            metrics.mqtt_outage_ms.load(Relaxed),
        ),
        (
            "cityops_sink_errors_total",
            "Warnings a sink failed to deliver",
            metrics.sink_errors.load(Relaxed),
        ),
        (
            "cityops_webhook_delivered_total",
            "Warnings the webhook receiver accepted",
            metrics.webhook_delivered.load(Relaxed),
        ),
        (
            "cityops_webhook_resent_total",
            "Firing alerts sent to Alertmanager again so it keeps them active",
            metrics.webhook_resent.load(Relaxed),
        ),
        (
            "cityops_webhook_retries_total",
            "Webhook sends that failed and will be retried",
            metrics.webhook_retries.load(Relaxed),
        ),
        (
            "cityops_webhook_spool_full_total",
            "Warnings not spooled for the webhook because the spool was full",
            metrics.webhook_spool_full.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP cityops_readings_rejected_total Readings dead-lettered, by reason\n# TYPE cityops_readings_rejected_total counter"
    );
    for reason in Reason::ALL.iter().filter(|r| **r != Reason::Late) {
        let _ = writeln!(
            out,
            "cityops_readings_rejected_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            metrics.rejected(*reason)
        );
    }
    let _ = writeln!(
        out,
        "# HELP cityops_late_dead_letters_total Late rows dead-lettered, each once whatever the rules it was late for\n# TYPE cityops_late_dead_letters_total counter\ncityops_late_dead_letters_total {}",
        metrics.rejected(Reason::Late)
    );
    let _ = writeln!(
        out,
        "# HELP cityops_late_rows_total Rows behind the watermark, by table and rule\n# TYPE cityops_late_rows_total counter"
    );
    for ((table, rule), n) in metrics.late() {
        let _ = writeln!(
            out,
            "cityops_late_rows_total{{table=\"{}\",rule=\"{}\"}} {n}",
            escape(&table),
            escape(&rule)
        );
    }
    render_rules(&mut out, metrics);
    let _ = writeln!(
        out,
        "# HELP cityops_warnings_fired_total Firing notifications, by level\n# TYPE cityops_warnings_fired_total counter"
    );
    for level in Level::ALL {
        let _ = writeln!(
            out,
            "cityops_warnings_fired_total{{level=\"{}\"}} {}",
            level.as_str(),
            metrics.warnings(level)
        );
    }
    let gauges: [(&str, &str, u64); 3] = [
        (
            "cityops_mqtt_connected",
            "1 while the MQTT source is connected",
            u64::from(metrics.mqtt_connected.load(Relaxed)),
        ),
        (
            "cityops_mqtt_subscribed",
            "1 while the broker has granted the MQTT subscriptions",
            u64::from(metrics.mqtt_subscribed.load(Relaxed)),
        ),
        (
            "cityops_webhook_spooled",
            "Warnings waiting in the webhook spool",
            metrics.webhook_spooled.load(Relaxed),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    render_state(&mut out, metrics);
    super::cluster_metrics::render_cluster(&mut out, &metrics.cluster);
    let _ = writeln!(
        out,
        "# HELP cityops_decode_queue_depth Messages waiting in each decode queue\n# TYPE cityops_decode_queue_depth gauge"
    );
    for (worker, depth) in metrics.queue_depths().iter().enumerate() {
        let _ = writeln!(out, "cityops_decode_queue_depth{{worker=\"{worker}\"}} {depth}");
    }
    let _ = writeln!(
        out,
        "# HELP cityops_stage_latency_seconds Latency per pipeline stage since the start\n# TYPE cityops_stage_latency_seconds summary"
    );
    for stage in Stage::ALL {
        let h = metrics.histogram(stage);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let seconds = h.value_at_quantile(q) as f64 / 1e9;
            let _ = writeln!(
                out,
                "cityops_stage_latency_seconds{{stage=\"{}\",quantile=\"{q}\"}} {seconds}",
                stage.as_str()
            );
        }
        let sum = h.mean() * h.len() as f64 / 1e9;
        let _ = writeln!(
            out,
            "cityops_stage_latency_seconds_sum{{stage=\"{}\"}} {sum}",
            stage.as_str()
        );
        let _ = writeln!(
            out,
            "cityops_stage_latency_seconds_count{{stage=\"{}\"}} {}",
            stage.as_str(),
            h.len()
        );
    }
    out
}

/// The durable state's log, checkpoints and recovery (only when the run keeps state).
fn render_state(out: &mut String, metrics: &Metrics) {
    let s = &metrics.state;
    if !s.enabled.load(Relaxed) {
        return;
    }
    let series: [(&str, &str, &str, u64); 17] = [
        (
            "cityops_state_log_bytes",
            "gauge",
            "Bytes of the write-ahead log on disk",
            s.log_bytes.load(Relaxed),
        ),
        (
            "cityops_state_log_commits_total",
            "counter",
            "Group commits of the log (one fdatasync each)",
            s.log_commits.load(Relaxed),
        ),
        (
            "cityops_state_log_messages_total",
            "counter",
            "Messages made durable in the log",
            s.log_messages.load(Relaxed),
        ),
        (
            "cityops_state_log_errors_total",
            "counter",
            "Failed log writes (acks wait while they fail)",
            s.log_errors.load(Relaxed),
        ),
        (
            "cityops_state_log_stalled",
            "gauge",
            "1 while the log cannot be written and no message is acked",
            u64::from(s.log_stalled.load(Relaxed)),
        ),
        (
            "cityops_state_checkpoints_total",
            "counter",
            "Checkpoints written",
            s.checkpoints.load(Relaxed),
        ),
        (
            "cityops_state_checkpoint_failures_total",
            "counter",
            "Checkpoints not written (an unconfirmed sink, a failed write)",
            s.checkpoint_failures.load(Relaxed),
        ),
        (
            "cityops_state_last_checkpoint_timestamp_ms",
            "gauge",
            "When the last checkpoint was taken (epoch ms)",
            s.last_checkpoint_ms.load(Relaxed),
        ),
        (
            "cityops_state_last_checkpoint_bytes",
            "gauge",
            "Size of the last checkpoint",
            s.last_checkpoint_bytes.load(Relaxed),
        ),
        (
            "cityops_state_last_checkpoint_microseconds",
            "gauge",
            "How long the last checkpoint took to write",
            s.last_checkpoint_us.load(Relaxed),
        ),
        (
            "cityops_state_recovery_milliseconds",
            "gauge",
            "How long recovery took at start",
            s.recovery_ms.load(Relaxed),
        ),
        (
            "cityops_state_recovered_messages",
            "gauge",
            "Messages replayed from the log after the checkpoint at start",
            s.recovered_messages.load(Relaxed),
        ),
        (
            "cityops_state_refilled_messages",
            "gauge",
            "Messages read again from the log at start to refill open windows",
            s.refilled_messages.load(Relaxed),
        ),
        (
            "cityops_state_resends_skipped_total",
            "counter",
            "Notifications recovery computed again that the sinks already had",
            s.resends_skipped.load(Relaxed),
        ),
        (
            "cityops_state_retained_fixed_total",
            "counter",
            "Retained alert states fixed at start (stale cleared, missing published)",
            s.retained_cleared.load(Relaxed) + s.retained_published.load(Relaxed),
        ),
        (
            "cityops_state_redeliveries_skipped_total",
            "counter",
            "Messages the broker sent again that the log already held",
            s.redeliveries_skipped.load(Relaxed),
        ),
        (
            "cityops_mqtt_sessions_lost_total",
            "counter",
            "Connects where the broker had lost the session cityops expected",
            s.session_lost.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
}

/// Escapes a label value.
pub(super) fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Per-rule counters and gauges from the rule board.
fn render_rules(out: &mut String, metrics: &Metrics) {
    let rules = metrics.rules.snapshot();
    type Read = fn(&RuleHealthView) -> u64;
    let series: [(&str, &str, &str, Read); 5] = [
        ("cityops_rule_rows_total", "counter", "Rows fed to each rule", |r| {
            r.rows_in
        }),
        (
            "cityops_rule_evaluations_total",
            "counter",
            "Windows, sessions, row batches or snapshots judged by each rule",
            |r| r.evaluations,
        ),
        (
            "cityops_rule_breaches_total",
            "counter",
            "Result rows that were breaches, by rule",
            |r| r.breaches,
        ),
        (
            "cityops_rule_failures_total",
            "counter",
            "Failed evaluations, by rule",
            |r| r.errors,
        ),
        (
            "cityops_rule_state_size",
            "gauge",
            "Open windows, open sessions or watched devices, by rule",
            |r| r.state_size,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for rule in &rules {
            let _ = writeln!(out, "{name}{{rule=\"{}\"}} {}", escape(&rule.rule), value(rule));
        }
    }
    let name = "cityops_rule_eval_seconds_total";
    let _ = writeln!(
        out,
        "# HELP {name} Time spent evaluating each rule (its cost; divide by the sum for its share)\n# TYPE {name} counter"
    );
    for rule in &rules {
        let _ = writeln!(out, "{name}{{rule=\"{}\"}} {}", escape(&rule.rule), rule.eval_seconds);
    }
}

/// Picks one figure of a tally.
type Pick = fn(&TallyReport) -> Option<f64>;

/// The operations desk: its counters, what fires and is acknowledged or silenced now, and
/// the response statistics per level (since start and over the last day).
pub(crate) fn render_desk(out: &mut String, counters: &DeskCounters, desk: &mut Desk) {
    let counted: [(&str, &str, u64); 4] = [
        (
            "cityops_operator_actions_total",
            "Operator actions accepted",
            counters.actions.load(Relaxed),
        ),
        (
            "cityops_escalations_total",
            "Escalations: response deadlines that passed",
            counters.escalations.load(Relaxed),
        ),
        (
            "cityops_notifications_silenced_total",
            "Notifications a silence held back from the paging sinks",
            counters.withheld.load(Relaxed),
        ),
        (
            "cityops_desk_journal_errors_total",
            "Operations journal writes or syncs that failed",
            counters.journal_errors.load(Relaxed),
        ),
    ];
    for (name, help, value) in counted {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let now = desk.now_ms();
    let firing: Vec<_> = desk.alerts().filter(|r| r.firing()).collect();
    let gauges: [(&str, &str, usize); 4] = [
        (
            "cityops_alerts_firing",
            "Alerts firing now (the desk's view)",
            firing.len(),
        ),
        (
            "cityops_alerts_acknowledged",
            "Firing alerts acknowledged",
            firing.iter().filter(|r| r.warning.marks.acknowledged.is_some()).count(),
        ),
        (
            "cityops_alerts_silenced",
            "Firing alerts a silence holds back",
            firing
                .iter()
                .filter(|r| !desk.silenced_by(&r.warning).is_empty())
                .count(),
        ),
        (
            "cityops_silences_active",
            "Silences active now",
            desk.silences().filter(|s| s.state(now) == SilenceState::Active).count(),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    let (since_start, last_day) = desk.stats();
    let series: [(&str, &str, Pick); 6] = [
        (
            "cityops_response_rate",
            "Alerts acknowledged before their deadline, of those decided",
            |t| t.response_rate,
        ),
        (
            "cityops_resolution_rate",
            "Alerts resolved before their deadline, of those decided",
            |t| t.resolution_rate,
        ),
        (
            "cityops_time_to_acknowledge_mean_seconds",
            "Mean time from firing to the first acknowledgement",
            |t| t.ack_mean_s,
        ),
        (
            "cityops_time_to_acknowledge_p90_seconds",
            "90th percentile time from firing to the first acknowledgement",
            |t| t.ack_p90_s,
        ),
        (
            "cityops_time_to_resolve_mean_seconds",
            "Mean time from firing to resolution",
            |t| t.resolve_mean_s,
        ),
        (
            "cityops_time_to_resolve_p90_seconds",
            "90th percentile time from firing to resolution",
            |t| t.resolve_p90_s,
        ),
    ];
    for (name, help, pick) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (window, report) in [("since_start", &since_start), ("last_day", &last_day)] {
            for (level, tally) in &report.by_level {
                if let Some(value) = pick(tally) {
                    let _ = writeln!(out, "{name}{{window=\"{window}\",level=\"{level}\"}} {value}");
                }
            }
        }
    }
}
