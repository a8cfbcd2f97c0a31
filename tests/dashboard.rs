//! The dashboard's routes without a socket (tower `oneshot`): status codes, JSON shapes,
//! the embedded page with no external assets, and the token on every route but /health.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cityops::{AppState, LiveState, Metrics, Warning, router};
use serde_json::{Value, json};
use tower::ServiceExt;

fn warning(id: &str, level: &str, status: &str, first_breach: &str) -> Warning {
    serde_json::from_value(json!({
        "alert_id": id, "rule": "gas_lel_high", "status": status, "level": level, "table": "sensor",
        "key": {"district": "xicheng", "device_id": id}, "values": {"gas_lel": 60.0},
        "window_start": null, "window_end": null, "first_breach": first_breach,
        "detected_at": first_breach, "latency_ms": 1.0, "description": "gas"
    }))
    .unwrap()
}

fn state(token: Option<&str>) -> AppState {
    let live = Arc::new(LiveState::new());
    live.record(&warning("a", "yellow", "firing", "2026-01-15T00:00:00.000Z"));
    live.record(&warning("b", "red", "firing", "2026-01-15T00:05:00.000Z"));
    live.record(&warning("c", "red", "firing", "2026-01-15T00:01:00.000Z"));
    live.record(&warning("a", "yellow", "resolved", "2026-01-15T00:00:00.000Z"));
    let metrics = Arc::new(Metrics::new());
    metrics.messages_in.fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    let health = metrics
        .rules
        .register("gas_lel_high", "0a1b2c3d", "row", "sensor", "gas");
    health.rows_in.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
    health.evaluated(1_768_435_200_000);
    AppState {
        metrics,
        live,
        token: token.map(Arc::from),
        desk: None,
    }
}

async fn get(state: AppState, uri: &str, bearer: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::get(uri);
    if let Some(token) = bearer {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = router(state)
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn the_page_is_embedded_and_loads_nothing_from_outside() {
    let (status, page) = get(state(None), "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<title>cityops"));
    assert!(page.contains("new EventSource(\"/events\""));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
}

#[tokio::test]
async fn warnings_list_what_fires_by_level_then_age_and_the_history() {
    let (status, body) = get(state(None), "/api/warnings", None).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    let firing: Vec<&str> = body["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(firing, ["c", "b"], "red first, the longest firing first; a resolved");
    let recent: Vec<(&str, &str)> = body["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["alert_id"].as_str().unwrap(), w["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        recent,
        [("a", "resolved"), ("c", "firing"), ("b", "firing"), ("a", "firing")]
    );
}

#[tokio::test]
async fn stats_carry_counters_queues_and_stages() {
    let (status, body) = get(state(None), "/api/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["messages_in"], 7);
    assert_eq!(stats["firing_at_end"], 2);
    assert_eq!(stats["queue_depths"], json!([]));
    assert_eq!(stats["mqtt_connected"], false);
    let stages: Vec<&str> = stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(
        stages.contains(&"detection") && stages.contains(&"decode"),
        "{stages:?}"
    );
}

#[tokio::test]
async fn rules_give_each_rules_health() {
    let (status, body) = get(state(None), "/api/rules", None).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    let rule = &body["rules"][0];
    assert_eq!(body["rules"].as_array().unwrap().len(), 1);
    assert_eq!(rule["rule"], "gas_lel_high");
    assert_eq!(rule["version"], "0a1b2c3d");
    assert_eq!(rule["kind"], "row");
    assert_eq!(rule["table"], "sensor");
    assert_eq!(rule["rows_in"], 5);
    assert_eq!(rule["evaluations"], 1);
    assert_eq!(rule["judged_through"], "2026-01-15T00:00:00.000Z");
    assert_eq!((rule["breaches"].clone(), rule["errors"].clone()), (json!(0), json!(0)));
    assert_eq!(rule["last_error"], Value::Null);
    assert_eq!(rule["state_size"], 0);
    let (_, page) = get(state(None), "/metrics", None).await;
    assert!(
        page.lines()
            .any(|l| l == "cityops_rule_rows_total{rule=\"gas_lel_high\"} 5"),
        "{page}"
    );
}

#[tokio::test]
async fn with_a_token_every_route_but_health_requires_it() {
    for uri in ["/", "/api/warnings", "/api/rules", "/api/stats", "/events", "/metrics"] {
        assert_eq!(
            get(state(Some("s3cret")), uri, None).await.0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        assert_eq!(
            get(state(Some("s3cret")), uri, Some("wrong")).await.0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
    }
    assert_eq!(
        get(state(Some("s3cret")), "/api/warnings", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(state(Some("s3cret")), "/api/stats?token=s3cret", None).await.0,
        StatusCode::OK
    );
    assert_eq!(get(state(Some("s3cret")), "/health", None).await.0, StatusCode::OK);
}

/// The named events (name, data) of a server-sent event stream's text so far, but `stats`.
fn warning_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| block.contains("data:"))
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let event = field("event:")?;
            let data = serde_json::from_str(&field("data:")?).ok()?;
            (event != "stats").then_some((event, data))
        })
        .collect()
}

/// Reads `/events` until it has given `count` warning or board events.
async fn read_events(body: Body, count: usize) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut text = String::new();
    loop {
        let events = warning_events(&text);
        if events.len() >= count {
            return events;
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

fn ids(warnings: &Value) -> Vec<&str> {
    warnings
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["alert_id"].as_str().unwrap())
        .collect()
}

/// A page connected to `/events` of the test state: the state's board, and the stream.
async fn connect_events() -> (Arc<LiveState>, Body) {
    let state = state(None);
    let live = Arc::clone(&state.live);
    let response = router(state)
        .oneshot(Request::get("/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    (live, response.into_body())
}

#[tokio::test]
async fn the_event_stream_starts_from_the_board_then_sends_each_warning_after_it() {
    let (live, events) = connect_events().await;
    // Recorded once the page is connected: not in its board, so it must come as an event.
    live.record(&warning("d", "orange", "firing", "2026-01-15T00:09:00.000Z"));
    let events = read_events(events, 2).await;
    assert_eq!(events[0].0, "board");
    assert_eq!(ids(&events[0].1["firing"]), ["c", "b"]);
    assert_eq!(ids(&events[0].1["recent"]), ["a", "c", "b", "a"]);
    assert_eq!(events[1].0, "warning");
    assert_eq!(events[1].1["alert_id"], "d");
    assert_eq!(events.len(), 2, "nothing twice: {events:?}");
}

#[tokio::test]
async fn a_page_that_falls_behind_gets_the_whole_board_again() {
    let (live, events) = connect_events().await;
    // More than the 1024 warnings a page may fall behind by: it cannot get them one by one.
    for n in 0..1100 {
        live.record(&warning(&format!("w{n}"), "blue", "firing", "2026-01-15T01:00:00.000Z"));
    }
    let events = read_events(events, 2).await;
    assert_eq!(ids(&events[0].1["firing"]), ["c", "b"], "the board it connected to");
    assert_eq!(events[1].0, "board", "then the board again, not a gap");
    let firing = ids(&events[1].1["firing"]);
    assert_eq!(firing.len(), 2 + 1100);
    assert!(firing.contains(&"w0") && firing.contains(&"w1099"));
}
