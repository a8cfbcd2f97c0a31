//! The window aggregation examples of Flink's window TVF documentation (TUMBLE, HOP,
//! CUMULATE on its `Bid` table), reproduced row for row over the `sensor` table: bid time →
//! `ts`, price → `value`, item → `kind`, supplier → `device_id`. Each window is made its own
//! alert (`-- key: window_start, window_end`), so every result row is one firing warning.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::Scenario;
use serde_json::json;

/// 2020-04-15 08:00 UTC.
const EIGHT: i64 = 1_586_937_600_000;
const MIN: i64 = 60_000;

/// Flink's Bid table: (minute after 08:00, price, item, supplier).
const BIDS: [(i64, f64, &str, &str); 6] = [
    (5, 4.0, "C", "supplier1"),
    (7, 2.0, "A", "supplier1"),
    (9, 5.0, "D", "supplier2"),
    (11, 3.0, "B", "supplier2"),
    (13, 1.0, "E", "supplier1"),
    (17, 6.0, "F", "supplier2"),
];

fn bids(s: &Scenario) -> std::path::PathBuf {
    let messages: Vec<_> = BIDS
        .iter()
        .map(|(minute, price, item, supplier)| {
            let ts = EIGHT + minute * MIN;
            (
                minute * MIN,
                "city/bids/sensor/x",
                json!({"ts": ts, "device_id": supplier, "kind": item, "value": price}),
            )
        })
        .collect();
    s.fixture(&messages)
}

/// (window_start, window_end, total) as "HH:MM" text, from the firing warnings.
fn windows(rule_sql: &str) -> Vec<(String, String, f64)> {
    let s = Scenario::new();
    s.rule("bids", rule_sql);
    let outcome = s.run(&bids(&s), |_| {});
    let hhmm = |v: &serde_json::Value| v.as_str().map(|t| t[11..16].to_string()).unwrap_or_default();
    let mut rows: Vec<(String, String, f64)> = outcome
        .warnings
        .iter()
        .filter(|w| w.status == cityops::WarningStatus::Firing)
        .map(|w| {
            (
                hhmm(&w.key["window_start"]),
                hhmm(&w.key["window_end"]),
                w.values["total_price"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    rows
}

fn expected(rows: &[(&str, &str, f64)]) -> Vec<(String, String, f64)> {
    rows.iter()
        .map(|(s, e, t)| (s.to_string(), e.to_string(), *t))
        .collect()
}

#[test]
fn tumble_matches_flinks_example() {
    let sql = "-- key: window_start, window_end
SELECT window_start, window_end, sum(value) AS total_price FROM sensor
GROUP BY tumble(ts, INTERVAL '10' MINUTES)";
    assert_eq!(
        windows(sql),
        expected(&[("08:00", "08:10", 11.0), ("08:10", "08:20", 10.0)])
    );
}

#[test]
fn hop_matches_flinks_example() {
    let sql = "-- key: window_start, window_end
SELECT window_start, window_end, sum(value) AS total_price FROM sensor
GROUP BY hop(ts, INTERVAL '5' MINUTES, INTERVAL '10' MINUTES)";
    assert_eq!(
        windows(sql),
        expected(&[
            ("08:00", "08:10", 11.0),
            ("08:05", "08:15", 15.0),
            ("08:10", "08:20", 10.0),
            ("08:15", "08:25", 6.0)
        ])
    );
}

#[test]
fn cumulate_matches_flinks_example() {
    let sql = "-- key: window_start, window_end
SELECT window_start, window_end, sum(value) AS total_price FROM sensor
GROUP BY cumulate(ts, INTERVAL '2' MINUTES, INTERVAL '10' MINUTES)";
    assert_eq!(
        windows(sql),
        expected(&[
            ("08:00", "08:06", 4.0),
            ("08:00", "08:08", 6.0),
            ("08:00", "08:10", 11.0),
            ("08:10", "08:12", 3.0),
            ("08:10", "08:14", 4.0),
            ("08:10", "08:16", 4.0),
            ("08:10", "08:18", 10.0),
            ("08:10", "08:20", 10.0),
        ])
    );
}

#[test]
fn tumble_by_supplier_keeps_one_group_per_supplier_and_window() {
    let sql = "-- key: window_start, window_end, device_id
SELECT window_start, window_end, device_id, sum(value) AS total_price FROM sensor
GROUP BY tumble(ts, INTERVAL '10' MINUTES), device_id";
    let s = Scenario::new();
    s.rule("bids", sql);
    let outcome = s.run(&bids(&s), |_| {});
    let mut rows: Vec<(String, String, f64)> = outcome
        .warnings
        .iter()
        .filter(|w| w.status == cityops::WarningStatus::Firing)
        .map(|w| {
            let start = w.key["window_start"]
                .as_str()
                .map(|t| t[11..16].to_string())
                .unwrap_or_default();
            (
                start,
                w.key["device_id"].as_str().unwrap_or_default().to_string(),
                w.values["total_price"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let expected: Vec<(String, String, f64)> = [
        ("08:00", "supplier1", 6.0),
        ("08:00", "supplier2", 5.0),
        ("08:10", "supplier1", 1.0),
        ("08:10", "supplier2", 9.0),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
    .collect();
    assert_eq!(rows, expected);
}

#[test]
fn session_matches_flinks_example() {
    // Flink: SESSION(TABLE Bid PARTITION BY supplier_id, DESCRIPTOR(bidtime), INTERVAL '2' MINUTES)
    let s = Scenario::new();
    s.rule(
        "bids",
        "SELECT window_start, window_end, device_id, sum(value) AS total_price FROM sensor
GROUP BY session(ts, INTERVAL '2' MINUTES), device_id",
    );
    let outcome = s.run(&bids(&s), |_| {});
    let hhmm = |v: &serde_json::Value| v.as_str().map(|t| t[11..16].to_string()).unwrap_or_default();
    let mut rows: Vec<(String, String, String, f64)> = outcome
        .results
        .iter()
        .flat_map(|w| w.rows.iter())
        .map(|r| {
            (
                hhmm(&r["window_start"]),
                hhmm(&r["window_end"]),
                r["device_id"].as_str().unwrap_or_default().to_string(),
                r["total_price"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    let expected: Vec<(String, String, String, f64)> = [
        ("08:05", "08:09", "supplier1", 6.0),
        ("08:09", "08:13", "supplier2", 8.0),
        ("08:13", "08:15", "supplier1", 1.0),
        ("08:17", "08:19", "supplier2", 6.0),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), *d))
    .collect();
    assert_eq!(rows, expected);
    // Each supplier's first session fires its alert; the second is a repeat while firing.
    let fired: Vec<String> = outcome
        .warnings
        .iter()
        .map(|w| format!("{:?} {}", w.status, w.key["device_id"]))
        .collect();
    assert_eq!(fired, ["Firing \"supplier1\"", "Firing \"supplier2\""]);
}

#[test]
fn session_keyed_by_its_window_gives_one_alert_per_session() {
    // The same SESSION example, with each session its own alert: the GROUP BY column keeps
    // sessions apart, `window_start, window_end` in the key tell them apart as alerts.
    let s = Scenario::new();
    s.rule(
        "bids",
        "-- key: device_id, window_start, window_end
SELECT window_start, window_end, device_id, sum(value) AS total_price FROM sensor
GROUP BY session(ts, INTERVAL '2' MINUTES), device_id",
    );
    let outcome = s.run(&bids(&s), |_| {});
    let hhmm = |v: &serde_json::Value| v.as_str().map(|t| t[11..16].to_string()).unwrap_or_default();
    let notices: Vec<String> = outcome
        .warnings
        .iter()
        .map(|w| {
            format!(
                "{:?} {} {}-{} {}",
                w.status,
                w.key["device_id"].as_str().unwrap_or_default(),
                hhmm(&w.key["window_start"]),
                hhmm(&w.key["window_end"]),
                w.values.get("total_price").and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
            )
        })
        .collect();
    // Sessions close in event time; a supplier's next session resolves its previous one.
    assert_eq!(
        notices,
        [
            "Firing supplier1 08:05-08:09 6",
            "Firing supplier2 08:09-08:13 8",
            "Firing supplier1 08:13-08:15 1",
            "Resolved supplier1 08:05-08:09 6",
            "Firing supplier2 08:17-08:19 6",
            "Resolved supplier2 08:09-08:13 8",
        ]
    );
    let ids: std::collections::BTreeSet<&str> = outcome.warnings.iter().map(|w| w.alert_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "one alert per session");
}
