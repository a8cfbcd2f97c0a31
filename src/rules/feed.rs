//! The channel-fed leaf of a rule's plan. A rule is planned once over a `StreamingTable`
//! whose only partition is a `Feed`; each evaluation binds a fresh stream into the feed and
//! executes the plan, whose leaf takes the stream synchronously during `execute`. So one
//! plan serves every open window at once, each window's batches streaming in as they arrive.

use std::fmt;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use parking_lot::Mutex;
use std::sync::Arc;

/// The leaf partition; holds the stream bound for the next execution.
pub(crate) struct Feed {
    schema: SchemaRef,
    slot: Mutex<Option<SendableRecordBatchStream>>,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub(crate) fn new(schema: SchemaRef) -> Self {
        Feed {
            schema,
            slot: Mutex::new(None),
        }
    }

    /// Binds the stream the next `execute` of the plan will read.
    pub(crate) fn bind(&self, stream: SendableRecordBatchStream) {
        *self.slot.lock() = Some(stream);
    }

    /// Whether a bound stream is still waiting to be taken (the plan did not bind its leaf).
    pub(crate) fn is_bound(&self) -> bool {
        self.slot.lock().is_some()
    }

    /// Removes a stream the plan did not take.
    pub(crate) fn unbind(&self) {
        self.slot.lock().take();
    }
}

impl PartitionStream for Feed {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match self.slot.lock().take() {
            Some(stream) => stream,
            None => {
                let error = DataFusionError::Internal("rule plan executed without a bound feed".to_string());
                Box::pin(RecordBatchStreamAdapter::new(
                    Arc::clone(&self.schema),
                    futures::stream::once(async move { Err(error) }),
                ))
            }
        }
    }
}
