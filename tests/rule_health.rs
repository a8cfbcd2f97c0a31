//! Each rule's live health (`/api/rules`) after a run: rows in, evaluations, breaches,
//! errors, the event time judged and the state held, counted exactly on a small fixture.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use cityops::pipeline::{self, RunOptions, Source};
use cityops::{DurationMs, Metrics, RuleHealthView};
use common::{MIN, Scenario, T0, at};
use serde_json::json;

const ROOM_COLD: &str = "-- description: Room below 18 °C (GB/T 33833-2017 §5.1)
-- level: yellow
SELECT district, device_id, avg(room_temp_c) AS avg_room_temp_c
FROM heating
WHERE kind = 'room'
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id
HAVING avg(room_temp_c) < 18
";

/// The same aggregation as `ROOM_COLD` with another threshold: the two run as one family.
const ROOM_CHILLY: &str = "-- description: Room below 17 °C over a minute
-- level: orange
SELECT district, device_id, avg(room_temp_c) AS avg_room_temp_c
FROM heating
WHERE kind = 'room'
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id
HAVING avg(room_temp_c) < 17
";

const ROOM_FREEZING: &str = "-- description: Room below 17 °C, reading by reading
-- level: blue
SELECT district, device_id, room_temp_c FROM heating WHERE room_temp_c < 17
";

const BAD_LEVEL: &str = "-- description: A level column that is not a level
-- level: blue
SELECT district, device_id, 'purple' AS level FROM heating WHERE room_temp_c < 17
";

#[test]
fn each_rule_counts_its_rows_evaluations_breaches_and_errors() {
    let s = Scenario::new();
    s.rule("room_cold", ROOM_COLD)
        .rule("room_chilly", ROOM_CHILLY)
        .rule("room_freezing", ROOM_FREEZING)
        .rule("bad_level", BAD_LEVEL);
    // r1 is at 16.5 °C for minutes 0-2 (18 readings), then warm; r2 is always warm.
    let mut messages = Vec::new();
    for second in (0..6 * 60).step_by(10) {
        let ms = second * 1_000;
        let temp = if ms < 3 * MIN { 16.5 } else { 20.5 };
        messages.push((
            ms,
            "city/haidian/heating/r1",
            json!({"ts": T0 + ms, "kind": "room", "room_temp_c": temp}),
        ));
        messages.push((
            ms + 1,
            "city/haidian/heating/r2",
            json!({"ts": T0 + ms, "kind": "room", "room_temp_c": 21.0}),
        ));
    }
    let fixture = s.fixture(&messages);
    let mut config = cityops::Config::default();
    config.rules.dir = s.path("queries");
    config.rules.reload_interval = DurationMs(0);
    let metrics = Arc::new(Metrics::new());
    let options = RunOptions {
        metrics: Some(Arc::clone(&metrics)),
        ..common::options(config, Source::File(fixture), &s.path("dead-letters.jsonl"))
    };
    let outcome = pipeline::run(options).unwrap();
    assert_eq!(outcome.summary.readings_in, 72);

    let rules = metrics.rules.snapshot();
    let names: Vec<&str> = rules.iter().map(|r| r.rule.as_str()).collect();
    assert_eq!(names, ["bad_level", "room_chilly", "room_cold", "room_freezing"]);
    // Every rule that evaluated has a cost, and the shares split the whole.
    assert!(rules.iter().all(|r| r.eval_seconds > 0.0), "{rules:?}");
    let shares: f64 = rules.iter().map(|r| r.cost_share).sum();
    assert!((shares - 1.0).abs() < 1e-3, "{shares}");
    let [bad, chilly, cold, freezing]: [RuleHealthView; 4] = rules.try_into().unwrap();

    assert_eq!((cold.kind.as_str(), cold.table.as_str()), ("tumble", "heating"));
    assert_eq!(cold.rows_in, 72);
    assert_eq!(cold.evaluations, 6, "one per 1-minute window");
    assert_eq!(cold.breaches, 3, "r1's windows 0:00, 0:01 and 0:02");
    assert_eq!(cold.errors, 0);
    assert_eq!(cold.judged_through.as_deref(), Some(at(6 * MIN).as_str()));
    assert_eq!(cold.state_size, 0, "every window closed at the end");
    assert_eq!(cold.version.len(), 8);
    assert!(cold.last_evaluation.is_some());

    // Sharing room_cold's windows and aggregation, room_chilly keeps its own counts.
    assert_eq!((cold.family_size, chilly.family_size), (2, 2));
    assert_eq!((chilly.rows_in, chilly.evaluations), (72, 6));
    assert_eq!(chilly.breaches, 3, "16.5 °C is below 17 too");
    assert_eq!(chilly.judged_through, cold.judged_through);

    assert_eq!(freezing.kind, "row");
    // The two row rules of the heating table share one task.
    assert_eq!((freezing.family_size, bad.family_size), (2, 2));
    assert_eq!(freezing.rows_in, 72);
    assert_eq!(freezing.breaches, 18, "every r1 reading of minutes 0-2");
    assert_eq!(freezing.judged_through.as_deref(), Some(at(5 * MIN + 50_000).as_str()));
    assert!(freezing.evaluations >= 1 && freezing.evaluations == freezing.batches);
    assert_eq!(freezing.alerts, 0, "r1 resolved on its first warm reading");

    assert_eq!(bad.breaches, 18);
    assert_eq!(bad.errors, 18, "each result row's level is refused");
    assert!(
        bad.last_error.as_deref().unwrap().contains("purple"),
        "{:?}",
        bad.last_error
    );
    assert_eq!(outcome.summary.rule_errors, 18);
}
