//! The bundled demo city, end to end: the exact list of warnings (golden file), each
//! incident caught at the level its rule grades, nothing outside the incidents, and every
//! reading accounted for. `UPDATE_GOLDEN=1 cargo test --release --test demo` rewrites the
//! golden file after an intended change; review its diff.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cityops::pipeline::{RunOutcome, Source};
use cityops::{Config, Level, Warning, WarningStatus};
use common::{run_with, sorted};
use serde_json::Value;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/demo-warnings.jsonl")
}

fn run_demo(dir: &tempfile::TempDir) -> RunOutcome {
    let mut config = Config::default();
    config.rules.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    run_with(config, Source::Demo, &dir.path().join("dead-letters.jsonl"))
}

/// The highest level each (rule, device) reached while firing.
fn max_levels(warnings: &[Warning]) -> BTreeMap<(String, String), Level> {
    let mut levels = BTreeMap::new();
    for w in warnings.iter().filter(|w| w.status == WarningStatus::Firing) {
        let device = w
            .key
            .get("device_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let entry = levels.entry((w.rule.clone(), device)).or_insert(w.level);
        *entry = (*entry).max(w.level);
    }
    levels
}

#[test]
fn demo_replay_matches_the_golden_warnings_and_catches_every_incident() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outcome = run_demo(&dir);
    let warnings = &outcome.warnings;

    // 1. The exact warnings, in a deterministic order.
    let actual: Vec<Value> = sorted(warnings);
    let golden = golden_path();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text: String = actual.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(&golden, text).expect("golden written");
    }
    let expected: Vec<Value> = common::read_jsonl(&golden);
    if actual != expected {
        let shown = |v: &[Value]| v.iter().map(Value::to_string).collect::<BTreeSet<_>>();
        let (a, e) = (shown(&actual), shown(&expected));
        let missing: Vec<_> = e.difference(&a).take(5).collect();
        let extra: Vec<_> = a.difference(&e).take(5).collect();
        panic!(
            "demo warnings differ from {} ({} actual, {} expected)\nmissing: {missing:#?}\nunexpected: {extra:#?}",
            golden.display(),
            actual.len(),
            expected.len()
        );
    }

    // 2. Each incident at the level its rule grades (fixtures/demo/incidents.md).
    let levels = max_levels(warnings);
    let level = |rule: &str, device: &str| levels.get(&(rule.to_string(), device.to_string())).copied();
    use Level::{Blue, Orange, Red, Yellow};
    let incidents = [
        ("pressure_low", "wp-12", Red),
        ("pressure_low", "wp-13", Red),
        ("pressure_low", "wp-14", Orange),
        ("pressure_low", "wp-15", Yellow),
        ("pressure_collapse", "wp-12", Red),
        ("turbidity_high", "wq-03", Red),
        ("chlorine_low", "wq-03", Yellow),
        ("supply_temp_low", "hs-07", Orange),
        ("room_temp_low", "room-hd-0702", Red),
        ("room_temp_low", "room-hd-0701", Orange),
        ("gas_lel_high", "gas-031", Red),
        ("underpass_flooding", "up-03", Red),
        ("manhole_cover_displaced", "mh-017", Orange),
        ("arterial_congestion", "td-a03", Orange),
        ("arterial_congestion", "td-a04", Orange),
        ("arterial_congestion", "td-a05", Orange),
        ("expressway_congestion", "td-e02", Blue),
        ("air_quality_poor", "aqi-02", Yellow),
        ("air_quality_poor", "aqi-05", Yellow),
        ("network_pressure_low", "hs-15", Orange),
        ("supply_temp_high", "hs-03", Yellow),
        ("ph_out_of_range", "wq-08", Yellow),
        ("station_silent", "hs-12", Orange),
    ];
    for (rule, device, expected) in incidents {
        assert_eq!(level(rule, device), Some(expected), "{rule} on {device}");
    }
    let red_rooms = levels
        .iter()
        .filter(|((r, _), l)| r == "room_temp_low" && **l == Red)
        .count();
    assert_eq!(red_rooms, 8, "the eight coldest rooms of the hs-07 compound reach red");

    // 3. Nothing outside the incidents.
    let incident_devices: BTreeSet<&str> = [
        "wp-12", "wp-13", "wp-14", "wp-15", "wq-03", "hs-07", "gas-031", "up-03", "mh-017", "td-a03", "td-a04",
        "td-a05", "td-e02", "aqi-02", "aqi-05", "hs-15", "hs-03", "wq-08", "hs-12",
    ]
    .into_iter()
    .collect();
    for (rule, device) in levels.keys() {
        assert!(
            incident_devices.contains(device.as_str()) || device.starts_with("room-hd-07"),
            "unexpected warning: {rule} on {device}"
        );
    }
    let tables: BTreeSet<&str> = warnings.iter().map(|w| w.table.as_str()).collect();
    assert_eq!(
        tables,
        BTreeSet::from(["devices", "heating", "sensor", "traffic", "water"])
    );

    // The silent station fires once, ten minutes into its silence, and resolves once it is back.
    let silent: Vec<(WarningStatus, &str)> = warnings
        .iter()
        .filter(|w| w.rule == "station_silent")
        .map(|w| (w.status, w.detected_at.as_str()))
        .collect();
    assert_eq!(
        silent,
        [
            (WarningStatus::Firing, "2026-01-15T02:30:00.000Z"),
            (WarningStatus::Resolved, "2026-01-15T05:06:00.000Z")
        ],
        "hs-12 is silent from 10:20 to 13:05 CST (02:20Z-05:05Z)"
    );

    // 4. The gas leak walks up through every level and resolves.
    let gas: Vec<(WarningStatus, Level)> = warnings
        .iter()
        .filter(|w| w.rule == "gas_lel_high")
        .map(|w| (w.status, w.level))
        .collect();
    assert_eq!(gas.first(), Some(&(WarningStatus::Firing, Blue)));
    assert_eq!(gas.last().map(|g| g.0), Some(WarningStatus::Resolved));
    for l in [Yellow, Orange, Red] {
        assert!(gas.contains(&(WarningStatus::Firing, l)), "gas reaches {l}: {gas:?}");
    }

    // 5. Every reading accounted for, and the demo's bad input found.
    let s = &outcome.summary;
    assert_eq!(s.messages_in, 254_507);
    assert_eq!(s.readings_in, s.readings_accepted + s.readings_rejected);
    let rejected: BTreeMap<String, u64> = s.rejected_by_reason.iter().cloned().collect();
    // fixtures/demo/incidents.md: 4 wrong types and 3 missing ts as whole messages, plus one
    // of each as the bad element of a gateway array.
    let expected_rejects: BTreeMap<String, u64> = [
        ("malformed_json", 4),
        ("wrong_type", 5),
        ("missing_ts", 4),
        ("ts_out_of_range", 3),
        ("bad_ts", 3),
        ("unknown_topic", 6),
        ("oversized", 1),
    ]
    .into_iter()
    .map(|(r, n)| (r.to_string(), n))
    .collect();
    assert_eq!(rejected, expected_rejects);
    let dead_letters = common::read_jsonl(&dir.path().join("dead-letters.jsonl"));
    let decode_rejects = dead_letters.iter().filter(|d| d["reason"] != "late").count() as u64;
    assert_eq!(
        decode_rejects, s.readings_rejected,
        "every rejected reading is in the dead-letter file"
    );
    assert_eq!(s.rule_errors, 0);
}

#[test]
fn demo_late_rows_are_the_five_delayed_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outcome = run_demo(&dir);
    let dead_letters = common::read_jsonl(&dir.path().join("dead-letters.jsonl"));
    let late_devices: BTreeSet<String> = dead_letters
        .iter()
        .filter(|d| d["reason"] == "late")
        .filter_map(|d| d["payload"]["device_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        late_devices,
        ["gas-005", "hs-09", "td-a15", "up-07", "wp-03"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    // Each late row is one dead letter naming its rules; the per-rule counts add up to them.
    let late_letters: Vec<&serde_json::Value> = dead_letters.iter().filter(|d| d["reason"] == "late").collect();
    assert_eq!(late_letters.len(), 5, "one dead letter per delayed message");
    assert_eq!(outcome.summary.late_dead_letters, 5);
    let late_total: u64 = outcome.summary.late_by_rule.iter().map(|(_, _, n)| n).sum();
    let named: usize = late_letters
        .iter()
        .map(|d| d["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        late_total, named as u64,
        "each rule's late count is the letters naming it"
    );
}
