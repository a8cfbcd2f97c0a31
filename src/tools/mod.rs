//! The command-line tools beside `cityops run`, one file each: `check` (every rule problem
//! at once), `rule_test` (`cityops test`, declarative rule tests on the virtual clock),
//! `bench` (a replay measured end to end, scored and written out), `generator`
//! (`cityops gen`: seeded synthetic cities with labelled incidents), `record` (live MQTT
//! into a fixture) and `replay` (`cityops replay --to-mqtt`: a fixture published to a
//! broker, the load generator). `scripted_desk` runs a rule test's operator actions and
//! deadlines through the operations desk on the virtual clock.

pub mod bench;
pub mod check;
pub mod generator;
pub mod record;
pub mod replay;
pub mod rule_test;
pub mod scripted_desk;
