//! Each partition's checkpoint, where any instance can read it: one object per partition
//! (and one for the whole-stream slot) in a JetStream object store (`[cluster]
//! checkpoint_bucket`), replicated like the stream. An object is named by the stream, its
//! creation time and the slot, so a stream deleted and made again never meets the
//! checkpoints of the one before. The instance holding a partition writes it
//! (`ClusterFence::checkpoint`); the one taking it over reads it and goes on from it.
//!
//! ```text
//! CITYOPS-1733550000123456789/7     checkpoint file bytes (state::checkpoint's format)
//! ```

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store, stream};
use tokio::io::AsyncReadExt;

use crate::config::cluster::ClusterConfig;
use crate::state::checkpoint::{self, Checkpoint};

/// How often opening or creating the bucket is tried (peers race to create it).
const TRIES: u32 = 20;
const RETRY: Duration = Duration::from_millis(500);
/// How long the instance keeps asking for a partition's checkpoint (a NATS node lost: the
/// bucket elects a new leader) before it computes the partition from its first reading.
const CHECKPOINT_PATIENCE: Duration = Duration::from_secs(10);

/// Why a stored checkpoint could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// NATS did not give it (a node lost, a leader being elected): worth asking again.
    #[error("{0}")]
    Unreachable(String),
    /// It was read and is not a checkpoint (corrupt, or of another format): asking again
    /// gives the same.
    #[error("{0}")]
    Unusable(String),
}

/// The checkpoint bucket of one stream.
#[derive(Clone)]
pub(crate) struct CheckpointStore {
    store: object_store::ObjectStore,
    /// `<stream>-<creation ns>`: what every object name of this stream starts with.
    prefix: String,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore").field("prefix", &self.prefix).finish()
    }
}

impl CheckpointStore {
    /// Opens the checkpoint bucket, or creates it, for `stream`.
    pub(crate) async fn open(
        js: &jetstream::Context,
        config: &ClusterConfig,
        stream: &stream::Stream,
    ) -> Result<Self, String> {
        let created = stream.cached_info().created.unix_timestamp_nanos();
        let prefix = format!("{}-{created}", config.stream);
        let name = &config.checkpoint_bucket;
        let mut last = String::new();
        for attempt in 1..=TRIES {
            match open_or_create(js, name, config.replicas).await {
                Ok(store) => {
                    return Ok(CheckpointStore { store, prefix });
                }
                Err(e) => {
                    tracing::debug!(bucket = %name, attempt, error = %e, "checkpoint bucket not ready, trying again");
                    last = e;
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        Err(last)
    }

    fn object(&self, slot: u32) -> String {
        format!("{}/{slot}", self.prefix)
    }

    /// The checkpoint stored for `slot`, if any.
    pub(crate) async fn load(&self, slot: u32) -> Result<Option<Checkpoint>, LoadError> {
        let name = self.object(slot);
        let mut object = match self.store.get(&name).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LoadError::Unreachable(format!("reading checkpoint {name}: {e}"))),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| LoadError::Unreachable(format!("reading checkpoint {name}: {e}")))?;
        checkpoint::decode(&bytes)
            .map(Some)
            .map_err(|e| LoadError::Unusable(format!("checkpoint {name} is unusable: {e}")))
    }

    /// The checkpoint stored for `partition`, asked for `CHECKPOINT_PATIENCE` at most; `None`
    /// when it has none or NATS cannot give it (the partition is then computed from its first
    /// reading: slower, and just as exact).
    pub(crate) async fn load_patiently(&self, partition: u32) -> Option<Checkpoint> {
        let asked = Instant::now();
        loop {
            let error = match tokio::time::timeout(Duration::from_secs(5), self.load(partition)).await {
                Ok(Ok(found)) => return found,
                Ok(Err(LoadError::Unusable(e))) => {
                    tracing::error!(partition, error = %e, "cluster: partition {partition}'s checkpoint is unusable; computing it from its first reading (the next checkpoint replaces it)");
                    return None;
                }
                Ok(Err(LoadError::Unreachable(e))) => e,
                Err(_) => "no answer from NATS".to_string(),
            };
            if asked.elapsed() >= CHECKPOINT_PATIENCE {
                tracing::warn!(partition, error = %error, "cluster: partition {partition}'s checkpoint cannot be read; computing it from its first reading");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stores `checkpoint` as `slot`'s, replacing the one before; its size in bytes.
    pub(crate) async fn save(&self, slot: u32, checkpoint: &Checkpoint) -> Result<usize, String> {
        let bytes = checkpoint::encode(checkpoint)?;
        let size = bytes.len();
        self.store
            .put(self.object(slot).as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| format!("storing checkpoint {}: {e}", self.object(slot)))?;
        Ok(size)
    }
}

/// One try of `CheckpointStore::open`. The bucket's stream is created here as the client
/// would (`OBJ_<bucket>`), without asking for account details NATS 2.9 does not give.
async fn open_or_create(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<object_store::ObjectStore, String> {
    if let Ok(store) = js.get_object_store(name).await {
        return Ok(store);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("OBJ_{name}"),
        description: Some("cityops partition checkpoints".to_string()),
        subjects: vec![format!("$O.{name}.C.>"), format!("$O.{name}.M.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating checkpoint bucket {name}: {e}"))?;
    js.get_object_store(name)
        .await
        .map_err(|e| format!("opening checkpoint bucket {name}: {e}"))
}
