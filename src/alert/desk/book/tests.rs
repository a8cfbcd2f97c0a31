//! The desk's behaviour, input by input: operators' actions and the history, deadlines,
//! silences and maintenance windows, and the statistics against a hand count.

use serde_json::{Map, Value};

use super::*;
use crate::alert::desk::silence::{Silence, parse_matcher};
use crate::alert::warning::Marks;
use crate::level::Level;

const T0: EpochMs = 1_768_435_200_000; // 2026-01-15T00:00:00Z
const MIN: EpochMs = 60_000;

fn warning(id: &str, device: &str, status: WarningStatus, level: Level, at: EpochMs, transition: u32) -> Warning {
    Warning {
        alert_id: id.into(),
        rule: "gas_lel_high".into(),
        status,
        level,
        table: "sensor".into(),
        key: Map::from_iter([
            ("district".to_string(), Value::from("xicheng")),
            ("device_id".to_string(), Value::from(device)),
        ]),
        values: Map::new(),
        window_start: None,
        window_end: None,
        first_breach: format_ms(at),
        detected_at: format_ms(at),
        latency_ms: 0.0,
        description: String::new(),
        transition,
        escalated_from: None,
        marks: Marks::default(),
    }
}

/// A silence from T0 for 30 minutes, made by li.
fn silence_for_half_an_hour(desk: &mut Desk, id: &str, matcher: &str) {
    let silence = Silence {
        id: id.into(),
        matchers: vec![parse_matcher(matcher).unwrap()],
        starts_at: format_ms(T0),
        ends_at: format_ms(T0 + 30 * MIN),
        created_by: String::new(),
        comment: String::new(),
    };
    desk.apply(&op(T0, "li", Action::Silence { silence })).unwrap();
}

fn op(at: EpochMs, by: &str, action: Action) -> Operation {
    Operation {
        at_ms: at,
        by: by.into(),
        action,
    }
}

fn ack(id: &str) -> Action {
    Action::Ack {
        alert_id: id.into(),
        comment: None,
    }
}

fn events(desk: &Desk, id: &str) -> Vec<(EventKind, Option<String>)> {
    desk.alert(id)
        .map(|r| r.history.iter().map(|e| (e.event, e.by.clone())).collect())
        .unwrap_or_default()
}

#[test]
fn operators_act_and_the_history_keeps_every_event_in_order() {
    let mut desk = Desk::new(OperationsConfig::default()).unwrap();
    desk.on_warning(&warning("a1", "gas-1", WarningStatus::Firing, Level::Yellow, T0, 1));
    desk.apply(&op(T0 + MIN, "li", ack("a1"))).unwrap();
    let assign = Action::Assign {
        alert_id: "a1".into(),
        to: "xicheng gas unit".into(),
    };
    let applied = desk.apply(&op(T0 + 2 * MIN, "li", assign)).unwrap();
    assert_eq!(applied.remarked.len(), 1, "the receivers' view shows the assignment");
    let comment = Action::Comment {
        alert_id: "a1".into(),
        text: "crew on the way".into(),
    };
    desk.apply(&op(T0 + 3 * MIN, "wang", comment)).unwrap();
    // A rise in level takes the acknowledgement back.
    let raised = desk.on_warning(&warning(
        "a1",
        "gas-1",
        WarningStatus::Firing,
        Level::Red,
        T0 + 4 * MIN,
        2,
    ));
    assert!(raised.warning.marks.acknowledged.is_none());
    assert_eq!(raised.warning.marks.assigned_to.as_deref(), Some("xicheng gas unit"));
    let close = Action::Close {
        alert_id: "a1".into(),
        feedback: Some("valve replaced".into()),
    };
    assert!(matches!(
        desk.apply(&op(T0 + 5 * MIN, "li", close.clone())),
        Err(ActionError::Conflict(_))
    ));
    desk.on_warning(&warning(
        "a1",
        "gas-1",
        WarningStatus::Resolved,
        Level::Red,
        T0 + 6 * MIN,
        3,
    ));
    desk.apply(&op(T0 + 7 * MIN, "li", close.clone())).unwrap();
    assert!(matches!(
        desk.apply(&op(T0 + 8 * MIN, "li", close)),
        Err(ActionError::Conflict(_))
    ));
    let li = Some("li".to_string());
    assert_eq!(
        events(&desk, "a1"),
        vec![
            (EventKind::Fired, None),
            (EventKind::Acknowledged, li.clone()),
            (EventKind::Assigned, li.clone()),
            (EventKind::Commented, Some("wang".into())),
            (EventKind::LevelChanged, None),
            (EventKind::Unacknowledged, None),
            (EventKind::Resolved, None),
            (EventKind::Closed, li),
        ]
    );
    assert_eq!(
        desk.apply(&op(T0, "li", ack("nope"))),
        Err(ActionError::UnknownAlert("nope".into()))
    );
    let long = Action::Comment {
        alert_id: "a1".into(),
        text: "x".repeat(5000),
    };
    assert_eq!(desk.apply(&op(T0, "li", long)), Err(ActionError::TooLong));
    // A recovery computing a notification again adds nothing.
    desk.on_warning(&warning(
        "a1",
        "gas-1",
        WarningStatus::Resolved,
        Level::Red,
        T0 + 6 * MIN,
        3,
    ));
    assert_eq!(events(&desk, "a1").len(), 8);
}

#[test]
fn an_unacknowledged_deadline_escalates_exactly_once_and_an_acknowledged_one_never() {
    let mut desk = Desk::new(OperationsConfig::default()).unwrap(); // red: acknowledge within 5 min
    desk.on_warning(&warning("late", "gas-1", WarningStatus::Firing, Level::Red, T0, 1));
    desk.on_warning(&warning("fast", "gas-2", WarningStatus::Firing, Level::Red, T0, 1));
    desk.apply(&op(T0 + 4 * MIN, "li", ack("fast"))).unwrap();
    assert!(desk.advance(T0 + 5 * MIN - 1, true).is_empty());
    let sent = desk.advance(T0 + 5 * MIN, true);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].warning.alert_id, "late");
    assert_eq!(sent[0].warning.status, WarningStatus::Escalated);
    assert_eq!(sent[0].warning.marks.escalation.as_deref(), Some("acknowledge"));
    assert_eq!(sent[0].warning.detected_at, format_ms(T0 + 5 * MIN));
    assert!(desk.advance(T0 + 60 * MIN, true).is_empty(), "once per deadline");
    // The resolve deadline (2 h) escalates both, once each.
    let sent = desk.advance(T0 + 120 * MIN, true);
    let ids: Vec<_> = sent
        .iter()
        .map(|o| (o.warning.alert_id.as_str(), o.warning.marks.escalation.as_deref()))
        .collect();
    assert_eq!(ids, [("fast", Some("resolve")), ("late", Some("resolve"))]);
    assert!(desk.advance(T0 + 600 * MIN, true).is_empty());
    // Without deadlines (a replay's clock) nothing escalates.
    let mut replay = Desk::new(OperationsConfig::default()).unwrap();
    replay.on_warning(&warning("r", "gas-3", WarningStatus::Firing, Level::Red, T0, 1));
    assert!(replay.advance(T0 + 600 * MIN, false).is_empty());
}

#[test]
fn a_silence_holds_back_paging_and_the_alert_is_notified_once_when_it_ends() {
    let mut desk = Desk::new(OperationsConfig::default()).unwrap();
    silence_for_half_an_hour(&mut desk, "maint", "device_id=gas-1");
    let held = desk.on_warning(&warning(
        "s1",
        "gas-1",
        WarningStatus::Firing,
        Level::Yellow,
        T0 + MIN,
        1,
    ));
    assert!(!held.page && held.warning.marks.silenced);
    let other = desk.on_warning(&warning(
        "s2",
        "gas-2",
        WarningStatus::Firing,
        Level::Yellow,
        T0 + MIN,
        1,
    ));
    assert!(other.page && !other.warning.marks.silenced);
    let held = desk.on_warning(&warning(
        "s1",
        "gas-1",
        WarningStatus::Firing,
        Level::Orange,
        T0 + 2 * MIN,
        2,
    ));
    assert!(!held.page);
    assert!(desk.advance(T0 + 29 * MIN, false).is_empty());
    let released = desk.advance(T0 + 30 * MIN, false);
    assert_eq!(released.len(), 1);
    assert!(released[0].page && !released[0].warning.marks.silenced);
    assert_eq!(
        (released[0].warning.alert_id.as_str(), released[0].warning.level),
        ("s1", Level::Orange)
    );
    assert!(desk.advance(T0 + 40 * MIN, false).is_empty(), "notified once");
    // Its resolve pages: the receivers were told it fires.
    assert!(
        desk.on_warning(&warning(
            "s1",
            "gas-1",
            WarningStatus::Resolved,
            Level::Orange,
            T0 + 41 * MIN,
            3
        ))
        .page
    );
}

#[test]
fn an_alert_resolved_under_its_silence_never_pages() {
    let mut desk = Desk::new(OperationsConfig::default()).unwrap();
    silence_for_half_an_hour(&mut desk, "m", "alertname=gas_lel_high");
    assert!(
        !desk
            .on_warning(&warning("q", "gas-1", WarningStatus::Firing, Level::Blue, T0 + MIN, 1))
            .page
    );
    assert!(
        !desk
            .on_warning(&warning(
                "q",
                "gas-1",
                WarningStatus::Resolved,
                Level::Blue,
                T0 + 2 * MIN,
                2
            ))
            .page
    );
    assert!(desk.advance(T0 + 31 * MIN, false).is_empty());
    // Expiring a silence early releases at once.
    let mut desk = Desk::new(OperationsConfig::default()).unwrap();
    silence_for_half_an_hour(&mut desk, "m", "alertname=gas_lel_high");
    desk.on_warning(&warning("q", "gas-1", WarningStatus::Firing, Level::Blue, T0 + MIN, 1));
    let expire = Action::ExpireSilence { silence_id: "m".into() };
    desk.apply(&op(T0 + 5 * MIN, "li", expire)).unwrap();
    let released = desk.advance(T0 + 5 * MIN, false);
    assert_eq!(released.len(), 1);
    assert_eq!(desk.silence("m").map(|s| s.ends_ms), Some(T0 + 5 * MIN));
}

#[test]
fn a_maintenance_window_holds_back_paging_and_releases_at_its_end() {
    let mut config = OperationsConfig::default();
    config.maintenance.push(crate::config::operations::Maintenance {
        name: "gas detectors".into(),
        matchers: vec!["device_id=~\"gas-.*\"".into()],
        from: "07:55".into(), // Beijing: 23:55 UTC the day before T0
        to: "08:10".into(),   // 00:10 UTC
    });
    let mut desk = Desk::new(config).unwrap();
    let held = desk.on_warning(&warning("m1", "gas-1", WarningStatus::Firing, Level::Red, T0, 1));
    assert!(!held.page && held.warning.marks.silenced);
    assert_eq!(desk.silenced_by(&held.warning), ["maintenance:gas detectors"]);
    assert_eq!(desk.next_due(false), Some(T0 + 10 * MIN));
    let released = desk.advance(T0 + 10 * MIN, false);
    assert_eq!(released.len(), 1);
    assert!(released[0].page && !released[0].warning.marks.silenced);
    // The next day's window holds a new alert back again.
    let day = 86_400_000;
    assert!(
        !desk
            .on_warning(&warning("m2", "gas-2", WarningStatus::Firing, Level::Red, T0 + day, 1))
            .page
    );
    assert!(
        desk.on_warning(&warning(
            "m3",
            "gas-3",
            WarningStatus::Firing,
            Level::Red,
            T0 + day + 11 * MIN,
            1
        ))
        .page
    );
    let mut bad = OperationsConfig::default();
    bad.maintenance.push(crate::config::operations::Maintenance {
        name: "x".into(),
        matchers: vec!["nonsense".into()],
        from: "01:00".into(),
        to: "02:00".into(),
    });
    assert!(Desk::new(bad).unwrap_err().contains("not a matcher"));
}

#[test]
fn response_statistics_match_a_hand_count() {
    // Red: acknowledge within 5 min, resolve within 2 h. Yellow: 1 h and 7 d.
    let mut desk = Desk::new(OperationsConfig::default()).unwrap();
    let fire = |desk: &mut Desk, id: &str, device: &str, level: Level, at: EpochMs| {
        desk.on_warning(&warning(id, device, WarningStatus::Firing, level, at, 1));
    };
    let resolve = |desk: &mut Desk, id: &str, device: &str, level: Level, at: EpochMs| {
        desk.on_warning(&warning(id, device, WarningStatus::Resolved, level, at, 2));
    };
    // In time order:
    // r1: acked after 2 min (in time), resolved after 30 min (in time);
    // r2: acked after 10 min (late: escalated at 5), resolved after 3 h (late: escalated at 2 h);
    // r3 (from 100 min): never acked, still firing: its acknowledge deadline passed;
    // y1 (from 100 min): acked after 20 min (in time), still firing, inside its resolve deadline.
    fire(&mut desk, "r1", "gas-1", Level::Red, T0);
    fire(&mut desk, "r2", "gas-2", Level::Red, T0);
    desk.apply(&op(T0 + 2 * MIN, "li", ack("r1"))).unwrap();
    desk.advance(T0 + 5 * MIN, true);
    desk.apply(&op(T0 + 10 * MIN, "li", ack("r2"))).unwrap();
    resolve(&mut desk, "r1", "gas-1", Level::Red, T0 + 30 * MIN);
    fire(&mut desk, "r3", "gas-3", Level::Red, T0 + 100 * MIN);
    fire(&mut desk, "y1", "gas-4", Level::Yellow, T0 + 100 * MIN);
    desk.advance(T0 + 120 * MIN, true);
    desk.apply(&op(T0 + 120 * MIN, "wang", ack("y1"))).unwrap();
    resolve(&mut desk, "r2", "gas-2", Level::Red, T0 + 180 * MIN);
    desk.advance(T0 + 200 * MIN, true);
    let (since_start, last_day) = desk.stats();
    let red = &since_start.by_level["red"];
    assert_eq!((red.fired, red.acknowledged, red.acknowledged_in_time), (3, 2, 1));
    // Decided: r1 (in time), r2 (late), r3 (late) → 1 of 3.
    assert_eq!(red.response_rate, Some(1.0 / 3.0));
    assert_eq!((red.resolved, red.resolved_in_time), (2, 1));
    // Decided: r1 (in time), r2 (late); r3's 2 h have not passed.
    assert_eq!(red.resolution_rate, Some(0.5));
    assert_eq!(red.ack_mean_s, Some(360.0)); // (120 s + 600 s) / 2
    let yellow = &since_start.by_level["yellow"];
    assert_eq!(
        (yellow.fired, yellow.acknowledged_in_time, yellow.response_rate),
        (1, 1, Some(1.0))
    );
    assert_eq!(yellow.resolution_rate, None);
    assert_eq!(since_start.all.fired, 4);
    assert_eq!(since_start.by_district["xicheng"].fired, 4);
    assert_eq!(since_start.by_table["sensor"].acknowledged, 3);
    // Everything fired within the last day: the same counts.
    assert_eq!(last_day, since_start);
}

#[test]
fn a_notification_computed_again_pages_as_it_did_the_first_time() {
    let mut desk = Desk::new(OperationsConfig::default()).unwrap();
    silence_for_half_an_hour(&mut desk, "m", "device_id=gas-1");
    let held = warning("d1", "gas-1", WarningStatus::Firing, Level::Red, T0 + MIN, 1);
    assert!(!desk.on_warning(&held).page);
    assert!(!desk.on_warning(&held).page, "held back again after a crash");
    let told = warning("d2", "gas-2", WarningStatus::Firing, Level::Red, T0 + MIN, 1);
    assert!(desk.on_warning(&told).page);
    assert!(desk.on_warning(&told).page);
    let unpaged_resolve = warning("d1", "gas-1", WarningStatus::Resolved, Level::Red, T0 + 2 * MIN, 2);
    assert!(!desk.on_warning(&unpaged_resolve).page);
    assert!(
        !desk.on_warning(&unpaged_resolve).page,
        "its pagers never heard it fire"
    );
    // What the desk makes has its own identity beside the notification it repeats.
    let escalated = desk.advance(T0 + 10 * MIN, true);
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].identity(), ("d2/escalated-acknowledge".to_string(), 1));
    assert_eq!(Outgoing::lifecycle(told, true).identity(), ("d2".to_string(), 1));
}

#[test]
fn an_escalation_a_silence_held_back_pages_when_it_ends() {
    let mut desk = Desk::new(OperationsConfig::default()).unwrap();
    // Told it fires, then silenced: its 5 min deadline passes under the silence.
    assert!(
        desk.on_warning(&warning("h1", "gas-1", WarningStatus::Firing, Level::Red, T0, 1))
            .page
    );
    silence_for_half_an_hour(&mut desk, "m", "device_id=gas-1");
    let held = desk.advance(T0 + 5 * MIN, true);
    assert_eq!(held.len(), 1);
    assert!(!held[0].page, "held back");
    let after = desk.advance(T0 + 30 * MIN, true);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].page);
    assert_eq!(after[0].warning.marks.escalation.as_deref(), Some("acknowledge"));
    assert_eq!(
        after[0].warning.detected_at,
        format_ms(T0 + 5 * MIN),
        "stamped when it passed"
    );
    assert_ne!(after[0].identity(), held[0].identity(), "the paging sinks never had it");
    assert!(desk.advance(T0 + 40 * MIN, true).is_empty(), "once");
}
