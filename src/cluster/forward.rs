//! A partition's pipeline hands its warnings, marked with the partition, to the instance's
//! sink thread (which holds the
//! desk, the real sinks, the fence and the shared delivery record) instead of sending them
//! itself.

use tokio::sync::mpsc;

use crate::alert::sink::{Notice, Sink, SinkError};
use crate::alert::warning::Warning;

/// Sends every warning on to the instance.
#[derive(Debug)]
pub(crate) struct ForwardSink {
    partition: u32,
    to: mpsc::Sender<Notice>,
}

impl ForwardSink {
    pub(crate) fn new(partition: u32, to: mpsc::Sender<Notice>) -> Self {
        ForwardSink { partition, to }
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

    fn forwards(&self) -> bool {
        true
    }

    fn close(self: Box<Self>) -> Result<(), SinkError> {
        Ok(())
    }
}
