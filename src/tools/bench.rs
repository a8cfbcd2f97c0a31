//! `cityops bench`: a replay through the full pipeline, measured. It runs the fixture, reads
//! peak memory from the kernel, scores the warnings against incident labels when given, and
//! writes `summary.json` and each stage's HdrHistogram as a `.hgrm` percentile distribution
//! (the text format of HdrHistogram's `outputPercentileDistribution`, which its plotter reads).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::alert::sink::SinkConfig;
use crate::alert::warning::Warning;
use crate::config::{Config, DurationMs};
use crate::ingest::replay::Speed;
use crate::metrics::{Metrics, Stage};
use crate::pipeline::{self, RunError, RunOptions, Source};
use crate::rules::loader::load_dir;
use crate::rules::worker::DetectionClock;
use crate::summary::Summary;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// The run's config; its rules directory names the rules.
    pub config: Config,
    /// Fixture to replay; `None` for the embedded demo city.
    pub fixture: Option<PathBuf>,
    pub speed: Speed,
    /// Where `summary.json`, the dead letters and the `.hgrm` files go.
    pub out: PathBuf,
    /// Incident labels from `cityops gen`, to score the warnings against.
    pub labels: Option<PathBuf>,
}

/// What a bench run measured and wrote.
#[derive(Debug)]
pub struct BenchReport {
    /// The run's summary (throughput, latency per stage, counts).
    pub summary: Summary,
    /// How many rules ran.
    pub rules: usize,
    pub speed: Speed,
    /// Peak resident memory of the process, when the kernel tells.
    pub peak_rss_mib: Option<f64>,
    /// Present when labels were given.
    pub score: Option<Score>,
    /// The `.hgrm` files written beside `summary.json`.
    pub hgrm_files: Vec<String>,
}

/// A bench that could not run or write its results.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Run(#[from] RunError),
    /// The output directory could not be made.
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// The labels file could not be read or parsed (the message names the file or line).
    #[error("{0}")]
    Labels(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Runs the replay, scores it and writes its files into `request.out`.
pub fn run(request: BenchRequest) -> Result<BenchReport, BenchError> {
    let BenchRequest {
        mut config,
        fixture,
        speed,
        out,
        labels,
    } = request;
    let written = |source: std::io::Error| BenchError::Write {
        path: out.clone(),
        source,
    };
    config.rules.reload_interval = DurationMs(0);
    let rules = load_dir(&config.rules.dir).0.len();
    std::fs::create_dir_all(&out).map_err(|source| BenchError::CreateDir {
        path: out.clone(),
        source,
    })?;
    let metrics = Arc::new(Metrics::new());
    let outcome = pipeline::run(RunOptions {
        state: None,
        config,
        fixture: fixture.map_or(Source::Demo, Source::File),
        speed,
        sinks: SinkConfig {
            collect: labels.is_some(),
            ..SinkConfig::default()
        },
        dead_letter_path: out.join("dead-letters.jsonl"),
        clock: DetectionClock::EventTime,
        capture_results: false,
        reload_reports: None,
        stop: None,
        metrics: Some(Arc::clone(&metrics)),
    })?;
    let peak_rss_mib = peak_rss_mib();
    let score = match &labels {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BenchError::Labels(format!("cannot read {}: {e}", path.display())))?;
            Some(score(&text, &outcome.warnings).map_err(BenchError::Labels)?)
        }
        None => None,
    };
    let mut json = serde_json::to_value(&outcome.summary).map_err(|e| written(e.into()))?;
    json["rules"] = serde_json::json!(rules);
    json["speed"] = serde_json::json!(speed.to_string());
    json["peak_rss_mib"] = serde_json::json!(peak_rss_mib);
    if let Some(score) = &score {
        json["labels"] = serde_json::json!(score);
    }
    let bytes = serde_json::to_vec_pretty(&json).map_err(|e| written(e.into()))?;
    std::fs::write(out.join("summary.json"), bytes).map_err(written)?;
    let hgrm_files = write_hgrms(&metrics, &out).map_err(written)?;
    Ok(BenchReport {
        summary: outcome.summary,
        rules,
        speed,
        peak_rss_mib,
        score,
        hgrm_files,
    })
}

/// Peak resident memory of this process in MiB (`VmHWM`), when the kernel tells.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A histogram of nanoseconds as a percentile distribution in milliseconds.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in histogram.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            "inf".to_string()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:>14}",
            v.value_iterated_to() as f64 / 1e6,
            q,
            v.count_since_last_iteration(),
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.mean() / 1e6,
        histogram.stdev() / 1e6,
        histogram.max() as f64 / 1e6,
        histogram.len()
    );
    out
}

/// How a run's warnings compare with a generated fixture's incident labels.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    pub labelled: usize,
    pub caught: usize,
    /// `rule device_id` of labels no firing warning matched.
    pub missed: Vec<String>,
    /// `rule device_id` of firing warnings outside every label.
    pub unexpected: Vec<String>,
}

/// Scores firing warnings against labels (JSON Lines of `{rule, key: {device_id, …}, from, to}`):
/// a label is caught when its rule fired for its device.
pub fn score(labels: &str, warnings: &[Warning]) -> Result<Score, String> {
    use std::collections::BTreeSet;
    let mut labelled = BTreeSet::new();
    for (n, line) in labels.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let label: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("labels line {}: {e}", n + 1))?;
        let rule = label["rule"]
            .as_str()
            .ok_or_else(|| format!("labels line {}: no rule", n + 1))?;
        let device = label["key"]["device_id"]
            .as_str()
            .ok_or_else(|| format!("labels line {}: no key.device_id", n + 1))?;
        labelled.insert(format!("{rule} {device}"));
    }
    let fired: BTreeSet<String> = warnings
        .iter()
        .filter(|w| w.status == crate::alert::warning::WarningStatus::Firing)
        .map(|w| {
            let device = w.key.get("device_id").and_then(|v| v.as_str()).unwrap_or_default();
            format!("{} {device}", w.rule)
        })
        .collect();
    Ok(Score {
        labelled: labelled.len(),
        caught: labelled.intersection(&fired).count(),
        missed: labelled.difference(&fired).cloned().collect(),
        unexpected: fired.difference(&labelled).cloned().collect(),
    })
}

/// Writes `<stage>.hgrm` for every stage that recorded something.
pub fn write_hgrms(metrics: &Metrics, dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for stage in Stage::ALL {
        let h = metrics.histogram(stage);
        if h.is_empty() {
            continue;
        }
        let name = format!("{}.hgrm", stage.as_str());
        std::fs::write(dir.join(&name), hgrm(&h))?;
        written.push(name);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_counts_caught_missed_and_unexpected() {
        let warning = |rule: &str, device: &str, status: &str| -> crate::alert::warning::Warning {
            serde_json::from_value(serde_json::json!({
                "alert_id": "x", "rule": rule, "status": status, "level": "red", "table": "sensor",
                "key": {"device_id": device}, "values": {}, "window_start": null, "window_end": null,
                "first_breach": "t", "detected_at": "t", "latency_ms": 0.0, "description": ""
            }))
            .expect("a warning")
        };
        let labels = "{\"rule\": \"gas_lel_high\", \"key\": {\"device_id\": \"g1\"}}\n\
                      {\"rule\": \"pressure_low\", \"key\": {\"device_id\": \"w1\"}}\n";
        let warnings = [
            warning("gas_lel_high", "g1", "firing"),
            warning("gas_lel_high", "g1", "resolved"),
            warning("gas_lel_high", "g9", "firing"),
            warning("pressure_low", "w1", "resolved"),
        ];
        let score = score(labels, &warnings).expect("scores");
        assert_eq!((score.labelled, score.caught), (2, 1));
        assert_eq!(score.missed, ["pressure_low w1"]);
        assert_eq!(score.unexpected, ["gas_lel_high g9"]);
    }

    #[test]
    fn hgrm_lists_percentiles_up_to_the_max() {
        let mut h = crate::metrics::new_histogram();
        for ns in [1_000_000u64, 2_000_000, 3_000_000, 10_000_000] {
            h.record(ns).expect("in range");
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile"));
        assert!(text.contains("Total count    =            4]"), "{text}");
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .expect("rows");
        assert!(last.trim_start().starts_with("10.0"), "{last}");
    }
}
