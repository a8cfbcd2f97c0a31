//! The HTTP endpoint of a running pipeline (axum, on the pipeline's tokio runtime):
//! `/metrics` (Prometheus text) and `/health`. It binds to loopback unless told otherwise,
//! and a non-loopback address needs a bearer token (`[http] token` or `CITYOPS_HTTP_TOKEN`);
//! with a token every request must carry `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;

/// Environment variable that overrides `[http] token`.
pub const TOKEN_ENV: &str = "CITYOPS_HTTP_TOKEN";

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
}

/// The running server; dropped or `stop`ped at the end of the run.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpServer {
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds `bind` and serves until stopped. Refuses a non-loopback address without a token.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    bind: SocketAddr,
    token: Option<String>,
    metrics: Arc<Metrics>,
) -> Result<HttpServer, String> {
    let token = std::env::var(TOKEN_ENV).ok().or(token).filter(|t| !t.is_empty());
    if !bind.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "http: {bind} is not loopback; set [http] token or {TOKEN_ENV} so the endpoint needs a bearer token"
        ));
    }
    let state = AppState {
        metrics,
        token: token.map(Arc::from),
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(state);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(bind))
        .map_err(|e| format!("http: cannot bind {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(%addr, "serving /metrics and /health");
    Ok(HttpServer { addr, stop: Some(stop) })
}

async fn metrics_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_ref()) {
            return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::prometheus::render(&state.metrics),
    )
        .into_response()
}
