//! `cityops replay FILE --to-mqtt URL`: publishes a fixture to a broker as a load generator,
//! at the recorded speed, scaled (`--speed 60`) or as fast as the broker takes it
//! (`--speed max`). With QoS 1 it ends once the broker has acknowledged every message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Packet, QoS};

use crate::broker::{self, BrokerUrl};
use crate::config::MqttConfig;
use crate::ingest::fixture::FixtureReader;
use crate::ingest::replay::Speed;

/// What a publishing run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    pub messages: u64,
    pub seconds: f64,
}

/// Publishes every message of `reader` with `qos`, paced by `speed`.
pub fn publish(
    reader: &mut FixtureReader,
    url: &BrokerUrl,
    config: &MqttConfig,
    qos: QoS,
    speed: Speed,
) -> Result<Published, String> {
    let client_id = format!("{}-replay-{}", config.base_client_id(), std::process::id());
    let mut options = broker::options(url, config, &client_id)?;
    options.set_clean_session(true);
    let (client, mut connection) = Client::new(options, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = Arc::clone(&acked);
    let driver = std::thread::Builder::new()
        .name("mqtt-replay".to_string())
        .spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "replay: connection lost; retrying (check that the --to-mqtt broker is up and reachable and the mqtt credentials are right)");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut origin: Option<i64> = None;
    let mut messages = 0u64;
    for msg in reader.messages() {
        let msg = msg.map_err(|e| e.to_string())?;
        let origin = *origin.get_or_insert(msg.at_ms);
        let due = speed.due(msg.at_ms, origin, messages);
        if let Some(wait) = due.and_then(|due| due.checked_sub(started.elapsed())) {
            std::thread::sleep(wait);
        }
        client
            .publish(msg.topic, qos, false, msg.payload)
            .map_err(|e| e.to_string())?;
        messages += 1;
    }
    if qos != QoS::AtMostOnce {
        while acked.load(Ordering::Relaxed) < messages {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = client.disconnect();
    let _ = driver.join();
    Ok(Published { messages, seconds })
}
