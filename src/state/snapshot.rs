//! What a checkpoint holds, as plain data: per rule its event-time clock, the ends of its
//! open windows (their rows come back from the log), its open sessions (with their rows),
//! its `devices` last-seen times and its alert lifecycle; for the sinks, the alerts firing
//! now. Each stage turns its state into these types and back; this module knows no stage.

use datafusion::arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::level::Level;
use crate::time::EpochMs;

/// One rule's state at a checkpoint's cut.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RuleSnapshot {
    pub rule: String,
    /// The rule text's hash: a rule whose text changed while cityops was down starts with
    /// fresh window state.
    pub version: String,
    pub table: String,
    pub description: String,
    /// Names of the alert key columns: alerts carry over to a changed rule only when these match.
    pub key_columns: Vec<String>,
    pub errors: u64,
    pub last_event_ms: Option<EpochMs>,
    /// Windows starting before this were not this version's to judge (`None`: all were).
    pub judge_from: JudgeFromSnapshot,
    pub alerts: Vec<AlertSnapshot>,
    /// Per input table: when its last row arrived (virtual ms), for idle advance.
    pub last_arrivals: Vec<(usize, Option<EpochMs>)>,
    pub kind: KindSnapshot,
}

/// `rules::worker::judge::JudgeFrom`, as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum JudgeFromSnapshot {
    Start,
    FirstRow,
    Ts(EpochMs),
}

/// The state each kind of rule keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum KindSnapshot {
    Row,
    Window(WindowsSnapshot),
    Session(SessionsSnapshot),
    Devices(DevicesSnapshot),
}

/// A window rule: its clock and which windows are open. The rows of open windows are not
/// stored: recovery feeds them again from the log, from `OpenWindowSnapshot::first_seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WindowsSnapshot {
    pub max_ts: Option<EpochMs>,
    pub closed_through: Option<EpochMs>,
    pub judged_through: Option<EpochMs>,
    pub row_max_ts: Option<EpochMs>,
    pub open: Vec<OpenWindowSnapshot>,
}

/// One open window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct OpenWindowSnapshot {
    pub end: EpochMs,
    /// The log position of the first message whose rows reached it; `None` when no row has.
    pub first_seq: Option<u64>,
}

/// A session rule: its clock and every open session with its rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionsSnapshot {
    pub max_ts: Option<EpochMs>,
    pub row_max_ts: Option<EpochMs>,
    pub sessions: Vec<SessionSnapshot>,
    /// Every session's rows, in `sessions` order (`SessionSnapshot::batches` each);
    /// stored as Arrow IPC beside the JSON.
    #[serde(skip)]
    pub rows: Vec<RecordBatch>,
}

/// One open session of one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionSnapshot {
    pub key: String,
    pub start: EpochMs,
    pub last: EpochMs,
    /// How many of `SessionsSnapshot::rows` are this session's.
    pub batches: usize,
}

/// A `devices` rule: every table's devices and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DevicesSnapshot {
    pub tables: Vec<TableDevicesSnapshot>,
}

/// One table's devices, in first-seen order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TableDevicesSnapshot {
    pub districts: Vec<String>,
    /// (device, district number, last `ts`).
    pub devices: Vec<(String, u32, EpochMs)>,
    pub clock: Option<EpochMs>,
    pub row_max: Option<EpochMs>,
    pub next_evaluation: Option<EpochMs>,
}

/// One pending or firing alert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AlertSnapshot {
    pub firing: bool,
    pub key: Vec<(String, Value)>,
    pub level: Level,
    pub values: Map<String, Value>,
    pub consecutive_breaches: u32,
    pub clean_steps: u32,
    pub first_breach_ms: EpochMs,
    pub alert_id: String,
    /// Notifications sent for this alert so far (the next one is number `notified + 1`).
    pub notified: u32,
}
