//! The alert lifecycle end to end through the pipeline: window rules with `for` and
//! `resolve`, row rules grading and escalating per row, clean rows and windows, and results
//! that do not depend on batch sizes.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{MIN, Scenario, T0, at, sorted, steps};
use serde_json::json;

const ROOM_RULE: &str = "-- description: Room below 18 °C (GB/T 33833-2017 §5.1)
-- level: yellow
-- for: 2
SELECT district, device_id, avg(room_temp_c) AS avg_room_temp_c
FROM heating
WHERE kind = 'room'
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id
HAVING avg(room_temp_c) < 18
";

/// r1 is cold for minutes 0-2, warm from minute 3; r2 is always warm.
fn room_fixture(s: &Scenario) -> std::path::PathBuf {
    let mut messages = Vec::new();
    for second in (0..6 * 60).step_by(10) {
        let ms = second * 1_000;
        let cold = ms < 3 * MIN;
        messages.push((
            ms,
            "city/haidian/heating/r1",
            json!({"ts": T0 + ms, "kind": "room", "room_temp_c": if cold { 16.5 } else { 20.5 }}),
        ));
        messages.push((
            ms + 1,
            "city/haidian/heating/r2",
            json!({"ts": T0 + ms, "kind": "room", "room_temp_c": 21.0}),
        ));
    }
    s.fixture(&messages)
}

#[test]
fn window_rule_fires_after_for_windows_and_resolves_on_a_clean_window() {
    let s = Scenario::new();
    s.rule("room_cold", ROOM_RULE);
    let outcome = s.run(&room_fixture(&s), |_| {});
    assert_eq!(
        steps(&outcome.warnings, "room_cold"),
        vec![
            ("firing".to_string(), "yellow".to_string(), Some(at(MIN))),
            ("resolved".to_string(), "yellow".to_string(), Some(at(3 * MIN))),
        ]
    );
    let fired = &outcome.warnings[0];
    assert_eq!(
        fired.key,
        serde_json::from_value(json!({"district": "haidian", "device_id": "r1"})).expect("map")
    );
    assert_eq!(fired.values["avg_room_temp_c"], json!(16.5));
    assert_eq!(fired.first_breach, at(0));
    assert_eq!(
        fired.detected_at,
        at(2 * MIN + 10_000),
        "the row at 2:10 moved the watermark (2:08) past 2:00"
    );
    assert_eq!(outcome.warnings[1].alert_id, fired.alert_id, "one firing keeps its id");
    assert_eq!(
        outcome.summary.windows_closed, 6,
        "one evaluation per window covers every room"
    );
    assert_eq!(outcome.summary.readings_in, 72);
}

#[test]
fn results_do_not_depend_on_batch_size() {
    let s = Scenario::new();
    s.rule("room_cold", ROOM_RULE);
    let fixture = room_fixture(&s);
    let one = s.run(&fixture, |c| c.engine.batch_rows = 1);
    let many = s.run(&fixture, |c| c.engine.batch_rows = 4096);
    assert_eq!(one.warnings.len(), 2);
    assert_eq!(sorted(&one.warnings), sorted(&many.warnings));
}

#[test]
fn row_rule_grades_each_row_escalates_and_resolves_after_clean_rows() {
    let s = Scenario::new();
    s.rule(
        "gas_high",
        "-- level: blue
-- key: district, device_id
-- resolve: 2
SELECT district, device_id, value AS gas_lel,
       CASE WHEN value >= 50 THEN 'red' WHEN value >= 25 THEN 'orange'
            WHEN value >= 10 THEN 'yellow' ELSE 'blue' END AS level
FROM sensor WHERE kind = 'gas_lel' AND value >= 5
",
    );
    let readings = [3.0, 6.0, 7.0, 12.0, 30.0, 55.0, 8.0, 1.0, 2.0, 1.0];
    let messages: Vec<_> = readings
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ms = i as i64 * MIN;
            (
                ms,
                "city/xicheng/sensor/gas-031",
                json!({"ts": T0 + ms, "kind": "gas_lel", "value": v, "unit": "%LEL"}),
            )
        })
        .collect();
    // All rows in one batch: the lifecycle still steps row by row.
    let outcome = s.run(&s.fixture(&messages), |_| {});
    let shown: Vec<(String, String)> = steps(&outcome.warnings, "gas_high")
        .into_iter()
        .map(|(s, l, _)| (s, l))
        .collect();
    // 8 %LEL is blue again: a level change down is notified too; two clean rows resolve it.
    let expected = [
        ("firing", "blue"),
        ("firing", "yellow"),
        ("firing", "orange"),
        ("firing", "red"),
        ("firing", "blue"),
        ("resolved", "blue"),
    ];
    assert_eq!(shown, expected.map(|(s, l)| (s.to_string(), l.to_string())));
    assert_eq!(outcome.warnings[0].detected_at, at(MIN));
    assert_eq!(outcome.warnings[5].detected_at, at(8 * MIN), "two clean rows");
    assert_eq!(outcome.warnings[3].values["gas_lel"], json!(55.0));
    assert_eq!(outcome.warnings[3].window_start, None);
    assert!(
        outcome
            .warnings
            .iter()
            .all(|w| w.alert_id == outcome.warnings[0].alert_id)
    );
}

#[test]
fn row_rule_with_a_duration_fires_only_once_the_breach_has_lasted() {
    let s = Scenario::new();
    s.rule(
        "tilt",
        "-- level: orange
-- for: 2m
SELECT district, device_id, value AS tilt_deg FROM sensor WHERE kind = 'manhole_tilt' AND value > 10
",
    );
    let messages: Vec<_> = [12.0, 14.0, 15.0, 2.0]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                i as i64 * MIN,
                "city/fengtai/sensor/mh-017",
                json!({"ts": T0 + i as i64 * MIN, "kind": "manhole_tilt", "value": v}),
            )
        })
        .collect();
    let outcome = s.run(&s.fixture(&messages), |_| {});
    let shown: Vec<_> = steps(&outcome.warnings, "tilt")
        .into_iter()
        .map(|(s, l, _)| (s, l))
        .collect();
    assert_eq!(
        shown,
        [
            ("firing".to_string(), "orange".to_string()),
            ("resolved".to_string(), "orange".to_string())
        ]
    );
    assert_eq!(outcome.warnings[0].detected_at, at(2 * MIN));
    assert_eq!(
        outcome.warnings[0].key,
        serde_json::from_value(json!({"district": "fengtai", "device_id": "mh-017", "kind": "manhole_tilt"}))
            .expect("map")
    );
}

#[test]
fn a_pending_alert_is_reset_by_a_clean_window() {
    let s = Scenario::new();
    s.rule("room_cold", ROOM_RULE);
    // Cold, warm, cold, warm: never two breaching windows in a row.
    let messages: Vec<_> = (0..5)
        .map(|minute| {
            let ms = minute * MIN + 30_000;
            let temp = if minute % 2 == 0 { 16.0 } else { 20.0 };
            (
                ms,
                "city/haidian/heating/r1",
                json!({"ts": T0 + ms, "kind": "room", "room_temp_c": temp}),
            )
        })
        .collect();
    let outcome = s.run(&s.fixture(&messages), |_| {});
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    assert_eq!(outcome.summary.windows_closed, 5);
}

#[test]
fn a_silent_table_closes_its_windows_when_idle_timeout_passes() {
    let s = Scenario::new();
    s.rule(
        "room_cold",
        "-- level: yellow
SELECT district, device_id, avg(room_temp_c) AS t FROM heating
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id HAVING avg(room_temp_c) < 18
",
    );
    // Heating reports once, then falls silent; water keeps the virtual clock moving.
    let mut messages = vec![(
        0,
        "city/a/heating/r1",
        json!({"ts": T0 + 10_000, "kind": "room", "room_temp_c": 15.0}),
    )];
    for second in (5..400).step_by(5) {
        messages.push((
            second * 1_000,
            "city/a/water/w1",
            json!({"ts": T0 + second * 1_000, "kind": "pressure", "pressure_mpa": 0.3}),
        ));
    }
    let outcome = s.run(&s.fixture(&messages), |c| {
        c.engine.idle_timeout = cityops::DurationMs(60_000)
    });
    // Idle after 60 s of silence; event time then advances with the clock from the last
    // row (10 s), so [0, 60 s) closes at the 60 s tick (event time 70 s) and the empty
    // window [60 s, 120 s) — a clean step — closes at the 112 s tick (event time 122 s).
    let shown: Vec<(String, String)> = outcome
        .warnings
        .iter()
        .map(|w| (common::stable(w)["status"].to_string(), w.detected_at.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("\"firing\"".to_string(), at(70_000)),
            ("\"resolved\"".to_string(), at(122_000))
        ]
    );
}

#[test]
fn a_silent_station_fires_and_resolves_when_it_reports_again() {
    let s = Scenario::new();
    s.rule(
        "station_silent",
        "-- level: orange
SELECT table_name, district, device_id, silent_s FROM devices
WHERE table_name = 'heating' AND device_id LIKE 'hs-%' AND silent_s >= 600
",
    );
    // hs-1 reports every minute; hs-2 falls silent after minute 5 and is back at minute 25.
    let mut messages = Vec::new();
    for minute in 0..40 {
        let ms = minute * MIN;
        messages.push((
            ms,
            "city/haidian/heating/hs-1",
            json!({"ts": T0 + ms, "kind": "station", "supply_temp_c": 70.0}),
        ));
        if !(6..25).contains(&minute) {
            messages.push((
                ms + 1,
                "city/haidian/heating/hs-2",
                json!({"ts": T0 + ms, "kind": "station", "supply_temp_c": 70.0}),
            ));
        }
    }
    let outcome = s.run(&s.fixture(&messages), |_| {});
    let shown: Vec<(String, String)> = outcome
        .warnings
        .iter()
        .map(|w| (common::stable(w)["status"].to_string(), w.detected_at.clone()))
        .collect();
    // Snapshots are judged at each minute: at 15 min hs-2 has been silent 600 s; the
    // snapshot at 26 min is the first that sees its report of 25 min.
    assert_eq!(
        shown,
        [
            ("\"firing\"".to_string(), at(15 * MIN)),
            ("\"resolved\"".to_string(), at(26 * MIN))
        ]
    );
    let fired = &outcome.warnings[0];
    assert_eq!(
        fired.key,
        serde_json::from_value(json!({"table_name": "heating", "device_id": "hs-2"})).expect("map")
    );
    assert_eq!(fired.values["silent_s"], json!(600.0));
    assert_eq!(fired.values["district"], json!("haidian"));
}

#[test]
fn a_rule_failing_at_run_time_is_counted_and_the_other_rules_go_on() {
    let s = Scenario::new();
    s.rule("room_cold", ROOM_RULE);
    // Casting the text column `kind` ('room') to a number fails on every evaluation.
    s.rule(
        "broken",
        "-- level: red
SELECT district, device_id, avg(CAST(kind AS DOUBLE)) AS k FROM heating
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id",
    );
    let outcome = s.run(&room_fixture(&s), |_| {});
    assert!(outcome.summary.rule_errors > 0, "the failures are counted");
    let broken = outcome
        .reports
        .iter()
        .find(|r| r.rule == "broken")
        .expect("a report for the broken rule");
    assert_eq!(broken.errors, outcome.summary.rule_errors);
    assert_eq!(steps(&outcome.warnings, "broken"), vec![]);
    assert_eq!(
        steps(&outcome.warnings, "room_cold").len(),
        2,
        "the healthy rule still fires and resolves"
    );
}
