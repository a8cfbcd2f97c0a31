//! `cityops gen`: a generated city, replayed through the shipped rules, warns for exactly
//! the labelled incidents (every one caught, nothing else), with one reading per message and
//! with gateway payloads alike; the same seed writes the same bytes.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cityops::pipeline::Source;
use cityops::tools::generator::{GenSettings, generate};
use cityops::{Config, WarningStatus};
use common::{read_jsonl, run_with};

fn settings(gateway: usize) -> GenSettings {
    GenSettings {
        devices_per_kind: 20,
        interval_ms: 30_000,
        duration_ms: 4 * 3_600_000,
        start_ms: common::T0,
        incidents: 6,
        seed: 7,
        gateway,
    }
}

/// (rule, device) of every label.
fn labelled(path: &Path) -> BTreeSet<(String, String)> {
    read_jsonl(path)
        .iter()
        .map(|l| {
            (
                l["rule"].as_str().unwrap().to_string(),
                l["key"]["device_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (rule, device) of every firing warning from a replay of `fixture`.
fn caught(fixture: &Path, dir: &Path) -> BTreeSet<(String, String)> {
    let mut config = Config::default();
    config.rules.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    let outcome = run_with(
        config,
        Source::File(fixture.to_path_buf()),
        &dir.join("dead-letters.jsonl"),
    );
    assert_eq!(outcome.summary.readings_rejected, 0);
    assert_eq!(outcome.summary.rule_errors, 0);
    outcome
        .warnings
        .iter()
        .filter(|w| w.status == WarningStatus::Firing)
        .map(|w| (w.rule.clone(), w.key["device_id"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn every_labelled_incident_is_caught_and_nothing_else() {
    for gateway in [1, 25] {
        let dir = tempfile::tempdir().unwrap();
        let (fixture, labels) = (dir.path().join("city.jsonl"), dir.path().join("labels.jsonl"));
        let generated = generate(&settings(gateway), &fixture, &labels).unwrap();
        assert_eq!(generated.readings, 3 * 20 * 4 * 120);
        assert_eq!(generated.incidents, 6);
        let expected = labelled(&labels);
        assert!(expected.len() >= 6, "{expected:?}");
        assert_eq!(caught(&fixture, dir.path()), expected, "gateway {gateway}");
    }
}

#[test]
fn the_same_seed_writes_the_same_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let paths = |n: &str| {
        (
            dir.path().join(format!("{n}.jsonl")),
            dir.path().join(format!("{n}-labels.jsonl")),
        )
    };
    let (a, a_labels) = paths("a");
    let (b, b_labels) = paths("b");
    generate(&settings(1), &a, &a_labels).unwrap();
    generate(&settings(1), &b, &b_labels).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(std::fs::read(&a_labels).unwrap(), std::fs::read(&b_labels).unwrap());
    let mut other = settings(1);
    other.seed = 8;
    let (c, c_labels) = paths("c");
    generate(&other, &c, &c_labels).unwrap();
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
}
