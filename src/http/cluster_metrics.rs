//! The cluster's part of `/metrics` (only on `run --nats`): this instance, its partitions
//! and their epochs, per-partition lag, takeovers, lost leases and what the fence held back.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::prometheus::escape;
use crate::metrics::ClusterMetrics;

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
    let series: [(&str, &str, &str, u64); 9] = [
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
}
