//! `cityops test`: declarative rule tests. One TOML file per case holds input readings
//! (series at a fixed interval, and single messages with an optional arrival time for late
//! or out-of-order input) and the expected warnings, in order for each rule (rules run in
//! parallel, so only a rule's own sequence is ordered). Each case is replayed through the
//! real pipeline on the virtual clock; a mismatch prints a diff. Format: see the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::alert::sink::SinkConfig;
use crate::alert::warning::Warning;
use crate::config::Config;
use crate::ingest::replay::Speed;
use crate::pipeline::{self, RunOptions, Source};
use crate::rules::worker::DetectionClock;
use crate::time::{EpochMs, format_ms, parse_duration_ms, parse_ts_text};
use crate::tools::scripted_desk::{self, ScriptedAction};

/// One test case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default)]
    pub description: String,
    /// The rules whose warnings are checked (all rules in the directory run).
    pub rules: Vec<String>,
    #[serde(default)]
    pub series: Vec<Series>,
    #[serde(default)]
    pub message: Vec<SingleMessage>,
    #[serde(default)]
    pub expect: Vec<Expected>,
    /// Operator actions on the virtual clock; with any, or with `until`, the warnings
    /// compared are what the operations desk sends (escalations included).
    #[serde(default)]
    pub action: Vec<ScriptedAction>,
    /// The virtual clock runs on to here after the input (deadlines may pass meanwhile).
    pub until: Option<String>,
}

/// Readings every `every` in [from, to).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub topic: String,
    pub from: String,
    pub to: String,
    pub every: String,
    pub payload: toml::Table,
}

/// One message; it arrives at `arrive` (default: its `ts`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleMessage {
    pub topic: String,
    pub ts: String,
    pub arrive: Option<String>,
    pub payload: toml::Table,
}

/// One expected warning; fields left out are not compared (`key` matches a subset).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub rule: String,
    pub status: String,
    pub level: String,
    #[serde(default)]
    pub key: BTreeMap<String, Value>,
    pub detected_at: Option<String>,
    pub window_start: Option<String>,
    /// For `escalated`: the deadline that passed (`acknowledge` or `resolve`).
    pub escalation: Option<String>,
    /// Whether a silence held it back from the paging sinks.
    pub silenced: Option<bool>,
    /// Who had acknowledged the alert when it was sent.
    pub acknowledged_by: Option<String>,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub path: PathBuf,
    pub passed: bool,
    /// Why it failed: a diff or an error.
    pub report: String,
}

/// Runs every `*.toml` case under `dir` against the rules in `config.rules.dir`.
pub fn run_dir(config: &Config, dir: &Path) -> Vec<CaseResult> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    if paths.is_empty() {
        return vec![CaseResult {
            path: dir.to_path_buf(),
            passed: false,
            report: "no test cases (*.toml) found".to_string(),
        }];
    }
    paths.iter().map(|p| run_case(config, p)).collect()
}

/// Runs one case file.
pub fn run_case(config: &Config, path: &Path) -> CaseResult {
    let fail = |report: String| CaseResult {
        path: path.to_path_buf(),
        passed: false,
        report,
    };
    let case: Case = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot read the case: {e}")),
    };
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(format!("no scratch directory: {e}")),
    };
    let fixture = scratch.path().join("input.jsonl");
    if let Err(e) = write_fixture(&case, &fixture) {
        return fail(e);
    }
    // A case is a fixed run on the virtual clock: no hot reload.
    let mut config = config.clone();
    config.rules.reload_interval = crate::config::DurationMs(0);
    let options_config = config.clone();
    let options = RunOptions {
        state: None,
        config,
        fixture: Source::File(fixture),
        speed: Speed::Max,
        sinks: SinkConfig {
            append: false,
            stdout: false,
            jsonl: None,
            collect: true,
            mqtt: None,
            webhook: None,
        },
        dead_letter_path: scratch.path().join("dead-letters.jsonl"),
        clock: DetectionClock::EventTime,
        capture_results: false,
        reload_reports: None,
        stop: None,
        metrics: None,
    };
    let outcome = match pipeline::run(options) {
        Ok(o) => o,
        Err(e) => return fail(format!("the pipeline failed: {e}")),
    };
    let warnings = if case.action.is_empty() && case.until.is_none() {
        outcome.warnings
    } else {
        match scripted_desk::run(
            &options_config.operations,
            &outcome.warnings,
            &case.action,
            case.until.as_deref(),
        ) {
            Ok(sent) => sent,
            Err(e) => return fail(e),
        }
    };
    // Rules run in parallel, so only each rule's own sequence is ordered: compare rule by rule.
    let mut actual: Vec<&Warning> = warnings.iter().filter(|w| case.rules.contains(&w.rule)).collect();
    actual.sort_by(|a, b| a.rule.cmp(&b.rule));
    let mut case = case;
    case.expect.sort_by(|a, b| a.rule.cmp(&b.rule));
    let mismatch = actual.len() != case.expect.len() || case.expect.iter().zip(&actual).any(|(e, a)| !matches(e, a));
    if !mismatch {
        return CaseResult {
            path: path.to_path_buf(),
            passed: true,
            report: String::new(),
        };
    }
    let mut diff = format!(
        "{} expected, {} actual warnings of {}:\n",
        case.expect.len(),
        actual.len(),
        case.rules.join(", ")
    );
    for i in 0..case.expect.len().max(actual.len()) {
        let expected = case.expect.get(i).map(show_expected);
        let got = actual.get(i).map(|a| show_actual(a));
        match (
            expected,
            got,
            case.expect
                .get(i)
                .zip(actual.get(i))
                .is_some_and(|(e, a)| matches(e, a)),
        ) {
            (Some(e), Some(_), true) => diff.push_str(&format!("    {e}\n")),
            (e, a, _) => {
                if let Some(e) = e {
                    diff.push_str(&format!("  - {e}\n"));
                }
                if let Some(a) = a {
                    diff.push_str(&format!("  + {a}\n"));
                }
            }
        }
    }
    fail(diff)
}

fn matches(e: &Expected, a: &Warning) -> bool {
    let status = serde_json::to_value(a.status).ok();
    e.rule == a.rule
        && status.as_ref().and_then(Value::as_str) == Some(e.status.as_str())
        && e.level == a.level.as_str()
        && e.key.iter().all(|(k, v)| a.key.get(k) == Some(v))
        && same_time(e.detected_at.as_deref(), Some(&a.detected_at))
        && same_time(e.window_start.as_deref(), a.window_start.as_deref())
        && e.escalation
            .as_ref()
            .is_none_or(|d| a.marks.escalation.as_ref() == Some(d))
        && e.silenced.is_none_or(|s| a.marks.silenced == s)
        && e.acknowledged_by
            .as_ref()
            .is_none_or(|by| a.marks.acknowledged.as_ref().map(|ack| &ack.by) == Some(by))
}

/// An expected time (any accepted form) against an RFC 3339 value; absent means "any".
fn same_time(expected: Option<&str>, actual: Option<&str>) -> bool {
    match expected {
        None => true,
        Some(e) => parse_ts_text(e).ok() == actual.and_then(|a| parse_ts_text(a).ok()),
    }
}

fn show_expected(e: &Expected) -> String {
    let key: Vec<String> = e
        .key
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_string).unwrap_or(v.to_string())))
        .collect();
    let mut line = format!("{} {} {} {}", e.rule, e.status, e.level, key.join(" "));
    if let Some(t) = &e.detected_at {
        line.push_str(&format!(" detected_at={t}"));
    }
    if let Some(t) = &e.window_start {
        line.push_str(&format!(" window_start={t}"));
    }
    if let Some(deadline) = &e.escalation {
        line.push_str(&format!(" escalation={deadline}"));
    }
    if let Some(silenced) = e.silenced {
        line.push_str(&format!(" silenced={silenced}"));
    }
    if let Some(by) = &e.acknowledged_by {
        line.push_str(&format!(" acknowledged_by={by}"));
    }
    line
}

fn show_actual(a: &Warning) -> String {
    let status = serde_json::to_value(a.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let key: Vec<String> = a
        .key
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_string).unwrap_or(v.to_string())))
        .collect();
    let window = a
        .window_start
        .as_deref()
        .map(|w| format!(" window_start={w}"))
        .unwrap_or_default();
    let mut marks = String::new();
    if let Some(deadline) = &a.marks.escalation {
        marks.push_str(&format!(" escalation={deadline}"));
    }
    if a.marks.silenced {
        marks.push_str(" silenced=true");
    }
    if let Some(ack) = &a.marks.acknowledged {
        marks.push_str(&format!(" acknowledged_by={}", ack.by));
    }
    format!(
        "{} {} {} {} detected_at={}{}{}",
        a.rule,
        status,
        a.level.as_str(),
        key.join(" "),
        a.detected_at,
        window,
        marks
    )
}

/// Expands the case's input into a fixture, ordered by arrival.
fn write_fixture(case: &Case, path: &Path) -> Result<(), String> {
    let time = |text: &str| parse_ts_text(text).map_err(|_| format!("`{text}` is not a time"));
    let mut messages: Vec<(EpochMs, EpochMs, &str, Value)> = Vec::new(); // (arrival, ts, topic, payload)
    for s in &case.series {
        let (from, to) = (time(&s.from)?, time(&s.to)?);
        let every = parse_duration_ms(&s.every)?.max(1);
        let payload = serde_json::to_value(&s.payload).map_err(|e| e.to_string())?;
        let mut ts = from;
        while ts < to {
            messages.push((ts, ts, &s.topic, with_ts(&payload, ts)));
            ts += every;
        }
    }
    for m in &case.message {
        let ts = time(&m.ts)?;
        let arrive = m.arrive.as_deref().map(time).transpose()?.unwrap_or(ts);
        let payload = serde_json::to_value(&m.payload).map_err(|e| e.to_string())?;
        messages.push((arrive, ts, &m.topic, with_ts(&payload, ts)));
    }
    messages.sort_by_key(|m| m.0);
    let origin = messages.first().map(|m| m.0).unwrap_or_default();
    let text: String = messages
        .iter()
        .map(|(arrive, _, topic, payload)| {
            format!(
                "{}\n",
                json!({"at": arrive - origin, "topic": topic, "payload": payload})
            )
        })
        .collect();
    std::fs::write(path, text).map_err(|e| e.to_string())
}

fn with_ts(payload: &Value, ts: EpochMs) -> Value {
    let mut object = payload.as_object().cloned().unwrap_or_default();
    object.entry("ts").or_insert_with(|| Value::String(format_ms(ts)));
    Value::Object(object)
}
