//! Getting telemetry in: the message type every source produces, topic parsing, the fixture
//! reader (replay), the live MQTT source, and the decoder that turns payloads into typed rows
//! (with `scan`, its allocation-free fast path, and `plain_scan`, that path's first try). Sources never decode;
//! the decoder never does I/O.

pub mod acks;
pub mod decode;
pub mod fixture;
pub mod message;
pub mod mqtt;
mod plain_scan;
pub mod replay;
pub mod scan;
pub mod topic;
pub mod worker;
