//! Where a unit's state comes from when it does not start with the stream: a checkpoint
//! (`restore`), or the units a reload replaces (`take_over`, from each replaced unit's
//! `Handover`), and how a removed rule ends (`Handover::retire`).

use super::judge::{Judge, JudgeFrom};
use super::{KindState, RuleWorker, key_names};
use crate::alert::lifecycle::{CleanStep, Lifecycle};
use crate::state::snapshot::{JudgeFromSnapshot, KindSnapshot, RuleSnapshot};
use crate::time::{EpochMs, wall_now_ms};

/// What a unit leaves when its input ended at a reload: its state under its unit key, and
/// its rules' judges, for the units that take over (`RuleWorker::take_over`); the judges no
/// unit takes are those of removed rules, resolved by `retire`.
pub(crate) struct Handover {
    key: String,
    state: Option<KindState>,
    last_event_ms: Option<EpochMs>,
    judges: Vec<Judge>,
}

impl Handover {
    /// The part a unit of `key` with the rules `ids` takes: the judges of those rules, and
    /// the state: a window family's when the keys match; a copy of a `devices` watch for
    /// every unit taking one of its rules (a rule whose watched tables changed keeps the
    /// last-seen times of its devices).
    pub(crate) fn split_off(&mut self, key: &str, ids: &[String]) -> Handover {
        let (taken, kept): (Vec<Judge>, Vec<Judge>) = std::mem::take(&mut self.judges)
            .into_iter()
            .partition(|judge| ids.contains(&judge.rule.id));
        self.judges = kept;
        let state = match &self.state {
            Some(KindState::Devices(devices)) if self.key == key || !taken.is_empty() => {
                Some(KindState::Devices(devices.clone()))
            }
            Some(KindState::Window(_)) if self.key == key => self.state.take(),
            _ => None,
        };
        Handover {
            key: self.key.clone(),
            state,
            last_event_ms: self.last_event_ms,
            judges: taken,
        }
    }

    /// Resolves the firing alerts of every rule left here: they were removed.
    pub(crate) async fn retire(self) {
        let event_ms = self.last_event_ms.unwrap_or_else(wall_now_ms);
        for mut judge in self.judges {
            retire_judge(&mut judge, event_ms).await;
        }
    }
}

/// Resolves every alert of `judge`, at event time `event_ms`.
async fn retire_judge(judge: &mut Judge, event_ms: EpochMs) {
    let step = CleanStep {
        window: None,
        detected_ms: judge.detected(event_ms),
        arrived_ns: judge.ctx.metrics.now_ns(),
    };
    for t in judge.lifecycle.retire(step) {
        judge.emit(t).await;
    }
}

/// Resolves the alerts of a rule's previous state when its new version keys them by other
/// columns; takes them over otherwise.
async fn adopt_alerts(judge: &mut Judge, mut old: Lifecycle, old_key_columns: &[String], event_ms: EpochMs) {
    if old_key_columns == key_names(judge).as_slice() {
        judge.lifecycle.adopt(old);
        return;
    }
    let step = CleanStep {
        window: None,
        detected_ms: judge.detected(event_ms),
        arrived_ns: judge.ctx.metrics.now_ns(),
    };
    for t in old.retire(step) {
        judge.emit(t).await;
    }
}

impl RuleWorker {
    /// Leaves the unit's state and judges for the units taking over at a reload.
    pub(crate) fn hand_over(mut self, key: String) -> Handover {
        self.merge_histograms(true);
        Handover {
            key,
            state: Some(self.state),
            last_event_ms: self.last_event_ms,
            judges: self.judges,
        }
    }

    /// Takes over from the units a reload replaced, which have drained their input
    /// (`previous`: this unit's part of each, `Handover::split_off`):
    /// - a rule whose version did not change (its family was rebuilt around it) goes on
    ///   exactly as it was;
    /// - a new version takes its predecessor's alerts when both key them by the same
    ///   columns (else they are resolved) and its error count. It goes on judging the
    ///   family's open windows when its predecessor was of this same family, since only
    ///   what runs at close changed; otherwise it judges only windows starting after it
    ///   took over;
    /// - the unit's state (a family's open windows, a `devices` rule's last-seen times)
    ///   carries over from the replaced unit of the same key.
    pub(crate) async fn take_over(&mut self, key: &str, previous: Vec<Handover>) {
        let family = self.judges.first().is_some_and(|judge| judge.rule.family.is_some());
        for part in previous {
            // Units on other tables hand nothing over, and their event time is not ours.
            if !part.judges.is_empty() || part.state.is_some() {
                self.last_event_ms = self.last_event_ms.max(part.last_event_ms);
            }
            let same_unit = part.key == key;
            match (part.state, &self.state) {
                (Some(state @ KindState::Window(_)), KindState::Window(_)) if same_unit && family => self.state = state,
                (Some(state @ KindState::Devices(_)), KindState::Devices(_)) => self.state = state,
                _ => {}
            }
            let event_ms = part.last_event_ms.unwrap_or_else(wall_now_ms);
            for mut old in part.judges {
                let Some(judge) = self.judges.iter_mut().find(|j| j.rule.id == old.rule.id) else {
                    retire_judge(&mut old, event_ms).await;
                    continue;
                };
                if old.rule.version == judge.rule.version {
                    *judge = old;
                    continue;
                }
                let old_key_columns = key_names(&old);
                adopt_alerts(judge, old.lifecycle, &old_key_columns, event_ms).await;
                judge.errors += old.errors;
                judge.last_error = old.last_error;
                judge.judge_from = if same_unit && family {
                    old.judge_from
                } else {
                    JudgeFrom::FirstRow
                };
            }
        }
        self.note_state();
    }

    /// Takes back the unit's state from a checkpoint (`saved`: its rules' snapshots). A
    /// rule whose text changed while cityops was down is treated as a hot reload: it takes
    /// over the alerts when it keys them by the same columns (else resolves them) and
    /// judges only windows and sessions that start after its first row. The unit's windows
    /// or sessions come back from a rule whose text did not change; a `devices` rule keeps
    /// its devices either way.
    pub(crate) async fn restore(&mut self, saved: Vec<RuleSnapshot>) {
        // The state to restore, with how early its rule's judging began: from a checkpoint
        // of single rules (families were off), the member that judged from the earliest
        // has every window any member needs.
        let mut kind: Option<(EpochMs, KindSnapshot)> = None;
        for snapshot in saved {
            let Some(judge) = self.judges.iter_mut().find(|j| j.rule.id == snapshot.rule) else {
                continue;
            };
            let unchanged = snapshot.version == judge.rule.version;
            judge.errors = snapshot.errors;
            self.last_event_ms = self.last_event_ms.max(snapshot.last_event_ms);
            let mut old = Lifecycle::new(&judge.rule.id, judge.rule.policy);
            old.restore(snapshot.alerts);
            let event_ms = snapshot.last_event_ms.unwrap_or_else(wall_now_ms);
            adopt_alerts(judge, old, &snapshot.key_columns, event_ms).await;
            if unchanged {
                judge.judge_from = match snapshot.judge_from {
                    JudgeFromSnapshot::Start => JudgeFrom::Start,
                    JudgeFromSnapshot::FirstRow => JudgeFrom::FirstRow,
                    JudgeFromSnapshot::Ts(ts) => JudgeFrom::Ts(ts),
                };
            } else {
                tracing::info!(rule = %snapshot.rule, "the rule changed while cityops was down: it starts with fresh windows");
                judge.judge_from = JudgeFrom::FirstRow;
            }
            let since = match snapshot.judge_from {
                JudgeFromSnapshot::Start => EpochMs::MIN,
                JudgeFromSnapshot::Ts(ts) => ts,
                JudgeFromSnapshot::FirstRow => EpochMs::MAX,
            };
            let earlier = kind.as_ref().is_none_or(|(from, _)| since < *from);
            if earlier && (unchanged || matches!(snapshot.kind, KindSnapshot::Devices(_))) {
                kind = Some((since, snapshot.kind));
            }
        }
        match (&mut self.state, kind.map(|(_, kind)| kind)) {
            (KindState::Window(windows), Some(KindSnapshot::Window(saved))) => windows.restore(saved),
            (KindState::Session(sessions), Some(KindSnapshot::Session(saved))) => sessions.restore(saved),
            (KindState::Devices(devices), Some(KindSnapshot::Devices(saved))) => devices.restore(saved),
            _ => {}
        }
        self.note_state();
    }
}
