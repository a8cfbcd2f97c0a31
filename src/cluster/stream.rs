//! The JetStream side at start: connect, then create the stream and the lease bucket or
//! check the ones there. The stream's description records its partition count, fixed for
//! its life: an instance configured with another count is refused, since a device would
//! then be read from two partitions.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::partition::Layout;
use crate::config::cluster::ClusterConfig;

/// What the description of a cityops stream starts with.
const DESCRIPTION: &str = "cityops readings";

/// How long a connect may take before the run is refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to NATS (`nats://host:port`, several separated by commas).
pub(crate) async fn connect(url: &str, name: &str) -> Result<async_nats::Client, String> {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(servers.as_slice())
        .await
        .map_err(|e| format!("connecting to NATS at {url}: {e} (is nats-server running with JetStream, `-js`?)"))
}

/// The description a stream of `partitions` carries.
fn description(partitions: u32) -> String {
    format!("{DESCRIPTION}; partitions={partitions}")
}

/// The partition count a stream's description records.
fn partitions_of(description: Option<&str>) -> Option<u32> {
    description?
        .strip_prefix(DESCRIPTION)?
        .strip_prefix("; partitions=")?
        .parse()
        .ok()
}

/// Creates the stream, or checks the one there: its subjects and its partition count.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
    layout: &Layout,
) -> Result<stream::Stream, String> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![layout.stream_subjects()],
        description: Some(description(config.partitions)),
        num_replicas: config.replicas,
        max_age: Duration::from_millis(config.max_age.0.max(0) as u64),
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let mut stream = open_or_create_stream(js, wanted).await?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("reading stream {}: {e}", config.stream))?;
    match partitions_of(info.config.description.as_deref()) {
        Some(n) if n == config.partitions => {}
        Some(n) => {
            return Err(format!(
                "stream {} was created with {n} partitions, this instance is configured with {} ([cluster] partitions); a stream's partition count is fixed for its life: set partitions = {n}",
                config.stream, config.partitions
            ));
        }
        None => {
            return Err(format!(
                "stream {} exists but was not created by cityops (its description does not record a partition count); name another in [cluster] stream",
                config.stream
            ));
        }
    }
    if !info.config.subjects.contains(&layout.stream_subjects()) {
        return Err(format!(
            "stream {} takes {:?}, not {} ([cluster] subject): name another stream or subject",
            config.stream,
            info.config.subjects,
            layout.stream_subjects()
        ));
    }
    Ok(stream)
}

/// How often opening or creating a stream or bucket is tried before the run is refused: instances
/// starting together race to create it, and a cluster just started may have no JetStream
/// leader yet.
const TRIES: u32 = 20;

/// The pause between two tries.
const RETRY: Duration = Duration::from_millis(500);

/// Opens the stream `wanted` names, or creates it. Tried again on failure (see `TRIES`).
async fn open_or_create_stream(js: &jetstream::Context, wanted: stream::Config) -> Result<stream::Stream, String> {
    let mut last = String::new();
    for attempt in 1..=TRIES {
        match js.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                tracing::debug!(stream = %wanted.name, attempt, error = %e, "stream not ready, trying again");
                last = format!("creating or opening stream {}: {e}", wanted.name);
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    Err(last)
}

/// Creates a KV bucket (keys with one value each, compare-and-swap by revision), or opens
/// the one there. The bucket's stream is created here as the client would (`KV_<bucket>`):
/// the client's own bucket creation first asks for account details NATS 2.9 does not give.
/// A failure is tried again (see `TRIES`): a peer creating the same bucket at the
/// same moment can make this instance's creation fail although the bucket then exists.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    config: &ClusterConfig,
) -> Result<kv::Store, String> {
    let mut last = String::new();
    for attempt in 1..=TRIES {
        match open_or_create_bucket(js, name, description, config).await {
            Ok(store) => return Ok(store),
            Err(e) => {
                tracing::debug!(bucket = name, attempt, error = %e, "bucket not ready, trying again");
                last = e;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    Err(last)
}

/// One try of `bucket`.
async fn open_or_create_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    config: &ClusterConfig,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let max_age = Duration::from_millis(config.max_age.0.max(0) as u64);
    let duplicate_window = match max_age.is_zero() {
        true => Duration::from_secs(120),
        false => max_age.min(Duration::from_secs(120)),
    };
    let created = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.to_string()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            duplicate_window,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        return Err(format!("creating bucket {name}: {e}"));
    }
    js.get_key_value(name)
        .await
        .map_err(|e| format!("opening bucket {name}: {e}"))
}

/// Creates the lease bucket, or opens the one there.
pub(crate) async fn lease_bucket(js: &jetstream::Context, config: &ClusterConfig) -> Result<kv::Store, String> {
    bucket(js, &config.lease_bucket, "cityops partition leases", config).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_records_the_partition_count() {
        assert_eq!(partitions_of(Some(&description(32))), Some(32));
        assert_eq!(partitions_of(Some("someone else's stream")), None);
        assert_eq!(partitions_of(None), None);
    }
}
