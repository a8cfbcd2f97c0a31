//! Response statistics: how fast the city answers its warnings, per level, district and
//! table. An alert is acknowledged in time when its first acknowledgement came before its
//! acknowledge deadline escalated, resolved in time likewise; an alert still inside its
//! deadlines is not counted yet. Times run from firing to the first acknowledgement, and
//! from firing to resolution.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

use super::record::AlertRecord;

/// Counts and time samples of one group (milliseconds; a histogram is made at its first
/// sample).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Tally {
    pub(crate) fired: u64,
    ack_decided: u64,
    ack_in_time: u64,
    resolve_decided: u64,
    resolve_in_time: u64,
    to_ack_ms: Samples,
    to_resolve_ms: Samples,
}

/// Durations: an exact count and sum (the mean), and a histogram for the p90. Kept in the
/// journal's snapshot with the histogram in its V2 encoding, as hex.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "SamplesText", try_from = "SamplesText")]
struct Samples {
    count: u64,
    sum_ms: u64,
    /// Made at the first sample.
    histogram: Option<Histogram<u64>>,
}

/// `Samples` as the journal writes them.
#[derive(Serialize, Deserialize)]
struct SamplesText {
    count: u64,
    sum_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    histogram: Option<String>,
}

impl From<Samples> for SamplesText {
    fn from(samples: Samples) -> Self {
        let histogram = samples.histogram.and_then(|h| {
            let mut bytes = Vec::new();
            V2Serializer::new().serialize(&h, &mut bytes).ok()?;
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
        });
        SamplesText {
            count: samples.count,
            sum_ms: samples.sum_ms,
            histogram,
        }
    }
}

impl TryFrom<SamplesText> for Samples {
    type Error = String;

    fn try_from(text: SamplesText) -> Result<Self, String> {
        let histogram = match text.histogram {
            None => None,
            Some(hex) => {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or("a histogram in the journal is not hex")?;
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut bytes.as_slice())
                    .map_err(|e| format!("a histogram in the journal does not read: {e:?}"))?;
                Some(h)
            }
        };
        Ok(Samples {
            count: text.count,
            sum_ms: text.sum_ms,
            histogram,
        })
    }
}

impl Samples {
    fn record(&mut self, ms: i64) {
        let ms = ms.max(0) as u64;
        self.count += 1;
        self.sum_ms += ms;
        if self.histogram.is_none() {
            self.histogram = Histogram::new(3).ok();
        }
        if let Some(h) = self.histogram.as_mut() {
            let _ = h.record(ms);
        }
    }

    fn mean_s(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms as f64 / self.count as f64 / 1e3)
    }

    fn p90_s(&self) -> Option<f64> {
        self.histogram
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.9) as f64 / 1e3)
    }
}

/// What a group's tally reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct TallyReport {
    pub(crate) fired: u64,
    pub(crate) acknowledged: u64,
    pub(crate) acknowledged_in_time: u64,
    /// Acknowledged in time over alerts whose acknowledge deadline is decided (null: none yet).
    pub(crate) response_rate: Option<f64>,
    pub(crate) resolved: u64,
    pub(crate) resolved_in_time: u64,
    pub(crate) resolution_rate: Option<f64>,
    pub(crate) ack_mean_s: Option<f64>,
    pub(crate) ack_p90_s: Option<f64>,
    pub(crate) resolve_mean_s: Option<f64>,
    pub(crate) resolve_p90_s: Option<f64>,
}

impl Tally {
    /// Counts a decided acknowledge deadline; `to_ack_ms` when it was acknowledged.
    pub(crate) fn ack(&mut self, in_time: Option<bool>, to_ack_ms: Option<i64>) {
        if let Some(in_time) = in_time {
            self.ack_decided += 1;
            self.ack_in_time += u64::from(in_time);
        }
        if let Some(ms) = to_ack_ms {
            self.to_ack_ms.record(ms);
        }
    }

    pub(crate) fn resolve(&mut self, in_time: Option<bool>, to_resolve_ms: Option<i64>) {
        if let Some(in_time) = in_time {
            self.resolve_decided += 1;
            self.resolve_in_time += u64::from(in_time);
        }
        if let Some(ms) = to_resolve_ms {
            self.to_resolve_ms.record(ms);
        }
    }

    pub(crate) fn report(&self) -> TallyReport {
        let rate = |hits: u64, of: u64| (of > 0).then(|| hits as f64 / of as f64);
        TallyReport {
            fired: self.fired,
            acknowledged: self.to_ack_ms.count,
            acknowledged_in_time: self.ack_in_time,
            response_rate: rate(self.ack_in_time, self.ack_decided),
            resolved: self.to_resolve_ms.count,
            resolved_in_time: self.resolve_in_time,
            resolution_rate: rate(self.resolve_in_time, self.resolve_decided),
            ack_mean_s: self.to_ack_ms.mean_s(),
            ack_p90_s: self.to_ack_ms.p90_s(),
            resolve_mean_s: self.to_resolve_ms.mean_s(),
            resolve_p90_s: self.to_resolve_ms.p90_s(),
        }
    }
}

/// Tallies over every alert, and per level, district and table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Breakdown {
    all: Tally,
    by_level: BTreeMap<String, Tally>,
    by_district: BTreeMap<String, Tally>,
    by_table: BTreeMap<String, Tally>,
}

/// What a breakdown reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct BreakdownReport {
    pub(crate) all: TallyReport,
    pub(crate) by_level: BTreeMap<String, TallyReport>,
    pub(crate) by_district: BTreeMap<String, TallyReport>,
    pub(crate) by_table: BTreeMap<String, TallyReport>,
}

impl Breakdown {
    /// The tallies an alert counts in (a level change keeps the alert in its first level's
    /// group).
    fn groups(&mut self, record: &AlertRecord) -> [&mut Tally; 4] {
        let level = record.history.first().and_then(|e| e.level).unwrap_or(record.level());
        let Breakdown {
            all,
            by_level,
            by_district,
            by_table,
        } = self;
        [
            all,
            by_level.entry(level.as_str().to_string()).or_default(),
            by_district.entry(record.district()).or_default(),
            by_table.entry(record.warning.table.clone()).or_default(),
        ]
    }

    pub(crate) fn fired(&mut self, record: &AlertRecord) {
        for tally in self.groups(record) {
            tally.fired += 1;
        }
    }

    pub(crate) fn ack(&mut self, record: &AlertRecord, in_time: Option<bool>, to_ack_ms: Option<i64>) {
        for tally in self.groups(record) {
            tally.ack(in_time, to_ack_ms);
        }
    }

    pub(crate) fn resolve(&mut self, record: &AlertRecord, in_time: Option<bool>, to_resolve_ms: Option<i64>) {
        for tally in self.groups(record) {
            tally.resolve(in_time, to_resolve_ms);
        }
    }

    /// Counts a whole record as it stands (the statistics of a time range).
    pub(crate) fn add(&mut self, record: &AlertRecord) {
        self.fired(record);
        let to_ack = record.first_ack_ms.map(|at| at - record.fired_ms);
        self.ack(record, record.ack_in_time, to_ack);
        let to_resolve = record.resolved_ms.map(|at| at - record.fired_ms);
        self.resolve(record, record.resolved_in_time, to_resolve);
    }

    pub(crate) fn report(&self) -> BreakdownReport {
        let each = |m: &BTreeMap<String, Tally>| m.iter().map(|(k, t)| (k.clone(), t.report())).collect();
        BreakdownReport {
            all: self.all.report(),
            by_level: each(&self.by_level),
            by_district: each(&self.by_district),
            by_table: each(&self.by_table),
        }
    }
}
