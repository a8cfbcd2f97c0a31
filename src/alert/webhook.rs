//! The webhook sink: each warning is POSTed as JSON (the warning object, or an
//! Alertmanager `POST /api/v2/alerts` body) by a delivery thread. Warnings go through the
//! on-disk spool first, so a receiver that is down, slow or restarting never stops
//! detection and never loses a warning: delivery retries the oldest one with exponential
//! backoff, in order, and a later cityops run sends what an earlier one left. A full spool
//! is counted and logged; a receiver that refuses a warning (4xx other than 408/429) has it
//! moved to `rejected/` and counted. With the Alertmanager format the delivery thread also
//! keeps the receiver's firing alerts active (`alertmanager::ActiveAlerts`): each is sent
//! with an `endsAt` ahead and sent again every `resend_interval` until it resolves.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::alertmanager::{ActiveAlerts, alertmanager_body};
use super::sink::{Sink, SinkError};
use super::spool::Spool;
use super::warning::Warning;
use crate::config::{WebhookConfig, WebhookFormat};
use crate::metrics::Metrics;
use crate::time::wall_now_ms;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The sink side: spools warnings and wakes the delivery thread.
pub(crate) struct WebhookSink {
    spool: Arc<Mutex<Spool>>,
    format: WebhookFormat,
    wake: Sender<Wake>,
    delivery: JoinHandle<()>,
    drain: Duration,
    metrics: Arc<Metrics>,
}

enum Wake {
    New,
    /// Deliver what is spooled until this instant, then stop.
    DrainUntil(Instant),
    /// What fires after a recovery, which an earlier run sent (Alertmanager: re-sent).
    Firing(Vec<Warning>),
}

impl WebhookSink {
    pub(crate) fn start(config: &WebhookConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let url = config.url.clone().ok_or_else(|| "webhook: no url".to_string())?;
        let max_bytes = config.spool_max_mb.max(1) * 1024 * 1024;
        let spool = Spool::open(&config.spool_dir, max_bytes)
            .map_err(|e| format!("webhook spool {}: {e}", config.spool_dir.display()))?;
        if !spool.is_empty() {
            tracing::info!(
                pending = spool.len(),
                "webhook: sending warnings spooled by an earlier run"
            );
        }
        metrics.webhook_spooled.store(spool.len() as u64, Ordering::Relaxed);
        let spool = Arc::new(Mutex::new(spool));
        let (wake, woken) = crossbeam_channel::unbounded();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout.0.max(1) as u64)))
            .http_status_as_error(false)
            .build()
            .into();
        let delivery = Delivery {
            agent,
            url,
            spool: Arc::clone(&spool),
            rejected_dir: config.spool_dir.join("rejected"),
            max_backoff: Duration::from_millis(config.max_backoff.0.max(100) as u64),
            metrics: Arc::clone(&metrics),
            active: (config.format == WebhookFormat::Alertmanager)
                .then(|| ActiveAlerts::new(Duration::from_millis(config.resend_interval.0.max(1) as u64))),
            resend_failing: false,
        };
        let delivery = std::thread::Builder::new()
            .name("webhook".to_string())
            .spawn(move || delivery.run(&woken))
            .map_err(|e| format!("starting the webhook thread: {e}"))?;
        Ok(WebhookSink {
            spool,
            format: config.format,
            wake,
            delivery,
            drain: Duration::from_millis(config.drain_on_exit.0.max(0) as u64),
            metrics,
        })
    }

    /// Spools one warning for delivery (never waits for the receiver).
    pub(crate) fn enqueue(&self, warning: &Warning) {
        let body = match self.format {
            WebhookFormat::Cityops => serde_json::to_vec(warning),
            WebhookFormat::Alertmanager => serde_json::to_vec(&alertmanager_body(warning)),
        };
        let stored = body
            .map_err(std::io::Error::from)
            .and_then(|body| match self.spool.lock() {
                Ok(mut spool) => spool.push(&body),
                Err(_) => Err(std::io::Error::other("spool lock poisoned")),
            });
        match stored {
            Ok(true) => {
                self.metrics.webhook_spooled.fetch_add(1, Ordering::Relaxed);
                let _ = self.wake.send(Wake::New);
            }
            Ok(false) => {
                self.metrics.webhook_spool_full.fetch_add(1, Ordering::Relaxed);
                tracing::error!(alert = %warning.alert_id, rule = %warning.rule, "webhook spool full: this warning is not sent by webhook (bring the receiver back up, or raise webhook.spool_max_mb)");
            }
            Err(e) => {
                self.metrics.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(alert = %warning.alert_id, error = %e, "webhook spool write failed; this warning is not sent by webhook (free disk space under webhook.spool_dir and check its permissions)");
            }
        }
    }

    /// Gives delivery up to `drain_on_exit` to empty the spool; what is left stays spooled
    /// for the next run.
    pub(crate) fn close(self) {
        let _ = self.wake.send(Wake::DrainUntil(Instant::now() + self.drain));
        let _ = self.delivery.join();
        let left = self.spool.lock().map(|s| s.len()).unwrap_or(0);
        if left > 0 {
            tracing::warn!(
                left,
                "webhook: receiver not reached; warnings stay spooled for the next run (check the receiver at webhook.url, or raise webhook.drain_on_exit)"
            );
        }
    }
}

struct Delivery {
    agent: ureq::Agent,
    url: String,
    spool: Arc<Mutex<Spool>>,
    rejected_dir: std::path::PathBuf,
    max_backoff: Duration,
    metrics: Arc<Metrics>,
    /// Alertmanager format: the alerts it holds as firing, re-sent each interval.
    active: Option<ActiveAlerts>,
    /// Whether the last re-send failed (logged once until one succeeds).
    resend_failing: bool,
}

/// What one POST came to.
enum Sent {
    Delivered,
    /// Try again later (connection failed, 5xx, 408, 429).
    Retry(String),
    /// The receiver will never take it.
    Refused(u16),
}

impl Delivery {
    fn run(mut self, woken: &Receiver<Wake>) {
        let mut backoff = MIN_BACKOFF;
        let mut deadline: Option<Instant> = None;
        // Alertmanager: when the active alerts go again (set once the first is delivered).
        let mut next_resend: Option<Instant> = None;
        loop {
            // Notices first (after a recovery, what fires), in order with the spool.
            while let Ok(wake) = woken.try_recv() {
                self.on_wake(wake, &mut deadline);
            }
            let interval = self
                .active
                .as_ref()
                .filter(|a| !a.is_empty())
                .map(ActiveAlerts::interval);
            match (interval, next_resend) {
                (None, _) => next_resend = None,
                (Some(interval), None) => next_resend = Some(Instant::now() + interval),
                // Due: sent again (not while draining at exit); a failure waits for the next.
                (Some(interval), Some(at)) if Instant::now() >= at => {
                    next_resend = Some(Instant::now() + interval);
                    if deadline.is_none() {
                        self.resend();
                    }
                }
                (Some(_), Some(_)) => {}
            }
            let next = match self.spool.lock() {
                Ok(spool) => spool.oldest(),
                Err(_) => return,
            };
            let (path, body) = match next {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    if deadline.is_some() {
                        return;
                    }
                    // Idle: wait for a warning, or until the next re-send is due.
                    let woke = match next_resend {
                        Some(at) => match woken.recv_deadline(at) {
                            Err(RecvTimeoutError::Timeout) => continue,
                            other => other.map_err(|_| ()),
                        },
                        None => woken.recv().map_err(|_| ()),
                    };
                    match woke {
                        Ok(wake) => self.on_wake(wake, &mut deadline),
                        Err(()) => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "webhook: cannot read the spool; webhook delivery stops for this run (check that the files in webhook.spool_dir are readable, then restart)");
                    return;
                }
            };
            let sent = match &self.active {
                Some(active) => active.prepare(&body, wall_now_ms()),
                None => body.clone(),
            };
            match self.post(&sent) {
                Sent::Delivered => {
                    backoff = MIN_BACKOFF;
                    if let Some(active) = self.active.as_mut() {
                        active.delivered(&body);
                    }
                    self.metrics.webhook_delivered.fetch_add(1, Ordering::Relaxed);
                    self.done(&path, None);
                }
                Sent::Refused(status) => {
                    backoff = MIN_BACKOFF;
                    // Alertmanager: what it refused is not re-sent (it would be refused again).
                    if let Some(active) = self.active.as_mut() {
                        active.forget(&body);
                    }
                    self.metrics.webhook_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(status, file = %path.display(), "webhook: receiver refused a warning; kept in rejected/ (check webhook.url, webhook.format and the receiver's access rules)");
                    self.done(&path, Some(&self.rejected_dir));
                }
                Sent::Retry(why) => {
                    self.metrics.webhook_retries.fetch_add(1, Ordering::Relaxed);
                    if backoff == MIN_BACKOFF {
                        tracing::warn!(url = %self.url, error = %why, "webhook: delivery failed; retrying with backoff (check that the receiver at `url` is up and reachable)");
                    }
                    // Sleep, but wake for a drain request or its deadline.
                    let wait = match deadline {
                        Some(until) => backoff.min(until.saturating_duration_since(Instant::now())),
                        None => backoff,
                    };
                    match woken.recv_timeout(wait) {
                        Ok(wake) => self.on_wake(wake, &mut deadline),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => deadline = deadline.or(Some(Instant::now())),
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    fn on_wake(&mut self, wake: Wake, deadline: &mut Option<Instant>) {
        match wake {
            Wake::New => {}
            Wake::DrainUntil(until) => *deadline = Some(until),
            Wake::Firing(firing) => {
                if let Some(active) = self.active.as_mut() {
                    active.adopt(&firing);
                }
            }
        }
    }

    /// Sends every active alert again with a fresh `endsAt` (one POST).
    fn resend(&mut self) {
        let Some((body, n)) = self.active.as_ref().and_then(|a| a.resend_body(wall_now_ms())) else {
            return;
        };
        match self.post(&body) {
            Sent::Delivered => {
                self.metrics.webhook_resent.fetch_add(n as u64, Ordering::Relaxed);
                self.resend_failing = false;
            }
            Sent::Retry(why) => {
                self.metrics.webhook_retries.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut self.resend_failing, true) {
                    tracing::warn!(url = %self.url, error = %why, alerts = n, "webhook: re-sending the firing alerts failed; trying again next interval (check that Alertmanager at `url` is up; alerts expire there if it stays down past their endsAt)");
                }
            }
            Sent::Refused(status) => {
                self.metrics.webhook_refused.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut self.resend_failing, true) {
                    tracing::error!(url = %self.url, status, alerts = n, "webhook: the receiver refused the re-sent firing alerts (check webhook.url and webhook.format)");
                }
            }
        }
    }

    fn post(&self, body: &[u8]) -> Sent {
        match self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(body)
        {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200..=299 => Sent::Delivered,
                    408 | 429 | 500..=599 => Sent::Retry(format!("HTTP {status}")),
                    _ => Sent::Refused(status),
                }
            }
            Err(e) => Sent::Retry(e.to_string()),
        }
    }

    /// Takes a payload out of the spool (into `keep` when given).
    fn done(&self, path: &Path, keep: Option<&Path>) {
        if let Some(dir) = keep
            && let Some(name) = path.file_name()
        {
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::copy(path, dir.join(name));
        }
        if let Ok(mut spool) = self.spool.lock() {
            if let Err(e) = spool.remove(path) {
                tracing::error!(error = %e, "webhook: cannot remove a delivered warning from the spool; the next run sends it again (check permissions on webhook.spool_dir)");
            }
            self.metrics
                .webhook_spooled
                .store(spool.len() as u64, Ordering::Relaxed);
        }
    }
}

impl Sink for WebhookSink {
    /// Queues the warning for the sender thread (spooled on disk while the receiver is down).
    fn deliver(&mut self, warning: &Warning) -> Result<(), SinkError> {
        self.enqueue(warning);
        Ok(())
    }

    fn pages(&self) -> bool {
        true
    }

    fn settle(&mut self) -> bool {
        // Spooled is delivered as far as a crash goes: the spool is sent by the next run.
        match self.spool.lock() {
            Ok(spool) => spool.sync().is_ok(),
            Err(_) => false,
        }
    }

    /// Alertmanager: the alerts firing after a recovery are kept active there (an earlier
    /// run sent them).
    fn reconcile(&mut self, firing: &[Warning]) {
        if self.format == WebhookFormat::Alertmanager {
            let _ = self.wake.send(Wake::Firing(firing.to_vec()));
        }
    }

    fn close(self: Box<Self>) -> Result<(), SinkError> {
        WebhookSink::close(*self);
        Ok(())
    }
}
