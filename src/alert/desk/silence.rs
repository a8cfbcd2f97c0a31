//! Silences in Alertmanager's API v2 shape: label matchers (`=`, `!=`, `=~`, `!~`, regexes
//! anchored as Alertmanager anchors them) over a time range. A warning's labels are
//! Alertmanager's: `alertname` (the rule), `severity` (the level), `table`, and its key
//! columns. Also the matcher text `amtool` and the `filter` query parameter use
//! (`name="value"`, `name=~"re.*"`), and the recurring maintenance windows of the config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alert::warning::Warning;
use crate::config::operations::{Maintenance, minute_of_day};
use crate::time::{EpochMs, format_ms, parse_ts_text};

/// One matcher, as Alertmanager's API writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Matcher {
    pub(crate) name: String,
    pub(crate) value: String,
    #[serde(rename = "isRegex")]
    pub(crate) is_regex: bool,
    #[serde(rename = "isEqual", default = "yes")]
    pub(crate) is_equal: bool,
}

fn yes() -> bool {
    true
}

/// A silence as posted (`id` empty for a new one) and as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Silence {
    #[serde(default)]
    pub(crate) id: String,
    pub(crate) matchers: Vec<Matcher>,
    pub(crate) starts_at: String,
    pub(crate) ends_at: String,
    pub(crate) created_by: String,
    pub(crate) comment: String,
}

/// Where a silence stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SilenceState {
    Pending,
    Active,
    Expired,
}

/// A silence the desk keeps: what was posted, its range in milliseconds and its matchers
/// ready to apply. The journal's snapshot keeps it as [`SilenceText`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "SilenceText", try_from = "SilenceText")]
pub(crate) struct KeptSilence {
    pub(crate) silence: Silence,
    pub(crate) starts_ms: EpochMs,
    pub(crate) ends_ms: EpochMs,
    pub(crate) updated_ms: EpochMs,
    matchers: Vec<LabelTest>,
}

/// A kept silence as the journal writes it (its matchers are compiled again on reading).
#[derive(Serialize, Deserialize)]
pub(crate) struct SilenceText {
    silence: Silence,
    starts_ms: EpochMs,
    ends_ms: EpochMs,
    updated_ms: EpochMs,
}

impl From<KeptSilence> for SilenceText {
    fn from(kept: KeptSilence) -> Self {
        SilenceText {
            silence: kept.silence,
            starts_ms: kept.starts_ms,
            ends_ms: kept.ends_ms,
            updated_ms: kept.updated_ms,
        }
    }
}

impl TryFrom<SilenceText> for KeptSilence {
    type Error = String;

    fn try_from(text: SilenceText) -> Result<Self, String> {
        let matchers = text
            .silence
            .matchers
            .iter()
            .map(LabelTest::new)
            .collect::<Result<_, _>>()?;
        Ok(KeptSilence {
            silence: text.silence,
            starts_ms: text.starts_ms,
            ends_ms: text.ends_ms,
            updated_ms: text.updated_ms,
            matchers,
        })
    }
}

impl KeptSilence {
    /// Checks a posted silence: at least one matcher, valid regexes, an end after the start.
    pub(crate) fn new(silence: Silence, updated_ms: EpochMs) -> Result<Self, String> {
        if silence.matchers.is_empty() {
            return Err("a silence needs at least one matcher".to_string());
        }
        if silence.matchers.iter().all(matches_empty) {
            return Err(
                "a silence must not match every alert: give at least one matcher that an empty label fails".to_string(),
            );
        }
        let time = |text: &str, what: &str| {
            parse_ts_text(text).map_err(|_| format!("{what} `{text}` is not an RFC 3339 time"))
        };
        let starts_ms = time(&silence.starts_at, "startsAt")?;
        let ends_ms = time(&silence.ends_at, "endsAt")?;
        if ends_ms <= starts_ms {
            return Err(format!(
                "endsAt ({}) must come after startsAt ({})",
                silence.ends_at, silence.starts_at
            ));
        }
        if silence.comment.len() > super::actions::MAX_TEXT || silence.created_by.len() > 200 {
            return Err(format!(
                "comment or createdBy too long (at most {} bytes)",
                super::actions::MAX_TEXT
            ));
        }
        let matchers = silence.matchers.iter().map(LabelTest::new).collect::<Result<_, _>>()?;
        Ok(KeptSilence {
            silence,
            starts_ms,
            ends_ms,
            updated_ms,
            matchers,
        })
    }

    pub(crate) fn id(&self) -> &str {
        &self.silence.id
    }

    pub(crate) fn state(&self, now_ms: EpochMs) -> SilenceState {
        if now_ms < self.starts_ms {
            SilenceState::Pending
        } else if now_ms < self.ends_ms {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }

    /// Whether the silence mutes a warning with these labels at `now_ms`.
    pub(crate) fn mutes(&self, labels: &BTreeMap<String, String>, now_ms: EpochMs) -> bool {
        self.state(now_ms) == SilenceState::Active && self.matches(labels)
    }

    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|m| m.accepts(labels))
    }

    /// Ends the silence at `now_ms` (an expired one stays as it was; a pending one ends
    /// before it started, as Alertmanager does it).
    pub(crate) fn expire(&mut self, now_ms: EpochMs) {
        if self.ends_ms > now_ms {
            if self.starts_ms > now_ms {
                self.starts_ms = now_ms;
                self.silence.starts_at = format_ms(now_ms);
            }
            self.ends_ms = now_ms;
            self.silence.ends_at = format_ms(self.ends_ms);
            self.updated_ms = now_ms;
        }
    }

    /// Alertmanager's `gettableSilence`.
    pub(crate) fn gettable(&self, now_ms: EpochMs) -> Value {
        let mut json = serde_json::to_value(&self.silence).unwrap_or(Value::Null);
        json["status"] = serde_json::json!({"state": self.state(now_ms)});
        json["updatedAt"] = Value::from(format_ms(self.updated_ms));
        json
    }
}

/// Whether a matcher accepts an empty (missing) label, as Alertmanager refuses silences
/// whose every matcher does.
fn matches_empty(matcher: &Matcher) -> bool {
    LabelTest::new(matcher)
        .map(|t| t.accepts(&BTreeMap::new()))
        .unwrap_or(false)
}

/// A matcher ready to apply.
#[derive(Debug, Clone)]
pub(crate) struct LabelTest {
    name: String,
    equal: bool,
    test: ValueTest,
}

#[derive(Debug, Clone)]
enum ValueTest {
    Exactly(String),
    Pattern(regex::Regex),
}

impl LabelTest {
    pub(crate) fn new(matcher: &Matcher) -> Result<Self, String> {
        let test = if matcher.is_regex {
            // Alertmanager anchors every regex at both ends.
            let anchored = format!("^(?:{})$", matcher.value);
            ValueTest::Pattern(
                regex::Regex::new(&anchored)
                    .map_err(|e| format!("matcher {}: bad regex `{}`: {e}", matcher.name, matcher.value))?,
            )
        } else {
            ValueTest::Exactly(matcher.value.clone())
        };
        Ok(LabelTest {
            name: matcher.name.clone(),
            equal: matcher.is_equal,
            test,
        })
    }

    /// Whether the labels pass (a missing label is the empty string, as in Alertmanager).
    pub(crate) fn accepts(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.name).map_or("", String::as_str);
        let hit = match &self.test {
            ValueTest::Exactly(v) => v == value,
            ValueTest::Pattern(re) => re.is_match(value),
        };
        hit == self.equal
    }
}

/// A daily maintenance window of the config, ready to apply: a silence that comes back every
/// day from `from` to `to`, local time.
#[derive(Debug, Clone)]
pub(crate) struct MaintenanceWindow {
    pub(crate) name: String,
    tests: Vec<LabelTest>,
    from_min: i64,
    to_min: i64,
    offset_min: i64,
}

const DAY_MINUTES: i64 = 1440;

impl MaintenanceWindow {
    pub(crate) fn new(window: &Maintenance, offset_min: i64) -> Result<Self, String> {
        let tests = window
            .matchers
            .iter()
            .map(|m| parse_matcher(m).and_then(|m| LabelTest::new(&m)))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("operations.maintenance `{}`: {e}", window.name))?;
        Ok(MaintenanceWindow {
            name: window.name.clone(),
            tests,
            from_min: minute_of_day(&window.from)?,
            to_min: minute_of_day(&window.to)?,
            offset_min,
        })
    }

    /// Whether the window is open at `at_ms`.
    pub(crate) fn open(&self, at_ms: EpochMs) -> bool {
        let minute = (at_ms.div_euclid(60_000) + self.offset_min).rem_euclid(DAY_MINUTES);
        if self.from_min < self.to_min {
            (self.from_min..self.to_min).contains(&minute)
        } else {
            minute >= self.from_min || minute < self.to_min
        }
    }

    pub(crate) fn mutes(&self, labels: &BTreeMap<String, String>, at_ms: EpochMs) -> bool {
        self.open(at_ms) && self.tests.iter().all(|t| t.accepts(labels))
    }

    /// The first end of the window after `at_ms`.
    pub(crate) fn next_end(&self, at_ms: EpochMs) -> EpochMs {
        let local = at_ms.div_euclid(60_000) + self.offset_min;
        let day_start = local - local.rem_euclid(DAY_MINUTES);
        let mut end_ms = (day_start + self.to_min - self.offset_min) * 60_000;
        while end_ms <= at_ms {
            end_ms += DAY_MINUTES * 60_000;
        }
        end_ms
    }
}

/// Parses the matcher text of `amtool` and of the `filter` parameter: `name="value"`,
/// `name!=value`, `name=~"re"`, `name!~"re"` (quotes optional, `{…}` around a list allowed).
pub(crate) fn parse_matcher(text: &str) -> Result<Matcher, String> {
    let text = text.trim().trim_start_matches('{').trim_end_matches('}').trim();
    let at = text
        .find(['=', '!'])
        .ok_or_else(|| format!("`{text}` is not a matcher; write it like alertname=\"gas_leak\""))?;
    let (name, rest) = text.split_at(at);
    let (is_equal, is_regex, value) = if let Some(v) = rest.strip_prefix("=~") {
        (true, true, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (false, true, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (false, false, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (true, false, v)
    } else {
        return Err(format!("`{text}` is not a matcher; use =, !=, =~ or !~"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{text}` has no label name"));
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
        .replace("\\\"", "\"");
    Ok(Matcher {
        name: name.to_string(),
        value,
        is_regex,
        is_equal,
    })
}

/// A warning's labels, as Alertmanager sees them.
pub(crate) fn labels_of(warning: &Warning) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_string(), warning.rule.clone());
    labels.insert("severity".to_string(), warning.level.as_str().to_string());
    labels.insert("table".to_string(), warning.table.clone());
    for (name, value) in &warning.key {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        labels.insert(name.clone(), text);
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn silence(matchers: &[&str]) -> Silence {
        Silence {
            id: "s1".into(),
            matchers: matchers.iter().map(|m| parse_matcher(m).unwrap()).collect(),
            starts_at: "2026-01-14T02:00:00Z".into(),
            ends_at: "2026-01-14T04:00:00Z".into(),
            created_by: "li".into(),
            comment: "maintenance".into(),
        }
    }

    #[test]
    fn matchers_parse_as_amtool_writes_them() {
        let m = parse_matcher("alertname=\"gas_leak\"").unwrap();
        assert_eq!(
            (m.name.as_str(), m.value.as_str(), m.is_regex, m.is_equal),
            ("alertname", "gas_leak", false, true)
        );
        let m = parse_matcher("{district=~\"chao.*\"}").unwrap();
        assert_eq!((m.value.as_str(), m.is_regex, m.is_equal), ("chao.*", true, true));
        let m = parse_matcher("severity!=blue").unwrap();
        assert_eq!((m.value.as_str(), m.is_regex, m.is_equal), ("blue", false, false));
        assert!(parse_matcher("nothing").is_err());
        assert!(parse_matcher("=x").is_err());
    }

    #[test]
    fn a_silence_mutes_only_matching_labels_inside_its_range() {
        let kept = KeptSilence::new(silence(&["alertname=gas_leak", "district=~\"chao.*\""]), 0).unwrap();
        let start = parse_ts_text("2026-01-14T02:00:00Z").unwrap();
        let hit = labels(&[("alertname", "gas_leak"), ("district", "chaoyang")]);
        let miss = labels(&[("alertname", "gas_leak"), ("district", "xicheng")]);
        // Anchored: a regex matching part of the value does not match.
        let partial = labels(&[("alertname", "gas_leak"), ("district", "xichaoyang")]);
        assert!(kept.mutes(&hit, start));
        assert!(!kept.mutes(&miss, start));
        assert!(!kept.mutes(&partial, start));
        assert!(!kept.mutes(&hit, start - 1), "pending");
        assert!(!kept.mutes(&hit, start + 2 * 3_600_000), "expired at its end");
        assert_eq!(kept.state(start - 1), SilenceState::Pending);
    }

    #[test]
    fn a_nightly_maintenance_window_opens_every_night_in_local_time() {
        let window = Maintenance {
            name: "haidian mains".into(),
            matchers: vec!["district=\"haidian\"".into()],
            from: "23:30".into(),
            to: "02:00".into(),
        };
        let window = MaintenanceWindow::new(&window, 8 * 60).unwrap(); // Beijing
        let utc = |text: &str| parse_ts_text(text).unwrap();
        let haidian = labels(&[("district", "haidian")]);
        // 23:45 Beijing is 15:45 UTC; 02:00 Beijing is 18:00 UTC.
        assert!(window.mutes(&haidian, utc("2026-01-14T15:45:00Z")));
        assert!(window.mutes(&haidian, utc("2026-01-14T17:59:59Z")));
        assert!(!window.mutes(&haidian, utc("2026-01-14T18:00:00Z")));
        assert!(!window.mutes(&labels(&[("district", "xicheng")]), utc("2026-01-14T16:00:00Z")));
        assert!(!window.open(utc("2026-01-14T12:00:00Z")));
        assert_eq!(
            window.next_end(utc("2026-01-14T15:45:00Z")),
            utc("2026-01-14T18:00:00Z")
        );
        assert_eq!(
            window.next_end(utc("2026-01-14T18:00:00Z")),
            utc("2026-01-15T18:00:00Z")
        );
    }

    #[test]
    fn bad_silences_are_refused_with_the_reason() {
        let mut backwards = silence(&["alertname=x"]);
        backwards.ends_at = "2026-01-14T01:00:00Z".into();
        assert!(KeptSilence::new(backwards, 0).unwrap_err().contains("must come after"));
        assert!(
            KeptSilence::new(silence(&["alertname=~\"(\""]), 0)
                .unwrap_err()
                .contains("bad regex")
        );
        assert!(
            KeptSilence::new(silence(&["alertname=~\".*\""]), 0)
                .unwrap_err()
                .contains("every alert")
        );
        assert!(KeptSilence::new(silence(&[]), 0).is_err());
    }
}
