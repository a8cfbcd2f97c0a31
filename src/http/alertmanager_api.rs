//! Alertmanager's API v2, the part that tools speak to a silencer: `/api/v2/silences` (GET,
//! POST), `/api/v2/silence/{id}` (GET, DELETE), `/api/v2/alerts` (GET), and the `status`
//! and `receivers` that clients read on connecting; so `amtool silence add|query|expire` and
//! `amtool alert query` work against cityops unchanged (`--alertmanager.url`, with an
//! operator's token through `--http.config.file` for writes). Shapes follow Alertmanager's
//! `api/v2/openapi.yaml` (errors are a JSON string, as there).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::desk::{Refusal, no_desk, refuse};
use crate::alert::alertmanager::alertmanager_body;
use crate::alert::desk::actions::Action;
use crate::alert::desk::silence::{LabelTest, Silence, labels_of, parse_matcher};
use crate::time::format_ms;

/// The receiver name cityops reports (it is its own receiver).
const RECEIVER: &str = "cityops";

/// The query's `filter` matchers and its other parameters.
fn query_of(raw: Option<String>) -> Result<(Vec<LabelTest>, BTreeMap<String, String>), Refusal> {
    let mut filters = Vec::new();
    let mut flags = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if name == "filter" {
            let test = parse_matcher(&value)
                .and_then(|m| LabelTest::new(&m))
                .map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
            filters.push(test);
        } else {
            flags.insert(name.into_owned(), value.into_owned());
        }
    }
    Ok((filters, flags))
}

/// A boolean query flag (Alertmanager's default when absent: true).
fn flag(flags: &BTreeMap<String, String>, name: &str) -> bool {
    flags.get(name).is_none_or(|v| v != "false")
}

/// `GET /api/v2/silences`.
pub(crate) async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().plain();
    };
    let (filters, _) = match query_of(raw) {
        Ok(query) => query,
        Err(refused) => return refused.plain(),
    };
    let now = access.now_ms();
    let desk = access.desk.lock();
    let silences: Vec<Value> = desk
        .silences()
        .filter(|s| {
            // As Alertmanager: the filter runs over the silence's equality matchers as labels.
            let labels: BTreeMap<String, String> = s
                .silence
                .matchers
                .iter()
                .filter(|m| !m.is_regex && m.is_equal)
                .map(|m| (m.name.clone(), m.value.clone()))
                .collect();
            filters.iter().all(|f| f.accepts(&labels))
        })
        .map(|s| s.gettable(now))
        .collect();
    axum::Json(silences).into_response()
}

/// `GET /api/v2/silence/{id}`.
pub(crate) async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().plain();
    };
    let now = access.now_ms();
    match access.desk.lock().silence(&id) {
        Some(silence) => axum::Json(silence.gettable(now)).into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("no silence {id}")).plain(),
    }
}

/// `POST /api/v2/silences`: a new silence, or a change to one (its `id` given).
pub(crate) async fn post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().plain();
    };
    let by = match access.operator(&headers) {
        Ok(by) => by,
        Err(refused) => return refused.plain(),
    };
    let mut silence: Silence = match serde_json::from_slice(&body) {
        Ok(silence) => silence,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("not a silence: {e}")).plain(),
    };
    if silence.id.is_empty() {
        silence.id = uuid::Uuid::new_v4().to_string();
    } else if access.desk.lock().silence(&silence.id).is_none() {
        return refuse(StatusCode::NOT_FOUND, format!("no silence {} to change", silence.id)).plain();
    }
    let id = silence.id.clone();
    match access.act(by, Action::Silence { silence }).await {
        Ok(_) => axum::Json(json!({"silenceID": id})).into_response(),
        Err(refused) => refused.plain(),
    }
}

/// `DELETE /api/v2/silence/{id}`: the silence ends now.
pub(crate) async fn expire(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().plain();
    };
    let by = match access.operator(&headers) {
        Ok(by) => by,
        Err(refused) => return refused.plain(),
    };
    match access.act(by, Action::ExpireSilence { silence_id: id }).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(refused) => refused.plain(),
    }
}

/// `GET /api/v2/alerts`: the alerts firing now, as Alertmanager lists them (`suppressed`
/// when a silence holds them back).
pub(crate) async fn alerts(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().plain();
    };
    let (filters, flags) = match query_of(raw) {
        Ok(query) => query,
        Err(refused) => return refused.plain(),
    };
    let (show_active, show_silenced) = (flag(&flags, "active"), flag(&flags, "silenced"));
    let now = access.now_ms();
    let desk = access.desk.lock();
    let mut alerts = Vec::new();
    for record in desk.alerts().filter(|r| r.firing()) {
        let warning = &record.warning;
        let labels = labels_of(warning);
        if !filters.iter().all(|f| f.accepts(&labels)) {
            continue;
        }
        let silenced_by = desk.silenced_by(warning);
        let suppressed = !silenced_by.is_empty();
        if (suppressed && !show_silenced) || (!suppressed && !show_active) {
            continue;
        }
        // The alert as cityops posts it to Alertmanager, plus what a listing adds.
        let mut alert = alertmanager_body(warning)
            .get_mut(0)
            .map(Value::take)
            .unwrap_or_default();
        if let Some(to) = &warning.marks.assigned_to {
            alert["annotations"]["assigned_to"] = json!(to);
        }
        alert["updatedAt"] = json!(warning.detected_at);
        // Firing: Alertmanager shows the end its resolve timeout would give.
        alert["endsAt"] = json!(format_ms(now + 5 * 60_000));
        alert["fingerprint"] = json!(warning.alert_id);
        alert["receivers"] = json!([{"name": RECEIVER}]);
        alert["status"] = json!({
            "state": if suppressed { "suppressed" } else { "active" },
            "silencedBy": silenced_by,
            "inhibitedBy": [],
        });
        alerts.push(alert);
    }
    axum::Json(alerts).into_response()
}

/// `GET /api/v2/status`: what clients read first (cityops runs alone: no cluster).
pub(crate) async fn status(State(state): State<AppState>) -> Response {
    let started_ms = crate::time::wall_now_ms() - (state.metrics.now_ns() / 1_000_000) as i64;
    axum::Json(json!({
        "cluster": {"status": "disabled", "peers": []},
        "versionInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "revision": "",
            "branch": "",
            "buildUser": "cityops",
            "buildDate": "",
            "goVersion": "none (cityops, Rust)",
        },
        "config": {"original": ""},
        "uptime": format_ms(started_ms),
    }))
    .into_response()
}

/// `GET /api/v2/receivers`.
pub(crate) async fn receivers() -> Response {
    axum::Json(json!([{"name": RECEIVER}])).into_response()
}
