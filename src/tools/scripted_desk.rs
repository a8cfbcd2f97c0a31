//! The operations desk of a rule test (`[[action]]` entries): the lifecycle notifications
//! the pipeline produced and the case's scripted operator actions meet the real desk on one
//! virtual clock, so deadlines, escalations, silences and acknowledgements are tested
//! exactly. Each rule's notifications keep the order the rule emitted them; rules are merged
//! by time; the clock only moves forward, and runs on to the case's `until` at the end.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;
use serde_json::Value;

use crate::alert::desk::actions::{Action, Operation};
use crate::alert::desk::book::Desk;
use crate::alert::desk::silence::{Silence, parse_matcher};
use crate::alert::warning::Warning;
use crate::config::operations::OperationsConfig;
use crate::time::{EpochMs, format_ms, parse_ts_text};

/// One scripted action of a case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedAction {
    /// When, on the virtual clock.
    pub at: String,
    /// The operator.
    #[serde(default = "default_operator")]
    pub by: String,
    /// `ack`, `assign`, `comment`, `close`, `silence` or `expire`.
    #[serde(rename = "do")]
    pub verb: String,
    /// The alert acted on: its rule and (a subset of) its key; the latest such alert.
    pub rule: Option<String>,
    #[serde(default)]
    pub key: BTreeMap<String, Value>,
    pub comment: Option<String>,
    pub to: Option<String>,
    pub text: Option<String>,
    pub feedback: Option<String>,
    /// `silence`: its matchers (`alertname="gas_lel_high"`), its end, and a name that a
    /// later `expire` uses.
    #[serde(default)]
    pub matchers: Vec<String>,
    pub until: Option<String>,
    pub silence: Option<String>,
}

fn default_operator() -> String {
    "tester".to_string()
}

fn time(text: &str) -> Result<EpochMs, String> {
    parse_ts_text(text).map_err(|_| format!("`{text}` is not a time"))
}

/// Runs `warnings` (as the pipeline emitted them) and `actions` through a desk; returns every
/// notification the desk sends, in order (silenced ones included, marked).
pub fn run(
    config: &OperationsConfig,
    warnings: &[Warning],
    actions: &[ScriptedAction],
    until: Option<&str>,
) -> Result<Vec<Warning>, String> {
    let mut by_rule: BTreeMap<&str, VecDeque<(EpochMs, &Warning)>> = BTreeMap::new();
    for w in warnings {
        by_rule
            .entry(&w.rule)
            .or_default()
            .push_back((time(&w.detected_at)?, w));
    }
    let mut scripted: Vec<(EpochMs, usize)> = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        scripted.push((time(&a.at)?, i));
    }
    scripted.sort();
    let mut scripted: VecDeque<(EpochMs, usize)> = scripted.into();
    let mut desk = Desk::new(config.clone())?;
    let mut out = Vec::new();
    let mut clock = EpochMs::MIN;
    loop {
        // The earliest head: a rule's next notification, or the next action (notifications
        // first at the same time: the evidence is in before the operator acts).
        let next_rule = by_rule
            .iter()
            .filter_map(|(rule, q)| q.front().map(|(t, _)| (*t, *rule)))
            .min();
        let next_action = scripted.front().copied();
        let take_warning = match (next_rule, next_action) {
            (None, None) => break,
            (Some((tw, _)), Some((ta, _))) => tw <= ta,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_warning {
            let Some((t, rule)) = next_rule else { break };
            let Some((_, warning)) = by_rule.get_mut(rule).and_then(VecDeque::pop_front) else {
                break;
            };
            clock = clock.max(t);
            advance_to(&mut desk, clock, &mut out);
            out.push(desk.on_warning(warning).warning);
        } else {
            let Some((t, i)) = scripted.pop_front() else { break };
            clock = clock.max(t);
            advance_to(&mut desk, clock, &mut out);
            let action = &actions[i];
            let operation = Operation {
                at_ms: clock,
                by: action.by.clone(),
                action: to_action(action, &desk, i)?,
            };
            desk.apply(&operation)
                .map_err(|e| format!("action {} ({} at {}): {e}", i + 1, action.verb, action.at))?;
            out.extend(desk.advance(clock, true).into_iter().map(|o| o.warning));
        }
    }
    if let Some(until) = until {
        advance_to(&mut desk, clock.max(time(until)?), &mut out);
    }
    Ok(out)
}

/// Moves the desk's clock to `to` through every time in between at which something falls
/// due, in order.
fn advance_to(desk: &mut Desk, to: EpochMs, out: &mut Vec<Warning>) {
    while let Some(due) = desk.next_due(true).filter(|due| *due <= to) {
        out.extend(desk.advance(due, true).into_iter().map(|o| o.warning));
    }
    out.extend(desk.advance(to, true).into_iter().map(|o| o.warning));
}

/// The desk action a scripted one stands for.
fn to_action(a: &ScriptedAction, desk: &Desk, index: usize) -> Result<Action, String> {
    let alert_id = || -> Result<String, String> {
        let rule = a
            .rule
            .as_deref()
            .ok_or_else(|| format!("action {}: `{}` needs `rule`", index + 1, a.verb))?;
        desk.alerts()
            .filter(|r| r.warning.rule == rule && a.key.iter().all(|(k, v)| r.warning.key.get(k) == Some(v)))
            .max_by_key(|r| r.fired_ms)
            .map(|r| r.warning.alert_id.clone())
            .ok_or_else(|| {
                format!(
                    "action {} at {}: no alert of {rule} with key {:?} yet",
                    index + 1,
                    a.at,
                    a.key
                )
            })
    };
    let needs = |value: &Option<String>, name: &str| {
        value
            .clone()
            .ok_or_else(|| format!("action {}: `{}` needs `{name}`", index + 1, a.verb))
    };
    Ok(match a.verb.as_str() {
        "ack" => Action::Ack {
            alert_id: alert_id()?,
            comment: a.comment.clone(),
        },
        "assign" => Action::Assign {
            alert_id: alert_id()?,
            to: needs(&a.to, "to")?,
        },
        "comment" => Action::Comment {
            alert_id: alert_id()?,
            text: needs(&a.text, "text")?,
        },
        "close" => Action::Close {
            alert_id: alert_id()?,
            feedback: a.feedback.clone(),
        },
        "silence" => Action::Silence {
            silence: Silence {
                id: a.silence.clone().unwrap_or_else(|| format!("silence-{}", index + 1)),
                matchers: a.matchers.iter().map(|m| parse_matcher(m)).collect::<Result<_, _>>()?,
                starts_at: format_ms(time(&a.at)?),
                ends_at: needs(&a.until, "until")?,
                created_by: a.by.clone(),
                comment: a.comment.clone().unwrap_or_default(),
            },
        },
        "expire" => Action::ExpireSilence {
            silence_id: needs(&a.silence, "silence")?,
        },
        other => {
            return Err(format!(
                "action {}: unknown `do = \"{other}\"`; use ack, assign, comment, close, silence or expire",
                index + 1
            ));
        }
    })
}
