//! Getting telemetry in: the message type every source produces, topic parsing, the fixture
//! reader (replay), the live MQTT source, and the decoder that turns payloads into typed rows
//! (with `scan`, its allocation-free fast path). Sources never decode;
//! the decoder never does I/O.

pub mod acks;
pub mod decode;
pub mod fixture;
pub mod message;
pub mod mqtt;
pub mod replay;
pub mod scan;
pub mod topic;
pub mod worker;
