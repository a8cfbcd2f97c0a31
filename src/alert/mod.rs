//! Warnings: the four-colour levels, the alert lifecycle (pending → firing → resolved), the
//! warning JSON of DESIGN.md, and the sinks that deliver it.

pub mod level;
pub mod lifecycle;
pub mod mqtt_sink;
pub mod sink;
pub mod spool;
pub mod warning;
pub mod webhook;
