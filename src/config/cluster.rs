//! `[cluster]`: how instances share a city on NATS JetStream (`cityops run --nats URL`):
//! the stream and its subjects, the fixed partition count, the lease bucket, and this
//! instance's name. The top-level `cluster` module says what each means on the wire.

use serde::Deserialize;

use super::DurationMs;

/// Scale-out over NATS JetStream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The JetStream stream holding every reading (created at the first start).
    pub stream: String,
    /// First token of the stream's subjects: `<subject>.<partition>.<topic with / as .>`.
    pub subject: String,
    /// Partitions of the stream, fixed for its life (checked against the stream at start).
    pub partitions: u32,
    /// Stream replicas: 1 on one server, 3 on a three-node cluster.
    pub replicas: usize,
    /// How long the stream keeps readings (0: until its limits; JetStream's default).
    pub max_age: DurationMs,
    /// The KV bucket where instances hold their partitions' leases.
    pub lease_bucket: String,
    /// The KV bucket recording which notifications went out, so that the instance taking a
    /// partition over does not send them again.
    pub deliveries_bucket: String,
    /// The JetStream object store holding each partition's checkpoint (its rules' state at a
    /// stream sequence), from which the instance taking a partition over goes on.
    pub checkpoint_bucket: String,
    /// How often each partition's state is checkpointed; 0: never (a takeover computes the
    /// partition again from the stream's first reading).
    pub checkpoint_interval: DurationMs,
    /// A lease not renewed for this long is taken over by a peer.
    pub lease: DurationMs,
    /// This instance's name in the leases (default: the MQTT client id, or the host name).
    pub instance: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            stream: "CITYOPS".to_string(),
            subject: "cityops".to_string(),
            partitions: 32,
            replicas: 1,
            max_age: DurationMs(0),
            lease_bucket: "cityops-leases".to_string(),
            deliveries_bucket: "cityops-deliveries".to_string(),
            checkpoint_bucket: "cityops-checkpoints".to_string(),
            checkpoint_interval: DurationMs(10_000),
            lease: DurationMs(10_000),
            instance: String::new(),
        }
    }
}

impl ClusterConfig {
    /// Settings that cannot work, named.
    pub(crate) fn check(&self) -> Result<(), String> {
        let token_ok = |t: &str| !t.is_empty() && !t.contains(['.', '*', '>', ' ', '/']);
        if !(1..=1024).contains(&self.partitions) {
            return Err(format!("cluster.partitions must be 1 to 1024, got {}", self.partitions));
        }
        if !token_ok(&self.subject) {
            return Err(format!(
                "cluster.subject `{}` must be one NATS subject token (no `.`, `*`, `>`, `/` or spaces)",
                self.subject
            ));
        }
        let names = [
            &self.stream,
            &self.lease_bucket,
            &self.deliveries_bucket,
            &self.checkpoint_bucket,
        ];
        if !names.iter().all(|n| token_ok(n)) {
            return Err("cluster.stream, cluster.lease_bucket, cluster.deliveries_bucket and cluster.checkpoint_bucket must be plain names (no `.`, `*`, `>`, `/` or spaces)".to_string());
        }
        if self.checkpoint_interval.0 < 0 {
            return Err("cluster.checkpoint_interval must not be negative".to_string());
        }
        if self.lease.0 < 1_000 {
            return Err(format!("cluster.lease must be at least 1s, got {} ms", self.lease.0));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!("cluster.replicas must be 1 to 5, got {}", self.replicas));
        }
        Ok(())
    }
}
