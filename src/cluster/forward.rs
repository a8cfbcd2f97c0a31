//! A partition's pipeline hands its warnings, marked with the partition, to the instance's
//! sink thread (which holds the desk, the real sinks, the fence and the shared delivery
//! record) instead of sending them itself; and its checkpoints, assembled from its rules'
//! snapshots, behind the warnings that came before their cut, so the instance stores a
//! checkpoint only once everything before it went out.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::alert::sink::{Notice, Sink, SinkError};
use crate::alert::warning::Warning;
use crate::flow::Cut;
use crate::state::assembly::{Assembler, checkpoint_at};
use crate::state::snapshot::RuleSnapshot;

/// Sends every warning and checkpoint on to the instance.
pub(crate) struct ForwardSink {
    partition: u32,
    epoch: u64,
    to: mpsc::Sender<Notice>,
    assembler: Assembler,
}

impl ForwardSink {
    pub(crate) fn new(partition: u32, epoch: u64, to: mpsc::Sender<Notice>) -> Self {
        ForwardSink {
            partition,
            epoch,
            to,
            assembler: Assembler::default(),
        }
    }
}

impl Sink for ForwardSink {
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError> {
        // The instance's sink thread outlives every partition pipeline; if it is gone the
        // run is ending and nothing can be sent anyway.
        let _ = self
            .to
            .blocking_send(Notice::FromPartition(self.partition, warning.clone()));
        Ok(())
    }

    fn snapshot(&mut self, cut: Cut, rules: &Arc<[String]>, snapshot: RuleSnapshot) {
        let added = self.assembler.add(cut, rules, snapshot);
        for abandoned in added.abandoned {
            tracing::error!(
                partition = self.partition,
                checkpoint = abandoned.checkpoint,
                missing = ?abandoned.missing,
                "cluster: partition {}'s checkpoint abandoned: these rules sent no state (their task likely died: look for their error above)",
                self.partition
            );
        }
        if let Some((cut, rules)) = added.whole {
            let _ = self.to.blocking_send(Notice::PartitionCheckpoint {
                partition: self.partition,
                epoch: self.epoch,
                checkpoint: Box::new(checkpoint_at(cut, rules)),
            });
        }
    }

    fn forwards(&self) -> bool {
        true
    }

    fn close(self: Box<Self>) -> Result<(), SinkError> {
        Ok(())
    }
}
