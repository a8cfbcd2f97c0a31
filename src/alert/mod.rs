//! Warnings: the alert lifecycle (pending → firing → resolved), the warning JSON of
//! DESIGN.md, and the sinks that deliver it (one `Sink` trait; stdout, JSON Lines, MQTT,
//! webhook, and the dashboard's feed, which `http` implements). `alertmanager` keeps the
//! webhook's Alertmanager receiver seeing each firing alert as active until it resolves.
//! `desk` is what operators do with the alerts: acknowledgements, silences, deadlines.

pub(crate) mod alertmanager;
pub(crate) mod desk;
pub(crate) mod durable;
pub(crate) mod lifecycle;
pub(crate) mod mqtt_sink;
pub(crate) mod sink;
pub(crate) mod spool;
pub(crate) mod warning;
pub(crate) mod webhook;
