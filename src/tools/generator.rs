//! `cityops gen`: a seeded, streamed generator of city-scale fixtures with labelled
//! incidents, for load tests and detection scoring. Three device kinds with daily cycles
//! inside the normal ranges of DOMAIN.md, chosen to stay clear of every rule in `queries/`:
//! heat exchange stations (`heating`, kind `station`, supply 64–76 °C, 0.6 MPa), water
//! pressure meters (`water`, kind `pressure`, 0.265–0.335 MPa) and gas detectors (`sensor`,
//! kind `gas_lel`, 0–2 %LEL). Incidents, one per chosen device, are written to a labels file
//! (JSON Lines: rule, key, from, to) with the rules that must catch them:
//! - a station's supply falls to 40 °C for 45 minutes → `supply_temp_low` (orange);
//! - a main loses pressure to 0.05 MPa for 10 minutes → `pressure_low`, `pressure_collapse`;
//! - a gas detector reads 60 %LEL for 5 minutes → `gas_lel_high` (red).
//!
//! Readings are written time step by time step, so memory does not grow with the length.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{Value, json};

use crate::time::{EpochMs, format_ms};

const DISTRICTS: [&str; 6] = ["dongcheng", "xicheng", "chaoyang", "haidian", "fengtai", "shijingshan"];
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSettings {
    /// Devices per kind (stations, pressure meters, gas detectors).
    pub devices_per_kind: usize,
    pub interval_ms: i64,
    pub duration_ms: i64,
    pub start_ms: EpochMs,
    pub incidents: usize,
    pub seed: u64,
    /// Readings per message (gateway payloads); 1 = one reading per message.
    pub gateway: usize,
}

/// What was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    pub readings: u64,
    pub messages: u64,
    pub incidents: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Station,
    Pressure,
    Gas,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Station, Kind::Pressure, Kind::Gas];

    fn table(self) -> &'static str {
        match self {
            Kind::Station => "heating",
            Kind::Pressure => "water",
            Kind::Gas => "sensor",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::Station => "hs",
            Kind::Pressure => "wp",
            Kind::Gas => "gas",
        }
    }

    /// How long an incident lasts, and the rules that must catch it.
    fn incident(self) -> (i64, &'static [&'static str]) {
        match self {
            Kind::Station => (45 * MIN, &["supply_temp_low"]),
            Kind::Pressure => (10 * MIN, &["pressure_low", "pressure_collapse"]),
            Kind::Gas => (5 * MIN, &["gas_lel_high"]),
        }
    }
}

struct Device {
    kind: Kind,
    id: String,
    district: &'static str,
    /// Offset of its readings within each interval.
    phase_ms: i64,
    incident: Option<(EpochMs, EpochMs)>,
}

/// splitmix64: small, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Writes the fixture to `out` (zstd when it ends in `.zst`) and the labels to `labels`.
pub fn generate(settings: &GenSettings, out: &Path, labels: &Path) -> std::io::Result<Generated> {
    let mut rng = Rng(settings.seed);
    let mut devices = city(settings, &mut rng);
    let incidents = place_incidents(settings, &mut devices, &mut rng);
    let mut labels_out = BufWriter::new(File::create(labels)?);
    for device in devices.iter().filter(|d| d.incident.is_some()) {
        let Some((from, to)) = device.incident else { continue };
        for rule in device.kind.incident().1 {
            let label = json!({
                "rule": rule,
                "key": {"district": device.district, "device_id": device.id},
                "from": format_ms(from),
                "to": format_ms(to),
            });
            writeln!(labels_out, "{label}")?;
        }
    }
    labels_out.flush()?;

    let file = File::create(out)?;
    let mut writer: Box<dyn Write> = if out.extension().is_some_and(|e| e == "zst") {
        Box::new(BufWriter::new(zstd::Encoder::new(file, 3)?.auto_finish()))
    } else {
        Box::new(BufWriter::new(file))
    };
    devices.sort_by_key(|d| d.phase_ms);
    let mut generated = Generated {
        readings: 0,
        messages: 0,
        incidents,
    };
    let gateway = settings.gateway.max(1);
    let mut step_start = settings.start_ms;
    let end = settings.start_ms + settings.duration_ms;
    while step_start < end {
        // Per (table, district), the readings of this step waiting to fill a gateway message:
        // a gateway serves one district, whose name its topic carries.
        let mut pending: std::collections::BTreeMap<(usize, &'static str), Vec<Value>> = Default::default();
        for device in &devices {
            let ts = step_start + device.phase_ms;
            if ts >= end {
                continue;
            }
            let reading = reading(device, ts, &mut rng);
            generated.readings += 1;
            if gateway == 1 {
                let line = json!({"at": ts - settings.start_ms, "topic": format!("city/{}/{}/{}", device.district, device.kind.table(), device.id), "payload": reading});
                writeln!(writer, "{line}")?;
                generated.messages += 1;
                continue;
            }
            let slot = Kind::ALL.iter().position(|k| *k == device.kind).unwrap_or(0);
            let mut row = reading;
            row["device_id"] = json!(device.id);
            let rows = pending.entry((slot, device.district)).or_default();
            rows.push(row);
            if rows.len() == gateway {
                let at = ts - settings.start_ms;
                write_gateway(&mut writer, device.kind, device.district, at, rows, generated.messages)?;
                generated.messages += 1;
            }
        }
        for ((slot, district), rows) in pending.iter_mut() {
            if !rows.is_empty() {
                let at = (step_start + settings.interval_ms - 1).min(end - 1) - settings.start_ms;
                write_gateway(&mut writer, Kind::ALL[*slot], district, at, rows, generated.messages)?;
                generated.messages += 1;
            }
        }
        step_start += settings.interval_ms;
    }
    writer.flush()?;
    Ok(generated)
}

/// One gateway message: the table's readings of a step, each with its own device_id.
fn write_gateway(
    writer: &mut dyn Write,
    kind: Kind,
    district: &str,
    at: i64,
    rows: &mut Vec<Value>,
    n: u64,
) -> std::io::Result<()> {
    let line = json!({
        "at": at,
        "topic": format!("city/{district}/{}/gw-{}-{:04}", kind.table(), kind.prefix(), n % 10_000),
        "payload": Value::Array(std::mem::take(rows)),
    });
    writeln!(writer, "{line}")
}

fn city(settings: &GenSettings, rng: &mut Rng) -> Vec<Device> {
    let mut devices = Vec::new();
    for kind in Kind::ALL {
        for i in 0..settings.devices_per_kind {
            devices.push(Device {
                kind,
                id: format!("{}-{i:06}", kind.prefix()),
                district: DISTRICTS[i % DISTRICTS.len()],
                phase_ms: rng.below(settings.interval_ms.max(1) as u64) as i64,
                incident: None,
            });
        }
    }
    devices
}

/// Chooses `incidents` distinct devices and a start for each, whole minutes into the run,
/// leaving an hour before the end for the windows to close and the alert to resolve.
fn place_incidents(settings: &GenSettings, devices: &mut [Device], rng: &mut Rng) -> usize {
    let first = settings.start_ms + 30 * MIN;
    let last = settings.start_ms + settings.duration_ms - 90 * MIN;
    if last <= first || devices.is_empty() {
        return 0;
    }
    let mut placed = 0;
    let mut tries = 0;
    while placed < settings.incidents.min(devices.len()) && tries < 100 * devices.len() {
        tries += 1;
        let device = &mut devices[rng.below(devices.len() as u64) as usize];
        if device.incident.is_some() {
            continue;
        }
        let minutes = ((last - first) / MIN) as u64;
        let mut start = first + rng.below(minutes) as i64 * MIN;
        if device.kind == Kind::Pressure {
            // Start inside a 5-minute window, so the window sees the fall (pressure_collapse).
            start = start - start.rem_euclid(5 * MIN) + 2 * MIN;
        }
        device.incident = Some((start, start + device.kind.incident().0));
        placed += 1;
    }
    placed
}

/// A reading at `ts`: a daily cycle plus noise, or the incident's values.
fn reading(device: &Device, ts: EpochMs, rng: &mut Rng) -> Value {
    let day = (ts.rem_euclid(DAY)) as f64 / DAY as f64 * std::f64::consts::TAU;
    let in_incident = device.incident.is_some_and(|(from, to)| ts >= from && ts < to);
    let noise = rng.unit() * 2.0 - 1.0;
    let round = |x: f64, digits: i32| (x * 10f64.powi(digits)).round() / 10f64.powi(digits);
    match device.kind {
        Kind::Station => {
            let supply = if in_incident {
                40.0 + noise
            } else {
                70.0 + 5.0 * day.cos() + noise
            };
            json!({
                "ts": ts, "kind": "station",
                "supply_temp_c": round(supply, 2), "return_temp_c": round(supply - 20.0, 2),
                "supply_pressure_mpa": 0.6, "return_pressure_mpa": 0.3,
                "flow_m3h": round(50.0 + 5.0 * noise, 2), "outdoor_temp_c": round(-3.0 + 4.0 * day.sin(), 2),
            })
        }
        Kind::Pressure => {
            let pressure = if in_incident {
                0.05
            } else {
                0.30 + 0.03 * day.sin() + 0.005 * noise
            };
            json!({"ts": ts, "kind": "pressure", "pressure_mpa": round(pressure, 4), "flow_m3h": round(120.0 + 10.0 * noise, 2)})
        }
        Kind::Gas => {
            let lel = if in_incident { 60.0 } else { 1.0 + noise };
            json!({"ts": ts, "kind": "gas_lel", "value": round(lel, 2), "unit": "%LEL"})
        }
    }
}
