//! The operator API: acknowledge, assign, comment on and close an alert, read its history,
//! list the desk's alerts with their marks, and the response statistics. Writes need an
//! operator's bearer token (`[http.operators]`); the action goes to the sink thread, which
//! applies, journals and answers it, so it is in the alert's history before the `200`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use crate::alert::desk::actions::{Action, ActionError, Operation};
use crate::alert::desk::book::{Applied, Desk};
use crate::alert::desk::keeper::SharedDesk;
use crate::alert::desk::record::AlertRecord;
use crate::alert::sink::{Notice, OperatorRequest};
use crate::config::operators::Operators;
use crate::time::wall_now_ms;

/// How long an action waits for the sink thread before answering 503.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// The largest request body an action takes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// What the operator routes need.
#[derive(Clone)]
pub struct DeskAccess {
    pub(crate) desk: SharedDesk,
    /// To the sink thread; weak, so the HTTP side never keeps the pipeline from ending.
    pub(crate) notices: mpsc::WeakSender<Notice>,
    pub(crate) operators: Arc<Operators>,
    /// Actions are stamped with the desk's own clock (a replay's event time), not the wall.
    pub(crate) virtual_clock: bool,
}

/// A refused request: a status and a one-line reason, answered as JSON.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    /// As Alertmanager's API answers an error: the reason as a JSON string.
    pub(crate) fn plain(self) -> Response {
        (self.status, axum::Json(self.reason)).into_response()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.reason}))).into_response()
    }
}

pub(crate) fn refuse(status: StatusCode, reason: impl std::fmt::Display) -> Refusal {
    Refusal {
        status,
        reason: reason.to_string(),
    }
}

pub(crate) fn no_desk() -> Refusal {
    refuse(StatusCode::SERVICE_UNAVAILABLE, "the operations desk is not running")
}

impl DeskAccess {
    /// The operator a request's bearer token names, or the 401 to answer.
    pub(crate) fn operator(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token.and_then(|t| self.operators.who(t)) {
            Some(name) => Ok(name.to_string()),
            None if self.operators.is_empty() => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "no operators are configured: add [http.operators] (or CITYOPS_OPERATOR) to act on warnings",
            )),
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "an operator's bearer token is required",
            )),
        }
    }

    /// Now, on the desk's clock.
    pub(crate) fn now_ms(&self) -> i64 {
        if self.virtual_clock {
            self.desk.lock().now_ms()
        } else {
            wall_now_ms()
        }
    }

    /// Sends an action to the sink thread and waits for its answer.
    pub(crate) async fn act(&self, by: String, action: Action) -> Result<Applied, Refusal> {
        let operation = Operation {
            at_ms: self.now_ms(),
            by,
            action,
        };
        let Some(notices) = self.notices.upgrade() else {
            return Err(no_desk());
        };
        let (reply, answer) = oneshot::channel();
        let request = Box::new(OperatorRequest { operation, reply });
        // The queue is the warnings' own: a sink that holds it (a broker down) holds actions.
        let answered = tokio::time::timeout(ANSWER_WAIT, async move {
            notices.send(Notice::Operator(request)).await.map_err(|_| ())?;
            answer.await.map_err(|_| ())
        })
        .await;
        match answered {
            Ok(Ok(Ok(applied))) => Ok(applied),
            Ok(Ok(Err(refused))) => Err(refusal(&refused)),
            Ok(Err(())) => Err(no_desk()),
            Err(_) => Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sink thread did not answer in 10 s (a slow sink holds it); the action may still be applied: check the alert's history or the silences before trying again",
            )),
        }
    }
}

/// The status each refusal answers with.
pub(crate) fn refusal(refused: &ActionError) -> Refusal {
    let status = match refused {
        ActionError::UnknownAlert(_) | ActionError::UnknownSilence(_) => StatusCode::NOT_FOUND,
        ActionError::Conflict(_) => StatusCode::CONFLICT,
        ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
        ActionError::TooLong => StatusCode::PAYLOAD_TOO_LARGE,
        ActionError::NotDurable(_) | ActionError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    refuse(status, refused)
}

/// The JSON object of a request body (an empty body is `{}`), or the 400 to answer.
fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(refuse(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
        Err(e) => Err(refuse(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}"))),
    }
}

/// A text field of the body: absent is None, a non-string is a 400.
fn text(body: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, Refusal> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(refuse(StatusCode::BAD_REQUEST, format!("`{name}` must be a string"))),
    }
}

/// `POST /api/alerts/{alert_id}/{ack|assign|comment|close}`.
pub(crate) async fn act_on_alert(
    State(state): State<AppState>,
    Path((alert_id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().into_response();
    };
    let by = match access.operator(&headers) {
        Ok(by) => by,
        Err(refused) => return refused.into_response(),
    };
    let action = match action_of(&verb, alert_id.clone(), &body) {
        Ok(action) => action,
        Err(refused) => return refused.into_response(),
    };
    match access.act(by, action).await {
        Ok(applied) => {
            let events: Vec<_> = applied.events.into_iter().map(|(_, e)| e).collect();
            let desk = access.desk.lock();
            let record = desk.alert(&alert_id).map(|r| record_json(&desk, r));
            axum::Json(json!({"ok": true, "events": events, "alert": record})).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

fn action_of(verb: &str, alert_id: String, body: &Bytes) -> Result<Action, Refusal> {
    let body = body_object(body)?;
    let required = |name: &str| {
        text(&body, name)?.ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("the body needs `{name}`")))
    };
    Ok(match verb {
        "ack" => Action::Ack {
            alert_id,
            comment: text(&body, "comment")?,
        },
        "assign" => Action::Assign {
            alert_id,
            to: required("to")?,
        },
        "comment" => Action::Comment {
            alert_id,
            text: match text(&body, "text")? {
                Some(t) => t,
                None => required("comment")?,
            },
        },
        "close" => Action::Close {
            alert_id,
            feedback: text(&body, "feedback")?,
        },
        other => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no action `{other}`; use ack, assign, comment or close"),
            ));
        }
    })
}

/// One alert as the API shows it: its latest notification with marks, its state on the
/// desk (`silenced`: an active silence matches it now), and its group (rule and district,
/// as the dashboard groups).
pub(crate) fn record_json(desk: &Desk, record: &AlertRecord) -> Value {
    json!({
        "alert_id": record.warning.alert_id,
        "rule": record.warning.rule,
        "level": record.warning.level,
        "table": record.warning.table,
        "key": record.warning.key,
        "firing": record.firing(),
        "closed": record.closed,
        "acknowledged": record.warning.marks.acknowledged,
        "assigned_to": record.warning.marks.assigned_to,
        "silenced": record.firing() && !desk.silenced_by(&record.warning).is_empty(),
        "group": format!("{}/{}", record.warning.rule, record.district()),
        "district": record.district(),
        "warning": record.warning,
    })
}

/// `GET /api/alerts/{alert_id}/history`.
pub(crate) async fn history(State(state): State<AppState>, Path(alert_id): Path<String>) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().into_response();
    };
    let desk = access.desk.lock();
    match desk.alert(&alert_id) {
        Some(record) => {
            let mut json = record_json(&desk, record);
            json["history"] = json!(record.history);
            axum::Json(json).into_response()
        }
        None => refuse(StatusCode::NOT_FOUND, format!("no alert {alert_id}")).into_response(),
    }
}

/// `GET /api/alerts`: every alert on the desk (firing, and resolved ones still kept);
/// `?state=firing` only those firing (what the dashboard polls).
pub(crate) async fn alerts(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let Some(access) = &state.desk else {
        return no_desk().into_response();
    };
    let firing_only = query.is_some_and(|q| q.split('&').any(|pair| pair == "state=firing"));
    let alerts: Vec<Value> = {
        let desk = access.desk.lock();
        desk.alerts()
            .filter(|r| !firing_only || r.firing())
            .map(|r| record_json(&desk, r))
            .collect()
    };
    axum::Json(json!({"alerts": alerts})).into_response()
}

/// The response statistics for `/api/stats`.
pub(crate) fn response_json(state: &AppState) -> Value {
    let Some(access) = &state.desk else {
        return Value::Null;
    };
    let (since_start, last_day) = access.desk.lock().stats();
    json!({"since_start": since_start, "last_day": last_day})
}
