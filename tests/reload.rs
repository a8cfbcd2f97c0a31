//! Hot reload during a replay: a rule is edited, broken and restored while messages flow.
//! The test feeds the pipeline through a channel so each rule change falls at a known
//! point of the stream, then checks the warnings of each version, the rejection of the
//! broken one, and that the unchanged rule kept its window across every reload.
//!
//! The unchanged window rule must count every reading of each meter across all three
//! reloads. A second test deletes a rule, whose firing alerts resolve, and adds one, which
//! starts.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use cityops::pipeline::{self, RunOptions, RunOutcome, Source};
use cityops::{Config, DurationMs, Message, ReloadReport, Swap};
use common::{MIN, Scenario, T0, at};
use serde_json::json;

const DIP_V1: &str = "-- description: Pressure dip below 0.20 MPa
-- level: yellow
-- resolve: 1
SELECT district, device_id, pressure_mpa
FROM water
WHERE kind = 'pressure' AND pressure_mpa < 0.20
";

const DIP_V2: &str = "-- description: Pressure dip below 0.30 MPa
-- level: yellow
-- resolve: 1
SELECT district, device_id, pressure_mpa
FROM water
WHERE kind = 'pressure' AND pressure_mpa < 0.30
";

const DIP_BROKEN: &str = "-- description: Pressure dip, half edited
-- level: yellow
-- resolve: 1
SELECT district, device_id, pressure_mpa
FROM water
WHERE kind = 'pressure' AND pressure_mpa <
";

/// Unchanged through every reload: needs readings from all four phases to fire.
const READINGS: &str = "-- description: Every pressure meter reported 8 times in the hour
-- level: blue
SELECT district, device_id, count(*) AS readings
FROM water
WHERE kind = 'pressure'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING count(*) >= 8
";

/// Writes a rule the way editors save: a temporary file renamed over the old one.
fn save(dir: &Path, id: &str, text: &str) {
    let temporary = dir.join(format!(".{id}.sql.swp"));
    std::fs::write(&temporary, text).expect("rule written");
    std::fs::rename(&temporary, dir.join(format!("{id}.sql"))).expect("rule renamed");
}

fn reading(minute: i64, device: &str, pressure_mpa: f64) -> Message {
    let at_ms = minute * MIN;
    let payload = json!({"ts": T0 + at_ms, "kind": "pressure", "pressure_mpa": pressure_mpa});
    Message {
        at_ms,
        topic: format!("city/xicheng/water/{device}"),
        payload: payload.to_string().into_bytes().into(),
        recorded_invalid: false,
        arrived_ns: 0,
        ..Message::default()
    }
}

/// A reading no rule reads. The channel is a rendezvous: once the source has taken this,
/// it has handed every earlier message to the decode queues.
fn barrier(minute: i64) -> Message {
    let at_ms = minute * MIN + 30_000;
    let payload = json!({"ts": T0 + at_ms, "speed_kmh": 50.0});
    Message {
        at_ms,
        topic: "city/xicheng/traffic/barrier".to_string(),
        payload: payload.to_string().into_bytes().into(),
        recorded_invalid: false,
        arrived_ns: 0,
        ..Message::default()
    }
}

/// Phase `p` (0-3) at minutes 5p and 5p+1: d1 at 0.25 MPa (a dip only for v2), d2 at
/// 0.15 MPa (a dip for both versions).
fn phase(source: &crossbeam_channel::Sender<Message>, p: i64) {
    for minute in [5 * p, 5 * p + 1] {
        source.send(reading(minute, "d1", 0.25)).expect("pipeline takes d1");
        source.send(reading(minute, "d2", 0.15)).expect("pipeline takes d2");
    }
    source.send(barrier(5 * p + 1)).expect("pipeline takes the barrier");
}

/// Starts a run over a rendezvous channel with this scenario's rules, checked for changes
/// every 20 ms; returns the source, the reload reports and the run.
fn start(
    s: &Scenario,
) -> (
    crossbeam_channel::Sender<Message>,
    crossbeam_channel::Receiver<ReloadReport>,
    std::thread::JoinHandle<RunOutcome>,
) {
    let mut config = Config::default();
    config.rules.dir = s.path("queries");
    config.rules.reload_interval = DurationMs(20);
    let (source, messages) = crossbeam_channel::bounded(0);
    let (reports_tx, reports) = crossbeam_channel::unbounded();
    let options = RunOptions {
        reload_reports: Some(reports_tx),
        ..common::options(config, Source::Channel(messages), &s.path("dead-letters.jsonl"))
    };
    let run = std::thread::spawn(move || pipeline::run(options).expect("the pipeline runs"));
    (source, reports, run)
}

fn next_report(reports: &crossbeam_channel::Receiver<ReloadReport>) -> ReloadReport {
    reports
        .recv_timeout(Duration::from_secs(60))
        .expect("the watcher reports the reload")
}

#[test]
fn a_rule_edited_broken_and_restored_during_a_replay() {
    let s = Scenario::new();
    s.rule("pressure_dip", DIP_V1).rule("readings", READINGS);
    let queries = s.path("queries");
    let (source, reports, run) = start(&s);

    phase(&source, 0);
    save(&queries, "pressure_dip", DIP_V2);
    let edited = next_report(&reports);
    phase(&source, 1);
    save(&queries, "pressure_dip", DIP_BROKEN);
    let broken = next_report(&reports);
    phase(&source, 2);
    save(&queries, "pressure_dip", DIP_V1);
    let restored = next_report(&reports);
    phase(&source, 3);
    drop(source);
    let outcome = run.join().expect("the pipeline thread ends");

    // The edit swaps pressure_dip only; the readings rule keeps its version throughout.
    assert_eq!(edited.swapped.len(), 1);
    let Swap { id, from, to } = &edited.swapped[0];
    assert_eq!(id, "pressure_dip");
    let (v1, v2) = (from.clone().expect("v1 ran"), to.clone().expect("v2 runs"));
    assert_ne!(v1, v2);
    assert!(edited.rejected.is_empty());
    let readings_version = edited.versions["readings"].clone();
    assert_eq!(edited.versions["pressure_dip"], v2);

    // The broken version is rejected with its position; v2 goes on.
    assert!(broken.swapped.is_empty());
    assert_eq!(broken.rejected.len(), 1, "{:?}", broken.rejected);
    let rejection = broken.rejected[0].to_string();
    let file = queries.join("pressure_dip.sql").display().to_string();
    assert!(rejection.starts_with(&format!("{file}:")), "{rejection}");
    assert_eq!(broken.versions["pressure_dip"], v2);

    // Restoring v1 swaps it back.
    assert_eq!(
        restored.swapped,
        vec![Swap {
            id: "pressure_dip".to_string(),
            from: Some(v2.clone()),
            to: Some(v1.clone()),
        }]
    );
    assert!(restored.rejected.is_empty());
    for report in [&edited, &broken, &restored] {
        assert_eq!(report.versions["readings"], readings_version);
    }

    // Warnings, in order of event time: d2 fires under v1 and stays one firing across every
    // swap (its alert was carried over); d1 fires under v2, stays firing through the
    // rejected edit (v2 still ran), and resolves on its first reading under v1 again.
    let dips: Vec<(String, String, String)> = outcome
        .warnings
        .iter()
        .filter(|w| w.rule == "pressure_dip")
        .map(|w| {
            let status = serde_json::to_value(w.status).unwrap().as_str().unwrap().to_string();
            (
                status,
                w.key["device_id"].as_str().unwrap().to_string(),
                w.detected_at.clone(),
            )
        })
        .collect();
    assert_eq!(
        dips,
        vec![
            ("firing".to_string(), "d2".to_string(), at(0)),
            ("firing".to_string(), "d1".to_string(), at(5 * MIN)),
            ("resolved".to_string(), "d1".to_string(), at(15 * MIN)),
        ]
    );
    // The unchanged window rule saw all 8 readings of each meter, across three reloads.
    let mut readings: Vec<(String, serde_json::Value)> = outcome
        .warnings
        .iter()
        .filter(|w| w.rule == "readings")
        .map(|w| {
            (
                w.key["device_id"].as_str().unwrap().to_string(),
                w.values["readings"].clone(),
            )
        })
        .collect();
    readings.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        readings,
        vec![("d1".to_string(), json!(8)), ("d2".to_string(), json!(8))]
    );
    assert_eq!(outcome.summary.rules_reloaded, 2);
    assert_eq!(outcome.summary.reloads_rejected, 1);
    assert_eq!(outcome.summary.readings_accepted, 4 * (4 + 1));
    assert_eq!(outcome.summary.rule_errors, 0);
}

#[test]
fn a_removed_rule_resolves_its_firing_alerts_and_an_added_rule_starts() {
    let s = Scenario::new();
    s.rule("pressure_dip", DIP_V1);
    let queries = s.path("queries");
    let (source, reports, run) = start(&s);

    phase(&source, 0);
    std::fs::remove_file(queries.join("pressure_dip.sql")).expect("rule removed");
    save(&queries, "dip_v2", DIP_V2);
    let report = next_report(&reports);
    phase(&source, 1);
    drop(source);
    let outcome = run.join().expect("the pipeline thread ends");

    let mut swapped = report.swapped.clone();
    swapped.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        swapped
            .iter()
            .map(|s| (s.id.as_str(), s.from.is_some(), s.to.is_some()))
            .collect::<Vec<_>>(),
        vec![("dip_v2", false, true), ("pressure_dip", true, false)]
    );
    let steps: Vec<(String, String, String, String)> = outcome
        .warnings
        .iter()
        .map(|w| {
            let status = serde_json::to_value(w.status).unwrap().as_str().unwrap().to_string();
            (
                w.rule.clone(),
                status,
                w.key["device_id"].as_str().unwrap().to_string(),
                w.detected_at.clone(),
            )
        })
        .collect();
    let mut steps = steps;
    steps.sort();
    assert_eq!(
        steps,
        vec![
            (
                "dip_v2".to_string(),
                "firing".to_string(),
                "d1".to_string(),
                at(5 * MIN)
            ),
            (
                "dip_v2".to_string(),
                "firing".to_string(),
                "d2".to_string(),
                at(5 * MIN)
            ),
            (
                "pressure_dip".to_string(),
                "firing".to_string(),
                "d2".to_string(),
                at(0)
            ),
            // Resolved when the rule went away, stamped with the last event time it saw.
            (
                "pressure_dip".to_string(),
                "resolved".to_string(),
                "d2".to_string(),
                at(MIN)
            ),
        ]
    );
}

/// `READINGS` with another name and threshold: the same aggregation (`count(*)` per meter
/// and hour), so the same window family.
fn counting(description: &str, at_least: u32) -> String {
    READINGS
        .replace("Every pressure meter reported 8 times in the hour", description)
        .replace("count(*) >= 8", &format!("count(*) >= {at_least}"))
}

/// Rules sharing one aggregation (a window family) are reloaded one by one: a member whose
/// threshold changes keeps judging the family's open window, a rule joining the family
/// judges it too (it holds every reading), and a member whose aggregation changes leaves
/// and judges only windows that start after it did. Every member that judges the hour
/// window counts all 8 readings of each meter.
#[test]
fn a_window_family_keeps_its_open_windows_across_reloads_of_its_members() {
    let s = Scenario::new();
    s.rule("readings", READINGS)
        .rule("retuned", &counting("Retuned", 100))
        .rule("leaving", &counting("Leaving", 1));
    let queries = s.path("queries");
    let (source, reports, run) = start(&s);

    phase(&source, 0);
    save(&queries, "retuned", &counting("Retuned", 6));
    let retuned = next_report(&reports);
    phase(&source, 1);
    save(&queries, "joined", &counting("Joined", 8));
    let joined = next_report(&reports);
    phase(&source, 2);
    let peak = READINGS
        .replace("count(*) AS readings", "max(pressure_mpa) AS readings")
        .replace("count(*) >= 8", "max(pressure_mpa) > 0");
    save(&queries, "leaving", &peak);
    let left = next_report(&reports);
    phase(&source, 3);
    drop(source);
    let outcome = run.join().expect("the pipeline thread ends");

    for (report, id) in [(&retuned, "retuned"), (&joined, "joined"), (&left, "leaving")] {
        assert_eq!(
            report.swapped.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            vec![id]
        );
    }
    let counts = |rule: &str| -> Vec<(String, serde_json::Value)> {
        let mut counts: Vec<_> = outcome
            .warnings
            .iter()
            .filter(|w| w.rule == rule)
            .map(|w| {
                (
                    w.key["device_id"].as_str().unwrap().to_string(),
                    w.values["readings"].clone(),
                )
            })
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        counts
    };
    let all_eight = vec![("d1".to_string(), json!(8)), ("d2".to_string(), json!(8))];
    assert_eq!(counts("readings"), all_eight, "the unchanged member");
    assert_eq!(counts("retuned"), all_eight, "the member whose threshold changed");
    assert_eq!(counts("joined"), all_eight, "the rule that joined the family");
    // Its first version would have fired at the window's close; its second computes
    // another aggregation, and the hour began before it did.
    assert_eq!(counts("leaving"), Vec::new(), "the member that left");
    assert_eq!(outcome.summary.rules_reloaded, 3);
    assert_eq!(outcome.summary.rule_errors, 0);
}
