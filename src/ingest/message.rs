//! The unit a source hands to the pipeline: one MQTT message (topic + payload bytes) with its
//! arrival times, plus the control items that travel in the same queues.

/// One message as it arrived, before decoding.
#[derive(Debug, Clone)]
pub struct Message {
    /// Virtual arrival time: the fixture's `at` offset in replay, milliseconds since start live.
    pub at_ms: i64,
    pub topic: String,
    /// The payload bytes exactly as received (JSON text when valid). Shared, not copied:
    /// a slice of the fixture's read buffer or of the MQTT client's receive buffer.
    pub payload: bytes::Bytes,
    /// A recorded payload that was not JSON (`"raw"` in a fixture): always dead-lettered.
    pub recorded_invalid: bool,
    /// Wall-clock arrival, nanoseconds since the pipeline's start (for latency).
    pub arrived_ns: u64,
}

/// What travels through the decode queues, in order.
#[derive(Debug)]
pub enum Ingest {
    Message(Message),
    /// Messages a source read together for the same worker, in arrival order: one queue
    /// operation and at most one wake-up for the lot (see `queue::Bursts`).
    Messages(Vec<Message>),
    /// The virtual clock reached `now_ms`; lets idle tables advance their watermark.
    Tick {
        now_ms: i64,
    },
    /// New rule routes after a reload: rows before this point go to the old routes.
    Reroute(std::sync::Arc<crate::rules::routes::Routes>),
    /// The source is exhausted; flush everything.
    End,
}
