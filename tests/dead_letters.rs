//! Bad input through the whole pipeline: every dead-letter reason is written with its
//! reason and counted, good rows beside bad ones survive, late rows are counted per rule,
//! and every reading that came in is accounted for.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{MIN, Scenario, T0};
use serde_json::{Value, json};

const COUNT_RULE: &str = "-- level: blue
SELECT district, device_id, count(*) AS n FROM water
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id HAVING count(*) > 100
";

fn by_reason(letters: &[Value]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for letter in letters {
        *counts
            .entry(letter["reason"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn every_rejection_reason_is_dead_lettered_and_counted() {
    let s = Scenario::new();
    s.rule("busy", COUNT_RULE);
    let good = |ms: i64| {
        json!({"at": ms, "topic": "city/a/water/w1", "payload": {"ts": T0 + ms, "kind": "pressure", "pressure_mpa": 0.3}}).to_string()
    };
    let line = |at: i64, topic: &str, payload: Value| json!({"at": at, "topic": topic, "payload": payload}).to_string();
    let lines = vec![
        good(0),
        json!({"at": 1, "topic": "city/a/water/w1", "raw": "{\"ts\": 17"}).to_string(),
        line(2, "city/a/water/w1", json!(42)),
        line(3, "city/a/water/w1", json!({"kind": "pressure"})),
        line(4, "city/a/water/w1", json!({"ts": "teatime"})),
        line(5, "city/a/water/w1", json!({"ts": 4_102_444_800_000_i64})),
        line(6, "city/a/water/w1", json!({"ts": T0, "pressure_mpa": "n/a"})),
        line(7, "city/a/elevator/e1", json!({"ts": T0})),
        line(8, "city/a/water", json!({"ts": T0})),
        line(9, "city/a/water/w1", json!({"ts": T0, "pad": "x".repeat(70_000)})),
        line(10, "city/a/water/", json!({"ts": T0})),
        line(
            11,
            "city/a/water/gw",
            json!([{"ts": T0, "device_id": "w2", "ph": 7.1}, {"ts": T0, "device_id": "w3", "ph": "acid"}, 5]),
        ),
        "{\"topic\": \"broken envelope\"}".to_string(),
        good(12),
    ];
    let outcome = s.run(&s.raw_fixture(&lines), |_| {});
    let summary = &outcome.summary;
    let expected: BTreeMap<String, u64> = [
        ("malformed_json", 2),
        ("not_an_object", 2),
        ("missing_ts", 1),
        ("bad_ts", 1),
        ("ts_out_of_range", 1),
        ("wrong_type", 2),
        ("unknown_topic", 2),
        ("oversized", 1),
        ("missing_device_id", 1),
    ]
    .into_iter()
    .map(|(r, n)| (r.to_string(), n))
    .collect();
    let counted: BTreeMap<String, u64> = summary.rejected_by_reason.iter().cloned().collect();
    assert_eq!(counted, expected);
    assert_eq!(by_reason(&s.dead_letters()), expected, "one dead letter per rejection");
    assert_eq!(
        summary.readings_accepted, 3,
        "two good messages and the good gateway row"
    );
    assert_eq!(summary.readings_rejected, 13);
    assert_eq!(
        summary.readings_in,
        summary.readings_accepted + summary.readings_rejected
    );
    assert_eq!(summary.messages_in, 14);
    let wrong = s
        .dead_letters()
        .into_iter()
        .find(|d| d["payload"]["device_id"] == "w3")
        .expect("bad gateway row kept");
    assert_eq!(wrong["reason"], "wrong_type");
    assert!(
        wrong["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`ph` expects a number"),
        "{wrong}"
    );
}

/// A replay cuts each line's payload from between its envelope keys without scanning it;
/// the decoder, which parses it anyway, finds the lines where that was not the payload and
/// reads them whole: they end as they would have.
#[test]
fn lines_whose_cut_is_not_their_payload_read_as_whole_lines() {
    let s = Scenario::new();
    s.rule("busy", COUNT_RULE);
    let reading = |ms: i64| json!({"ts": T0 + ms, "kind": "pressure", "pressure_mpa": 0.3}).to_string();
    let topic = "city/a/water/w1";
    let pad = "x".repeat(70_000);
    let lines = vec![
        format!(r#"{{"at":0,"payload":{},"topic":"{topic}"}}"#, reading(0)),
        // Another key between payload and topic: the full parser ignores it.
        format!(
            r#"{{"at":1,"payload":{},"note":{{"by":"}}"}},"topic":"{topic}"}}"#,
            reading(1)
        ),
        // A repeated key after the payload: a broken line, dead-lettered with its number.
        format!(r#"{{"at":2,"payload":{},"at":3,"x":[],"topic":"{topic}"}}"#, reading(2)),
        // A payload that closes but is not JSON: malformed, under its topic.
        format!(r#"{{"at":4,"payload":{{"ts":{},}},"topic":"{topic}"}}"#, T0 + 4),
        // A long key after a small payload: the payload is not oversized.
        format!(
            r#"{{"at":5,"payload":{},"pad":["{pad}"],"topic":"{topic}"}}"#,
            reading(5)
        ),
        format!(r#"{{"at":6,"payload":{},"topic":"{topic}"}}"#, reading(6)),
    ];
    let outcome = s.run(&s.raw_fixture(&lines), |_| {});
    let summary = &outcome.summary;
    assert_eq!(
        (
            summary.messages_in,
            summary.readings_accepted,
            summary.readings_rejected
        ),
        (6, 4, 2)
    );
    let letters = s.dead_letters();
    let described: Vec<(String, String, bool)> = letters
        .iter()
        .map(|d| {
            let detail = d["detail"].as_str().unwrap_or_default();
            (
                d["reason"].as_str().unwrap_or_default().to_string(),
                d["topic"].as_str().unwrap_or_default().to_string(),
                detail.contains("line 3: duplicate field `at`") || detail.contains("trailing comma"),
            )
        })
        .collect();
    let mut described = described;
    described.sort();
    assert_eq!(
        described,
        [
            ("malformed_json".to_string(), String::new(), true),
            ("malformed_json".to_string(), topic.to_string(), true)
        ],
        "{letters:?}"
    );
}

#[test]
fn late_rows_are_counted_per_rule_and_dead_lettered() {
    let s = Scenario::new();
    s.rule("busy", COUNT_RULE);
    s.rule(
        "quiet",
        "-- level: blue
-- lateness: 30s
SELECT device_id, count(*) AS n FROM water GROUP BY tumble(ts, INTERVAL '1 minute'), device_id HAVING count(*) > 100
",
    );
    let topic = "city/a/water/w1";
    let row = |at: i64, ts: i64| {
        (
            at,
            topic,
            json!({"ts": T0 + ts, "kind": "pressure", "pressure_mpa": 0.3}),
        )
    };
    let messages = vec![
        row(0, 10_000),
        row(1_000, 50_000),
        row(2_000, MIN + 5_000), // watermark 63 s - 2 s: closes [0, 60 s) for `busy` only
        row(3_000, 30_000),      // late for `busy` (lateness 2 s), on time for `quiet` (30 s)
        row(4_000, MIN + 59_000),
        row(5_000, 40_000), // late for both
    ];
    let outcome = s.run(&s.fixture(&messages), |_| {});
    assert_eq!(
        outcome.summary.late_by_rule,
        vec![
            ("water".to_string(), "busy".to_string(), 2),
            ("water".to_string(), "quiet".to_string(), 1)
        ]
    );
    // One dead letter per late row, naming every rule it was late for.
    let late: Vec<Value> = s.dead_letters().into_iter().filter(|d| d["reason"] == "late").collect();
    let rules: Vec<&Value> = late.iter().map(|d| &d["rules"]).collect();
    assert_eq!(rules, [&json!(["busy"]), &json!(["busy", "quiet"])]);
    assert_eq!(late[0]["at"], 3_000);
    assert_eq!(late[1]["at"], 5_000);
    assert_eq!(late[0]["payload"]["device_id"], "w1");
    assert_eq!(outcome.summary.late_dead_letters, 2);
    assert_eq!(
        outcome.summary.readings_accepted, 6,
        "late rows were accepted by decode; lateness is per rule"
    );
}

#[test]
fn the_dead_letter_file_rotates_by_size_with_bounded_files_and_exact_counts() {
    let s = Scenario::new();
    s.rule("busy", COUNT_RULE);
    // 12,000 readings a device sends as text where numbers belong: ~4 MB of dead letters.
    let lines: Vec<String> = (0..12_000)
        .map(|i| {
            json!({"at": i, "topic": "city/a/water/w1",
                   "payload": {"ts": T0 + i, "kind": "pressure", "pressure_mpa": format!("broken-{i:05}-{}", "x".repeat(200))}})
            .to_string()
        })
        .collect();
    let outcome = s.run(&s.raw_fixture(&lines), |config| {
        config.dead_letters.max_file_mb = 1;
        config.dead_letters.max_files = 2;
    });
    assert_eq!(outcome.summary.readings_rejected, 12_000, "every rejection counted");
    let file = |suffix: &str| s.path(&format!("dead-letters.jsonl{suffix}"));
    assert!(!file(".3").exists(), "no more than two rotated files are kept");
    let mut kept = 0;
    for suffix in ["", ".1", ".2"] {
        let size = std::fs::metadata(file(suffix))
            .expect("the live file and two rotated ones")
            .len();
        assert!(size <= 1024 * 1024, "{suffix}: {size} bytes");
        let letters = common::read_jsonl(&file(suffix));
        assert!(letters.iter().all(|d| d["reason"] == "wrong_type"), "whole lines only");
        kept += letters.len();
    }
    // The newest letters are kept, in order, and the oldest rotated away.
    let newest = common::read_jsonl(&file(""));
    let last = newest.last().expect("a dead letter in the live file");
    assert!(
        last["detail"].as_str().unwrap_or_default().contains("pressure_mpa"),
        "{last}"
    );
    assert!(kept < 12_000 && kept > 4_000, "{kept} letters kept");
}
