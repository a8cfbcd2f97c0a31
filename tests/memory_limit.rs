//! The per-rule memory limit (`engine.rule_memory_limit_mb`): an evaluation that grows past
//! it fails with DataFusion's resources-exhausted error, is counted against its rule, and
//! the other rules go on. The same rule under the default limit evaluates normally, so the
//! limit is what stopped it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Scenario, T0};
use serde_json::json;

/// One group per reading: 60,000 groups in one window hold several MB of state.
const RUNAWAY: &str = "-- description: Groups by every reading (unbounded state on purpose)
-- level: blue
SELECT district, device_id, ts AS reading_ts, max(value) AS gas_lel_pct
FROM sensor
WHERE kind = 'gas'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id, ts
HAVING max(value) > 50
";

const GAS_HIGH: &str = "-- description: Combustible gas at or above 25 % LEL (GB 50493-2019)
-- level: orange
SELECT district, device_id, value AS gas_lel_pct
FROM sensor
WHERE kind = 'gas' AND value >= 25
";

const READINGS: i64 = 60_000;

fn fixture(s: &Scenario) -> std::path::PathBuf {
    let messages: Vec<(i64, String, serde_json::Value)> = (0..READINGS)
        .map(|i| {
            let value = if i == READINGS / 2 { 60.0 } else { 1.0 };
            (
                i / 100,
                format!("city/dongcheng/sensor/g{}", i % 3_000),
                json!({"ts": T0 + i / 100, "kind": "gas", "value": value, "unit": "%LEL"}),
            )
        })
        .collect();
    let borrowed: Vec<(i64, &str, serde_json::Value)> = messages
        .iter()
        .map(|(at, topic, p)| (*at, topic.as_str(), p.clone()))
        .collect();
    s.fixture(&borrowed)
}

/// Firing warnings of one rule.
fn rules_of(outcome: &cityops::pipeline::RunOutcome, rule: &str) -> usize {
    outcome
        .warnings
        .iter()
        .filter(|w| w.rule == rule && serde_json::to_value(w.status).unwrap() == json!("firing"))
        .count()
}

#[test]
fn an_evaluation_past_the_memory_limit_fails_alone() {
    let s = Scenario::new();
    s.rule("runaway", RUNAWAY).rule("gas_high", GAS_HIGH);
    let fixture = fixture(&s);

    let limited = s.run(&fixture, |c| c.engine.rule_memory_limit_mb = 1);
    let runaway = limited
        .reports
        .iter()
        .find(|r| r.rule == "runaway")
        .expect("runaway reported");
    assert_eq!(runaway.errors, 1, "the one window's evaluation fails");
    let error = runaway.last_error.clone().unwrap_or_default();
    assert!(error.contains("Resources exhausted"), "{error}");
    assert_eq!(rules_of(&limited, "runaway"), 0);
    // The other rule, in the same run, still warns.
    assert_eq!(rules_of(&limited, "gas_high"), 1);
    assert_eq!(limited.summary.rule_errors, 1);
    assert_eq!(limited.summary.readings_accepted, READINGS as u64);

    let unlimited = s.run(&fixture, |_| {});
    assert_eq!(unlimited.reports.iter().map(|r| r.errors).sum::<u64>(), 0);
    assert_eq!(rules_of(&unlimited, "runaway"), 1);
    assert_eq!(rules_of(&unlimited, "gas_high"), 1);
}
