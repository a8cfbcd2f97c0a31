//! The HTTP side of a running pipeline (axum, on the pipeline's tokio runtime): `/` the
//! live dashboard (one embedded page, no external assets), `/api/warnings` (firing now and
//! recent history), `/api/rules` (each rule's version, last evaluation, rows in, breaches,
//! errors and state size), `/api/stats` (counters, queue depths, latency per stage), `/events`
//! (server-sent events: the board, then each warning after it, and stats every second with the detection latency
//! of that second), `/metrics` (Prometheus), and `/health`, `/health/live`, `/health/ready`
//! for supervisors. It binds to loopback unless told otherwise; a non-loopback address needs
//! a bearer token (`[http] token` or `CITYOPS_HTTP_TOKEN`), and with a token every route
//! but the health ones requires it (`Authorization: Bearer …`, or `?token=` for the page and
//! its event stream, which browsers cannot give headers); an operator's token passes too.
//! `live` keeps what the dashboard shows (fed by its `DashboardFeed` sink); `prometheus`
//! renders `/metrics`; `desk` is the operator API (`/api/alerts/…`, writes need an
//! operator's token) and `alertmanager_api` Alertmanager's API v2 (`/api/v2/…`) for `amtool`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::broadcast;

use crate::alert::warning::Warning;
use crate::metrics::{Metrics, Stage};
use crate::summary::Summary;

pub(crate) mod alertmanager_api;
mod cluster_metrics;
pub(crate) mod desk;
pub(crate) mod live;
pub(crate) mod prometheus;

pub use desk::DeskAccess;
use live::{LiveState, Watch};

/// Environment variable that overrides `[http] token`.
pub(crate) const TOKEN_ENV: &str = "CITYOPS_HTTP_TOKEN";

/// The dashboard page, embedded.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
    pub token: Option<Arc<str>>,
    /// The operations desk (absent in route tests that do not need it).
    pub desk: Option<DeskAccess>,
}

/// The running server; `stop` ends it.
pub(crate) struct HttpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpServer {
    pub(crate) fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The token in force: the environment's, else the config's; empty means none.
pub(crate) fn effective_token(configured: Option<String>) -> Option<String> {
    std::env::var(TOKEN_ENV).ok().or(configured).filter(|t| !t.is_empty())
}

/// Every route, with the token check (route tests call this without a socket).
pub fn router(state: AppState) -> axum::Router {
    let guarded = axum::Router::new()
        .route("/", get(dashboard))
        .route("/api/warnings", get(warnings))
        .route("/api/rules", get(rules))
        .route("/api/stats", get(stats))
        .route("/events", get(events))
        .route("/metrics", get(metrics_page))
        .route("/api/alerts", get(desk::alerts))
        .route("/api/alerts/{alert_id}/history", get(desk::history))
        .route("/api/alerts/{alert_id}/{action}", post(desk::act_on_alert))
        .route(
            "/api/v2/silences",
            get(alertmanager_api::list).post(alertmanager_api::post),
        )
        .route(
            "/api/v2/silence/{id}",
            get(alertmanager_api::get_one).delete(alertmanager_api::expire),
        )
        .route(
            "/api/v2/silences/{id}",
            get(alertmanager_api::get_one).delete(alertmanager_api::expire),
        )
        .route("/api/v2/alerts", get(alertmanager_api::alerts))
        .route("/api/v2/status", get(alertmanager_api::status))
        .route("/api/v2/receivers", get(alertmanager_api::receivers))
        .layer(axum::extract::DefaultBodyLimit::max(desk::MAX_BODY))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    guarded
        .route("/health", get(health))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .with_state(state)
}

/// Liveness and readiness together, always 200 while the process answers (a supervisor's
/// liveness probe): `{"live": true, "ready": …, "checks": {…}}`.
async fn health(State(state): State<AppState>) -> Response {
    let (ready, checks) = state.metrics.ready();
    axum::Json(json!({"live": true, "ready": ready, "checks": checks_json(&checks)})).into_response()
}

/// Readiness (a load balancer's or supervisor's readiness probe): 200 when the rules are
/// loaded, recovery is done and a live source is connected and subscribed; else 503, with
/// the checks that fail.
async fn ready(State(state): State<AppState>) -> Response {
    let (ready, checks) = state.metrics.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"ready": ready, "checks": checks_json(&checks)})),
    )
        .into_response()
}

fn checks_json(checks: &[(&str, bool)]) -> serde_json::Value {
    checks.iter().map(|(name, ok)| (name.to_string(), json!(ok))).collect()
}

/// The HTTP side could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A config problem: the address is reachable from other machines and nothing guards it.
    #[error("http: {0} is not loopback; set [http] token or {TOKEN_ENV} so the endpoint needs a bearer token")]
    OpenWithoutToken(SocketAddr),
    #[error("http: cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Binds `bind` (or, when it is taken and `any_port_if_taken`, any free port of its address)
/// and serves until stopped. Refuses a non-loopback address without a token.
pub(crate) fn start(
    runtime: &tokio::runtime::Runtime,
    bind: SocketAddr,
    any_port_if_taken: bool,
    token: Option<String>,
    metrics: Arc<Metrics>,
    live: Arc<LiveState>,
    desk: Option<DeskAccess>,
) -> Result<HttpServer, HttpError> {
    let token = effective_token(token);
    if !bind.ip().is_loopback() && token.is_none() {
        return Err(HttpError::OpenWithoutToken(bind));
    }
    let query = if token.is_some() { "?token=…" } else { "" };
    let app = router(AppState {
        metrics,
        live,
        token: token.map(Arc::from),
        desk,
    });
    let listener = match runtime.block_on(tokio::net::TcpListener::bind(bind)) {
        Err(e) if any_port_if_taken && e.kind() == std::io::ErrorKind::AddrInUse => {
            runtime.block_on(tokio::net::TcpListener::bind(SocketAddr::new(bind.ip(), 0)))
        }
        bound => bound,
    }
    .map_err(|source| HttpError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr: bind, source })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed; the dashboard and /metrics are down for the rest of the run (restart cityops to serve them again)");
        }
    });
    tracing::info!(
        "dashboard on http://{addr}/{query} (also /api/warnings, /api/rules, /api/stats, /events, /metrics, /health/live, /health/ready)"
    );
    Ok(HttpServer { stop: Some(stop) })
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let from_header = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let from_query = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        let operator = from_header.is_some_and(|t| state.desk.as_ref().is_some_and(|d| d.operators.who(t).is_some()));
        if from_header != Some(token.as_ref()) && from_query != Some(token.as_ref()) && !operator {
            return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
        }
    }
    next.run(request).await
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn warnings(State(state): State<AppState>) -> Response {
    let (firing, recent) = state.live.board();
    axum::Json(json!({"firing": firing, "recent": recent})).into_response()
}

async fn rules(State(state): State<AppState>) -> Response {
    axum::Json(json!({"rules": state.metrics.rules.snapshot()})).into_response()
}

/// Counters, queue depths and latency per stage, as of now.
fn stats_json(state: &AppState) -> serde_json::Value {
    let metrics = &state.metrics;
    let firing = state.live.firing().len();
    let elapsed = Duration::from_nanos(metrics.now_ns());
    let mut stats = serde_json::to_value(Summary::collect(metrics, elapsed, firing)).unwrap_or_default();
    stats["queue_depths"] = json!(metrics.queue_depths());
    stats["mqtt_connected"] = json!(metrics.mqtt_connected.load(std::sync::atomic::Ordering::Relaxed));
    stats["state"] = state_json(metrics);
    stats["cluster"] = cluster_metrics::cluster_json(&metrics.cluster);
    stats["response"] = desk::response_json(state);
    stats
}

/// The durable state, for the dashboard (null when the run keeps no state).
fn state_json(metrics: &crate::metrics::Metrics) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &metrics.state;
    if !s.enabled.load(Relaxed) {
        return serde_json::Value::Null;
    }
    json!({
        "log_bytes": s.log_bytes.load(Relaxed),
        "log_stalled": s.log_stalled.load(Relaxed),
        "checkpoints": s.checkpoints.load(Relaxed),
        "checkpoint_failures": s.checkpoint_failures.load(Relaxed),
        "last_checkpoint_ms": s.last_checkpoint_ms.load(Relaxed),
        "last_checkpoint_bytes": s.last_checkpoint_bytes.load(Relaxed),
        "last_checkpoint_us": s.last_checkpoint_us.load(Relaxed),
        "recovery_ms": s.recovery_ms.load(Relaxed),
        "recovered_messages": s.recovered_messages.load(Relaxed),
        "refilled_messages": s.refilled_messages.load(Relaxed),
        "resends_skipped": s.resends_skipped.load(Relaxed),
        "sessions_lost": s.session_lost.load(Relaxed),
    })
}

async fn stats(State(state): State<AppState>) -> Response {
    axum::Json(stats_json(&state)).into_response()
}

async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // The page starts from a `board` event (firing now, recent history) and then takes each
    // `warning` recorded after it; a page too slow to keep up gets a fresh `board` in place
    // of what it missed. A page that reconnects starts again from a `board`.
    let first = PageFeed::Board(state.live.watch());
    let warnings = futures::stream::unfold((Arc::clone(&state.live), first), |(live, feed)| async move {
        let mut events = match feed {
            PageFeed::Board(watch) => {
                let (event, events) = board_event(watch);
                return Some((event, (live, PageFeed::Events(events))));
            }
            PageFeed::Events(events) => events,
        };
        match events.recv().await {
            Ok(warning) => {
                let event = Event::default()
                    .event("warning")
                    .json_data(&warning)
                    .unwrap_or_default();
                Some((event, (live, PageFeed::Events(events))))
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (event, events) = board_event(live.watch());
                Some((event, (live, PageFeed::Events(events))))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    let stats_state = state.clone();
    let since = stats_state.metrics.histogram(Stage::Detection);
    let stats = futures::stream::unfold(since, move |since| {
        let state = stats_state.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut stats = stats_json(&state);
            let now = state.metrics.histogram(Stage::Detection);
            stats["detection_last_second"] = interval_percentiles(&now, &since);
            let event = Event::default().event("stats").json_data(stats).unwrap_or_default();
            Some((event, now))
        }
    });
    let merged = futures::stream::select(warnings, stats).map(Ok);
    Sse::new(merged).keep_alive(KeepAlive::default())
}

/// Where one page's event stream stands: about to send the board, or sending warnings.
enum PageFeed {
    Board(Watch),
    Events(broadcast::Receiver<Warning>),
}

/// The `board` event of a watch, and the warnings that follow it.
fn board_event(watch: Watch) -> (Event, broadcast::Receiver<Warning>) {
    let board = json!({"firing": watch.firing, "recent": watch.recent});
    let event = Event::default().event("board").json_data(board).unwrap_or_default();
    (event, watch.events)
}

/// Percentiles of what a cumulative histogram recorded since an earlier copy of it, so the
/// page charts latency as it is now, not averaged since the start.
fn interval_percentiles(now: &hdrhistogram::Histogram<u64>, since: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    let mut interval = now.clone();
    if interval.subtract(since).is_err() || interval.is_empty() {
        return json!({"count": 0});
    }
    let us = |q: f64| interval.value_at_quantile(q) as f64 / 1e3;
    json!({"count": interval.len(), "p50_us": us(0.5), "p99_us": us(0.99), "max_us": interval.max() as f64 / 1e3})
}

async fn metrics_page(State(state): State<AppState>) -> Response {
    let mut page = prometheus::render(&state.metrics);
    if let Some(access) = &state.desk {
        prometheus::render_desk(&mut page, &state.metrics.desk, &mut access.desk.lock());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response()
}
