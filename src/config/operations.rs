//! Response deadlines per level (`[operations]` in the config): how long an alert may fire
//! unacknowledged, and how long until it should be resolved. The defaults follow the
//! four-colour scheme; the resolve times are Beijing 12345's response practice (2 h for risk
//! to life or property, 24 h for utilities, 7 days general, 15 days complex), the
//! acknowledge times are cityops' proposal for a staffed centre. Both are configurable, not law.

use serde::Deserialize;

use crate::config::DurationMs;
use crate::level::Level;

/// The two deadlines of one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelDeadlines {
    /// Time from firing (or from a rise in level) to an acknowledgement.
    pub acknowledge: DurationMs,
    /// Time from firing to resolution.
    pub resolve: DurationMs,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

impl LevelDeadlines {
    const fn of(acknowledge: i64, resolve: i64) -> Self {
        LevelDeadlines {
            acknowledge: DurationMs(acknowledge),
            resolve: DurationMs(resolve),
        }
    }
}

/// `[operations]`: deadlines per level, and how long resolved alerts stay on the desk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperationsConfig {
    pub red: LevelDeadlines,
    pub orange: LevelDeadlines,
    pub yellow: LevelDeadlines,
    pub blue: LevelDeadlines,
    /// Resolved alerts (and their history) are kept this long after they resolve; the
    /// response statistics of the last day need at least a day.
    pub keep_resolved: DurationMs,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        OperationsConfig {
            red: LevelDeadlines::of(5 * MINUTE, 2 * HOUR),
            orange: LevelDeadlines::of(15 * MINUTE, DAY),
            yellow: LevelDeadlines::of(HOUR, 7 * DAY),
            blue: LevelDeadlines::of(4 * HOUR, 15 * DAY),
            keep_resolved: DurationMs(7 * DAY),
        }
    }
}

impl OperationsConfig {
    pub fn deadlines(&self, level: Level) -> LevelDeadlines {
        match level {
            Level::Red => self.red,
            Level::Orange => self.orange,
            Level::Yellow => self.yellow,
            Level::Blue => self.blue,
        }
    }

    /// Refuses a deadline of zero (every alert would escalate at once) or a keep time under
    /// a day.
    pub fn check(&self) -> Result<(), String> {
        for level in Level::ALL {
            let d = self.deadlines(level);
            if d.acknowledge.0 <= 0 || d.resolve.0 <= 0 {
                return Err(format!("operations.{level}: deadlines must be longer than zero"));
            }
        }
        if self.keep_resolved.0 < DAY {
            return Err("operations.keep_resolved must be at least 1d (the statistics of the last day need it)".into());
        }
        Ok(())
    }
}
