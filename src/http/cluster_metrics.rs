//! The cluster's part of `/metrics` and of the dashboard's stats (only on `run --nats`):
//! this instance, its partitions and their epochs, per-partition lag, takeovers, lost
//! leases and what the fence held back.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use super::prometheus::escape;
use crate::metrics::ClusterMetrics;

/// The cluster, for the dashboard; null when this run does not consume a NATS stream. The
/// slot numbered after the partitions is the whole stream (`cluster::partition`).
pub(crate) fn cluster_json(c: &ClusterMetrics) -> Value {
    let instance = c.instance.lock().clone();
    if instance.is_empty() {
        return Value::Null;
    }
    let partitions = c.partitions.load(Relaxed);
    let lag = c.lag.lock().clone();
    let checkpointed = c.checkpointed.lock().clone();
    let held: Vec<Value> = c
        .held
        .lock()
        .iter()
        .map(|(slot, epoch)| {
            json!({
                "partition": slot,
                "epoch": epoch,
                "lag": lag.get(slot),
                "checkpoint_seq": checkpointed.get(slot),
                "whole_stream": u64::from(*slot) == partitions,
            })
        })
        .collect();
    json!({
        "instance": instance,
        "partitions": partitions,
        "held": held,
        "takeovers": c.takeovers.load(Relaxed),
        "leases_lost": c.leases_lost.load(Relaxed),
        "lease_errors": c.lease_errors.load(Relaxed),
        "fenced_warnings": c.fenced_warnings.load(Relaxed),
        "already_sent": c.already_sent.load(Relaxed),
        "record_errors": c.record_errors.load(Relaxed),
        "checkpoints": c.checkpoints.load(Relaxed),
        "checkpoint_failures": c.checkpoint_failures.load(Relaxed),
        "resumed": c.resumed.load(Relaxed),
    })
}

/// Appends the cluster series when this run consumes a NATS stream.
pub(crate) fn render_cluster(out: &mut String, c: &ClusterMetrics) {
    let instance = escape(&c.instance.lock());
    if instance.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP cityops_cluster_instance This instance's name in the leases\n# TYPE cityops_cluster_instance gauge\ncityops_cluster_instance{{instance=\"{instance}\"}} 1"
    );
    let series: [(&str, &str, &str, u64); 12] = [
        (
            "cityops_cluster_partitions",
            "gauge",
            "Partitions of the stream",
            c.partitions.load(Relaxed),
        ),
        (
            "cityops_cluster_partitions_owned",
            "gauge",
            "Partitions this instance holds a lease on",
            c.owned.load(Relaxed),
        ),
        (
            "cityops_cluster_takeovers_total",
            "counter",
            "Partitions claimed from a previous holder",
            c.takeovers.load(Relaxed),
        ),
        (
            "cityops_cluster_leases_lost_total",
            "counter",
            "Leases found taken by a peer while held here",
            c.leases_lost.load(Relaxed),
        ),
        (
            "cityops_cluster_lease_errors_total",
            "counter",
            "Lease writes that failed",
            c.lease_errors.load(Relaxed),
        ),
        (
            "cityops_cluster_fenced_messages_total",
            "counter",
            "Readings dropped unacknowledged because their lease had lapsed here",
            c.fenced_messages.load(Relaxed),
        ),
        (
            "cityops_cluster_fenced_warnings_total",
            "counter",
            "Warnings not sent because their partition is not held here",
            c.fenced_warnings.load(Relaxed),
        ),
        (
            "cityops_cluster_already_sent_total",
            "counter",
            "Notifications computed again after a takeover that an earlier owner had sent",
            c.already_sent.load(Relaxed),
        ),
        (
            "cityops_cluster_record_errors_total",
            "counter",
            "Delivery-record reads or writes that failed (sent regardless)",
            c.record_errors.load(Relaxed),
        ),
        (
            "cityops_cluster_checkpoints_total",
            "counter",
            "Partition checkpoints stored",
            c.checkpoints.load(Relaxed),
        ),
        (
            "cityops_cluster_checkpoint_failures_total",
            "counter",
            "Partition checkpoints not stored (store failed, or the lease was gone)",
            c.checkpoint_failures.load(Relaxed),
        ),
        (
            "cityops_cluster_resumed_total",
            "counter",
            "Partitions started from a stored checkpoint",
            c.resumed.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP cityops_cluster_partition_epoch Epoch of each partition held here\n# TYPE cityops_cluster_partition_epoch gauge"
    );
    for (partition, epoch) in c.held.lock().iter() {
        let _ = writeln!(
            out,
            "cityops_cluster_partition_epoch{{partition=\"{partition}\"}} {epoch}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP cityops_cluster_partition_lag Readings in the stream not yet delivered here, per partition consumed\n# TYPE cityops_cluster_partition_lag gauge"
    );
    for (partition, lag) in c.lag.lock().iter() {
        let _ = writeln!(out, "cityops_cluster_partition_lag{{partition=\"{partition}\"}} {lag}");
    }
    let _ = writeln!(
        out,
        "# HELP cityops_cluster_partition_checkpoint_seq Stream sequence the last checkpoint stored from here covers, per partition\n# TYPE cityops_cluster_partition_checkpoint_seq gauge"
    );
    for (partition, seq) in c.checkpointed.lock().iter() {
        let _ = writeln!(
            out,
            "cityops_cluster_partition_checkpoint_seq{{partition=\"{partition}\"}} {seq}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    #[test]
    fn the_dashboard_sees_no_cluster_off_nats_and_each_held_slot_on_it() {
        let c = ClusterMetrics::default();
        assert_eq!(cluster_json(&c), Value::Null);
        *c.instance.lock() = "node-1".to_string();
        c.partitions.store(8, Relaxed);
        c.held.lock().extend([(3, 2), (8, 1)]);
        c.lag.lock().insert(3, 120);
        c.checkpointed.lock().insert(3, 4_410);
        c.takeovers.store(1, Relaxed);
        c.resumed.store(1, Relaxed);
        let shown = cluster_json(&c);
        assert_eq!(shown["instance"], "node-1");
        assert_eq!(
            shown["held"],
            json!([
                {"partition": 3, "epoch": 2, "lag": 120, "checkpoint_seq": 4_410, "whole_stream": false},
                {"partition": 8, "epoch": 1, "lag": null, "checkpoint_seq": null, "whole_stream": true},
            ])
        );
        assert_eq!(
            (shown["takeovers"].as_u64(), shown["resumed"].as_u64()),
            (Some(1), Some(1))
        );
        let mut out = String::new();
        render_cluster(&mut out, &c);
        assert!(
            out.contains("cityops_cluster_partition_checkpoint_seq{partition=\"3\"} 4410\n"),
            "{out}"
        );
        assert!(out.contains("cityops_cluster_resumed_total 1\n"), "{out}");
    }
}
