//! The channel-fed leaf of a rule's plan. A rule is planned once over a `StreamingTable`
//! whose only partition is a `Feed`; each evaluation binds a fresh stream into the feed and
//! executes the plan, whose leaf takes the stream synchronously during `execute`. So one
//! plan serves every open window at once, each window's batches streaming in as they arrive.

use std::fmt;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
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

    /// Starts one execution of `plan`, whose leaf is this feed, over `input`. A plan that
    /// did not take the stream during `execute` reports its own error, or else an internal
    /// one naming the rule and `what` the stream was (`input`).
    pub(crate) fn execute(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
        input: SendableRecordBatchStream,
        (rule, what): (&str, &str),
    ) -> Result<SendableRecordBatchStream, DataFusionError> {
        *self.slot.lock() = Some(input);
        let output = plan.execute(0, ctx);
        if self.slot.lock().take().is_some() {
            output?;
            return Err(DataFusionError::Internal(format!(
                "rule {rule}: the plan did not take its {what} during execute"
            )));
        }
        output
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
