//! The MQTT warning sink: every warning is published as its JSON object with QoS 1 to
//! `warnings/<level>/<rule>`, and the current state of each alert is kept retained on
//! `warnings/state/<rule>/<key values>` (the prefix is `[mqtt] warnings_prefix`): the warning while firing, an empty retained
//! message (which clears it) once resolved. A console that connects late subscribes to
//! `warnings/state/#` and sees exactly what is firing now. The connection is driven by its
//! own thread and reconnects by itself; `close` waits until the broker has acknowledged
//! every publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Packet, QoS};
use serde_json::Value;

use super::sink::{Sink, SinkError};
use super::warning::{Warning, WarningStatus};
use crate::broker::{self, BrokerUrl};
use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// How long `close` waits for the broker to acknowledge what was published.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// How long `settle` waits for the broker's acks before reporting them unconfirmed.
const SETTLE_WAIT: Duration = Duration::from_secs(5);
/// Reconciling retained states: the longest wait for the broker to send them, and the
/// quiet that ends the wait once they flow.
const RETAINED_WAIT: Duration = Duration::from_secs(3);
const RETAINED_QUIET: Duration = Duration::from_millis(300);

/// Retained states the broker sends while a reconcile listens: (topic, payload).
type Retained = Arc<parking_lot::Mutex<Option<Vec<(String, Vec<u8>)>>>>;

/// A connected publisher.
pub(crate) struct MqttSink {
    client: Client,
    prefix: String,
    published: u64,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    connection: JoinHandle<()>,
    /// Where failed publishes are counted (`sink_errors`).
    metrics: Arc<Metrics>,
    /// Filled by the connection thread while a reconcile listens.
    retained: Retained,
    /// Whether the broker granted the reconcile's subscription.
    subscribed: Arc<AtomicBool>,
    /// Set by the connection thread when a reconnect finds the session gone.
    session_lost: Arc<AtomicBool>,
    /// Copies of the publishes the broker may not have acked yet: (topic, payload, retain).
    unacked: Vec<(String, Vec<u8>, bool)>,
}

impl MqttSink {
    pub(crate) fn connect(url: &BrokerUrl, config: &MqttConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client_id = format!("{}-warnings", config.base_client_id());
        let options = broker::options(url, config, &client_id)?;
        let (client, mut connection) = Client::new(options, 1024);
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acks, stopping) = (Arc::clone(&acked), Arc::clone(&stop));
        let retained: Retained = Arc::default();
        let subscribed = Arc::new(AtomicBool::new(false));
        let (listening, granted) = (Arc::clone(&retained), Arc::clone(&subscribed));
        let session_lost = Arc::new(AtomicBool::new(false));
        let lost = Arc::clone(&session_lost);
        let mut connected_before = false;
        let host = url.host.clone();
        let connection = std::thread::Builder::new()
            .name("mqtt-warnings".to_string())
            .spawn(move || {
                let mut backoff = Duration::from_millis(100);
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                            backoff = Duration::from_millis(100);
                            // Without the session, rumqttc drops what was in flight.
                            if connected_before && !connack.session_present {
                                lost.store(true, Ordering::Relaxed);
                            }
                            connected_before = true;
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => granted.store(true, Ordering::Relaxed),
                        Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                            if let Some(seen) = listening.lock().as_mut() {
                                seen.push((p.topic.clone(), p.payload.to_vec()));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if stopping.load(Ordering::Relaxed) {
                                break;
                            }
                            tracing::warn!(broker = %host, error = %e, "warning sink: mqtt connection lost; retrying (check that the --warnings-mqtt broker is up and reachable and the mqtt credentials are right)");
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            })
            .map_err(|e| format!("starting the mqtt sink: {e}"))?;
        Ok(MqttSink {
            client,
            prefix: config.warnings_prefix.clone(),
            published: 0,
            acked,
            stop,
            connection,
            metrics,
            retained,
            subscribed,
            session_lost,
            unacked: Vec::new(),
        })
    }

    /// Waits (up to `wait`) until the broker has acknowledged every publish so far.
    fn wait_for_acks(&mut self, wait: Duration) -> bool {
        let started = Instant::now();
        while self.acked.load(Ordering::Relaxed) < self.published {
            if self.session_lost.swap(false, Ordering::Relaxed) {
                self.publish_again();
            }
            if started.elapsed() >= wait {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Makes the retained states under `<prefix>/state/` show exactly `firing`: stale
    /// ones are cleared, missing or outdated ones published. Returns (cleared, published).
    pub(crate) fn reconcile_states(&mut self, firing: &[Warning]) -> (u64, u64) {
        let filter = format!("{}/state/#", self.prefix);
        *self.retained.lock() = Some(Vec::new());
        self.subscribed.store(false, Ordering::Relaxed);
        if let Err(e) = self.client.subscribe(&filter, QoS::AtLeastOnce) {
            tracing::warn!(error = %e, "warning sink: cannot read the retained states to reconcile them; they are left as they are (check that mqtt.warnings_prefix has no + or #)");
            *self.retained.lock() = None;
            return (0, 0);
        }
        // The broker sends the retained messages right after granting the subscription.
        let started = Instant::now();
        let mut last_count = 0;
        let mut quiet_since = Instant::now();
        while started.elapsed() < RETAINED_WAIT {
            std::thread::sleep(Duration::from_millis(20));
            let count = self.retained.lock().as_ref().map_or(0, Vec::len);
            if count != last_count {
                last_count = count;
                quiet_since = Instant::now();
            }
            if self.subscribed.load(Ordering::Relaxed) && quiet_since.elapsed() >= RETAINED_QUIET {
                break;
            }
        }
        let _ = self.client.unsubscribe(&filter);
        let seen = self.retained.lock().take().unwrap_or_default();
        let wanted: std::collections::HashMap<String, &Warning> =
            firing.iter().map(|w| (state_topic(&self.prefix, w), w)).collect();
        let mut shown: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
        for (topic, payload) in seen {
            let alert_id = serde_json::from_slice::<Value>(&payload)
                .ok()
                .and_then(|v| v.get("alert_id").and_then(Value::as_str).map(str::to_string));
            shown.insert(topic, (!payload.is_empty()).then_some(alert_id.unwrap_or_default()));
        }
        let (mut cleared, mut published) = (0, 0);
        for (topic, alert) in &shown {
            if alert.is_some() && !wanted.contains_key(topic) && self.send(topic.clone(), Vec::new(), true).is_ok() {
                cleared += 1;
            }
        }
        for (topic, warning) in &wanted {
            let current = shown.get(topic).cloned().flatten();
            if current.as_deref() != Some(warning.alert_id.as_str())
                && let Ok(json) = serde_json::to_vec(warning)
                && self.send(topic.clone(), json, true).is_ok()
            {
                published += 1;
            }
        }
        (cleared, published)
    }

    /// Publishes one warning and updates its alert's retained state; an escalation goes to
    /// `<prefix>/escalations/<level>/<rule>` and leaves the state as it is. Waits while the
    /// client's queue is full (the sink back-pressures the rules, never drops).
    pub(crate) fn publish(&mut self, warning: &Warning) -> Result<(), String> {
        let json = serde_json::to_vec(warning).map_err(|e| e.to_string())?;
        let route = match warning.status {
            WarningStatus::Escalated => "/escalations",
            WarningStatus::Firing | WarningStatus::Resolved => "",
        };
        let topic = format!(
            "{}{route}/{}/{}",
            self.prefix,
            warning.level.as_str(),
            topic_safe(&warning.rule)
        );
        let state = match warning.status {
            WarningStatus::Firing => Some(json.clone()),
            WarningStatus::Resolved => Some(Vec::new()),
            WarningStatus::Escalated => None,
        };
        self.send(topic, json, false)?;
        match state {
            Some(state) => self.send(state_topic(&self.prefix, warning), state, true),
            None => Ok(()),
        }
    }

    /// Publishes at QoS 1, keeping a copy until the broker has acked everything so far.
    fn send(&mut self, topic: String, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        if self.acked.load(Ordering::Relaxed) >= self.published {
            self.unacked.clear();
        }
        self.client
            .publish(topic.clone(), QoS::AtLeastOnce, retain, payload.clone())
            .map_err(|e| e.to_string())?;
        self.unacked.push((topic, payload, retain));
        self.published += 1;
        Ok(())
    }

    /// The broker lost the sink's session (and rumqttc dropped what was in flight): what it
    /// had not acked is published again, and the count starts over.
    fn publish_again(&mut self) {
        let again = std::mem::take(&mut self.unacked);
        tracing::warn!(
            publishes = again.len(),
            "warning sink: the broker lost the session; publishing again what it had not acknowledged (give the broker persistence and a session expiry longer than any outage)"
        );
        self.published = self.acked.load(Ordering::Relaxed);
        for (topic, payload, retain) in again {
            if let Err(e) = self.send(topic, payload, retain) {
                self.metrics.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "warning sink: mqtt publish failed; the warning is not published (check that mqtt.warnings_prefix has no + or #)");
            }
        }
    }

    /// Waits (up to 30 s) for the broker to acknowledge every publish, then disconnects.
    pub(crate) fn close(self) {
        let started = Instant::now();
        while self.acked.load(Ordering::Relaxed) < self.published && started.elapsed() < CLOSE_WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        let unacked = self.published.saturating_sub(self.acked.load(Ordering::Relaxed));
        if unacked > 0 {
            tracing::warn!(
                unacked,
                "warning sink: closing with publishes the broker has not acknowledged; they may be lost (check that the --warnings-mqtt broker is up and reachable)"
            );
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect();
        let _ = self.connection.join();
    }
}

impl Sink for MqttSink {
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError> {
        if let Err(e) = self.publish(warning) {
            // Only a closed client fails here (the connection retries by itself).
            self.metrics.sink_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, alert = %warning.alert_id, "warning sink: mqtt publish failed; the warning is not published (check that mqtt.warnings_prefix has no + or #)");
        }
        Ok(())
    }

    fn settle(&mut self) -> bool {
        self.wait_for_acks(SETTLE_WAIT)
    }

    fn pages(&self) -> bool {
        true
    }

    /// The retained state shows the alert's new marks (acknowledged, assigned).
    fn remark(&mut self, firing: &Warning) {
        let published = serde_json::to_vec(firing)
            .map_err(|e| e.to_string())
            .and_then(|json| self.send(state_topic(&self.prefix, firing), json, true));
        if let Err(e) = published {
            self.metrics.sink_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, alert = %firing.alert_id, "warning sink: the alert's retained state could not be updated");
        }
    }

    fn reconcile(&mut self, firing: &[Warning]) {
        let (cleared, published) = self.reconcile_states(firing);
        self.metrics
            .state
            .retained_cleared
            .fetch_add(cleared, Ordering::Relaxed);
        self.metrics
            .state
            .retained_published
            .fetch_add(published, Ordering::Relaxed);
        if cleared + published > 0 {
            tracing::warn!(
                cleared,
                published,
                "warning sink: retained alert states did not match what fires; stale ones cleared, missing ones published"
            );
        }
    }

    fn close(self: Box<Self>) -> Result<(), SinkError> {
        MqttSink::close(*self);
        Ok(())
    }
}

/// `<prefix>/state/<rule>/<key value>/…`, one level per key column (columns by name).
pub(crate) fn state_topic(prefix: &str, warning: &Warning) -> String {
    let mut topic = format!("{prefix}/state/{}", topic_safe(&warning.rule));
    for value in warning.key.values() {
        topic.push('/');
        match value {
            Value::String(s) => topic.push_str(&topic_safe(s)),
            other => topic.push_str(&topic_safe(&other.to_string())),
        }
    }
    topic
}

/// Replaces the characters MQTT gives meaning to in topics.
fn topic_safe(text: &str) -> String {
    text.chars()
        .map(|c| if matches!(c, '/' | '+' | '#' | '\0') { '_' } else { c })
        .collect()
}
