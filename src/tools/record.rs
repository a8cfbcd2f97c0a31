//! `cityops record`: subscribes like the live source and writes every message to a fixture
//! (`{"at": ms since the first message, "topic", "payload"}`, or `"raw"` for a payload that
//! is not JSON; zstd-compressed when the file name ends in `.zst`), and prints what it
//! received and at what rate. (The load tests' baseline is `examples/plain_subscriber.rs`,
//! which only counts.)

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Packet, SubscribeFilter};
use serde_json::{Value, json};

use crate::broker;
use crate::ingest::mqtt::MqttSource;
use crate::shutdown::Shutdown;

/// What a recording captured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recorded {
    pub messages: u64,
    /// From the first message to the last.
    pub seconds: f64,
}

impl Recorded {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Records until `shutdown` is requested, `source.max_messages` or `source.idle_exit`.
pub fn record(source: &MqttSource, out: &Path, shutdown: &Shutdown) -> Result<Recorded, String> {
    let qos = broker::qos(source.config.qos)?;
    let client_id = format!("{}-record", source.config.base_client_id());
    let options = broker::options(&source.url, &source.config, &client_id)?;
    let file = File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut writer: Box<dyn Write> = if out.extension().is_some_and(|e| e == "zst") {
        let encoder = zstd::Encoder::new(file, 3).map_err(|e| e.to_string())?;
        Box::new(BufWriter::new(encoder.auto_finish()))
    } else {
        Box::new(BufWriter::new(file))
    };
    let (client, mut connection) = Client::new(options, 100);
    let filters: Vec<SubscribeFilter> = source
        .filters
        .iter()
        .map(|f| SubscribeFilter::new(f.clone(), qos))
        .collect();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut messages = 0u64;
    loop {
        let idle = source
            .idle_exit
            .is_some_and(|limit| first.is_some() && last.elapsed() >= limit);
        if shutdown.is_requested() || idle || source.max_messages.is_some_and(|m| messages >= m) {
            break;
        }
        match connection.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                tracing::info!(filters = ?source.filters, "record: connected; subscribing");
                client.try_subscribe_many(filters.clone()).map_err(|e| e.to_string())?;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let now = Instant::now();
                let at = now.duration_since(*first.get_or_insert(now)).as_millis() as u64;
                let line = match serde_json::from_slice::<Value>(&p.payload) {
                    Ok(payload) => json!({"at": at, "topic": p.topic, "payload": payload}),
                    Err(_) => json!({"at": at, "topic": p.topic, "raw": String::from_utf8_lossy(&p.payload)}),
                };
                serde_json::to_writer(&mut writer, &line).map_err(|e| e.to_string())?;
                writer.write_all(b"\n").map_err(|e| e.to_string())?;
                messages += 1;
                last = now;
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "record: connection lost; reconnecting (check that the --mqtt broker is up and reachable and the mqtt credentials are right)");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    writer.flush().map_err(|e| e.to_string())?;
    let _ = client.disconnect();
    let seconds = first.map(|f| last.duration_since(f).as_secs_f64()).unwrap_or(0.0);
    Ok(Recorded { messages, seconds })
}
