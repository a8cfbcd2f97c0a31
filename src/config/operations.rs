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

/// A recurring maintenance window (`[[operations.maintenance]]`): every day from `from` to
/// `to` (local times, `HH:MM`, on `[operations] utc_offset`; past midnight allowed), the
/// warnings whose labels pass every matcher are silenced, as a silence would.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    pub name: String,
    /// Alertmanager matcher texts: `district="haidian"`, `device_id=~"wp-1.*"`.
    pub matchers: Vec<String>,
    pub from: String,
    pub to: String,
}

/// `[operations]`: deadlines per level, how long resolved alerts stay on the desk, and the
/// recurring maintenance windows.
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
    /// The local time of maintenance windows, as an offset from UTC (`+08:00`: Beijing).
    pub utc_offset: String,
    pub maintenance: Vec<Maintenance>,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        OperationsConfig {
            red: LevelDeadlines::of(5 * MINUTE, 2 * HOUR),
            orange: LevelDeadlines::of(15 * MINUTE, DAY),
            yellow: LevelDeadlines::of(HOUR, 7 * DAY),
            blue: LevelDeadlines::of(4 * HOUR, 15 * DAY),
            keep_resolved: DurationMs(7 * DAY),
            utc_offset: "+08:00".to_string(),
            maintenance: Vec::new(),
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
        offset_minutes(&self.utc_offset)?;
        for window in &self.maintenance {
            let (from, to) = (minute_of_day(&window.from), minute_of_day(&window.to));
            match (from, to) {
                (Ok(from), Ok(to)) if from != to => {}
                (Ok(_), Ok(_)) => {
                    return Err(format!(
                        "operations.maintenance `{}`: from and to are the same time",
                        window.name
                    ));
                }
                (Err(e), _) | (_, Err(e)) => return Err(format!("operations.maintenance `{}`: {e}", window.name)),
            }
            if window.matchers.is_empty() {
                return Err(format!(
                    "operations.maintenance `{}`: give at least one matcher",
                    window.name
                ));
            }
        }
        Ok(())
    }
}

/// `HH:MM` → minutes after midnight.
pub(crate) fn minute_of_day(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a time of day; write it like 02:00");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `+08:00` → 480; `-05:30` → -330.
pub(crate) fn offset_minutes(text: &str) -> Result<i64, String> {
    let bad = || format!("operations.utc_offset `{text}` is not an offset; write it like +08:00");
    let (sign, rest) = match text.trim().split_at_checked(1) {
        Some(("+", rest)) => (1, rest),
        Some(("-", rest)) => (-1, rest),
        _ => return Err(bad()),
    };
    let minutes = minute_of_day(rest).map_err(|_| bad())?;
    Ok(sign * minutes)
}
