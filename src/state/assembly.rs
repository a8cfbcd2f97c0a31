//! Putting a checkpoint together from its rules' snapshots: each rule task sends its own at
//! a cut, and the checkpoint is whole once every rule the cut names has sent one. The sink
//! thread of a run with state (`alert::durable`) and a cluster partition's forwarding sink
//! (`cluster::forward`) both assemble this way.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::checkpoint::Checkpoint;
use super::snapshot::RuleSnapshot;
use crate::flow::Cut;
use crate::time::wall_now_ms;

/// A checkpoint whose rule snapshots are still coming in.
struct Assembly {
    cut: Cut,
    expected: Arc<[String]>,
    rules: Vec<RuleSnapshot>,
}

/// A checkpoint that will never be whole: some rule sent no snapshot (its task died).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Abandoned {
    pub checkpoint: u64,
    pub missing: Vec<String>,
}

/// What one snapshot completed, and what it showed can never complete.
#[derive(Debug, Default)]
pub(crate) struct Added {
    /// Every rule's state at one cut, sorted by rule.
    pub whole: Option<(Cut, Vec<RuleSnapshot>)>,
    pub abandoned: Vec<Abandoned>,
}

/// The checkpoints being assembled, by number.
#[derive(Default)]
pub(crate) struct Assembler {
    assembling: BTreeMap<u64, Assembly>,
}

impl Assembler {
    /// Takes one rule's snapshot at `cut`; `expected` names every rule the cut waits for.
    pub(crate) fn add(&mut self, cut: Cut, expected: &Arc<[String]>, snapshot: RuleSnapshot) -> Added {
        let mut added = Added::default();
        // A checkpoint still missing snapshots three cuts later never completes.
        let stale: Vec<u64> = self
            .assembling
            .keys()
            .copied()
            .filter(|number| number + 3 <= cut.checkpoint)
            .collect();
        for number in stale {
            if let Some(dropped) = self.assembling.remove(&number) {
                added.abandoned.push(Abandoned {
                    checkpoint: number,
                    missing: dropped
                        .expected
                        .iter()
                        .filter(|id| !dropped.rules.iter().any(|r| &r.rule == *id))
                        .cloned()
                        .collect(),
                });
            }
        }
        let assembly = self.assembling.entry(cut.checkpoint).or_insert_with(|| Assembly {
            cut,
            expected: Arc::clone(expected),
            rules: Vec::new(),
        });
        assembly.rules.push(snapshot);
        let complete = assembly
            .expected
            .iter()
            .all(|id| assembly.rules.iter().any(|r| &r.rule == id));
        if complete && let Some(assembly) = self.assembling.remove(&cut.checkpoint) {
            // An older checkpoint still missing snapshots never completes (a rule went away).
            self.assembling.retain(|number, _| *number > cut.checkpoint);
            let mut rules = assembly.rules;
            rules.sort_by(|a, b| a.rule.cmp(&b.rule));
            added.whole = Some((assembly.cut, rules));
        }
        added
    }
}

/// The checkpoint of every rule's state at `cut`, taken now.
pub(crate) fn checkpoint_at(cut: Cut, rules: Vec<RuleSnapshot>) -> Checkpoint {
    Checkpoint {
        number: cut.checkpoint,
        covers_seq: cut.covers_seq,
        replay_from: Checkpoint::replay_from(cut.covers_seq, &rules),
        messages: cut.messages,
        taken_ms: wall_now_ms(),
        next_tick_ms: cut.next_tick_ms,
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::snapshot::{JudgeFromSnapshot, KindSnapshot};

    fn snapshot(rule: &str) -> RuleSnapshot {
        RuleSnapshot {
            rule: rule.to_string(),
            version: "v1".to_string(),
            table: "water".to_string(),
            description: String::new(),
            key_columns: Vec::new(),
            errors: 0,
            last_event_ms: None,
            judge_from: JudgeFromSnapshot::Start,
            alerts: Vec::new(),
            last_arrivals: Vec::new(),
            kind: KindSnapshot::Row,
        }
    }

    fn cut(checkpoint: u64) -> Cut {
        Cut {
            checkpoint,
            covers_seq: checkpoint * 10,
            messages: 0,
            next_tick_ms: Some(1_000),
        }
    }

    #[test]
    fn a_checkpoint_is_whole_once_every_named_rule_sent_its_state_and_a_stuck_one_is_abandoned() {
        let rules: Arc<[String]> = vec!["b".to_string(), "a".to_string()].into();
        let mut assembler = Assembler::default();
        // Checkpoint 1 never gets rule a's snapshot.
        assert!(assembler.add(cut(1), &rules, snapshot("b")).whole.is_none());
        assert!(assembler.add(cut(2), &rules, snapshot("b")).whole.is_none());
        let (at, whole) = assembler.add(cut(2), &rules, snapshot("a")).whole.expect("whole");
        assert_eq!(at, cut(2));
        assert_eq!(whole.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // Completing 2 dropped 1 silently; a cut three later names what a stuck one lacked.
        assert!(assembler.add(cut(3), &rules, snapshot("b")).abandoned.is_empty());
        let added = assembler.add(cut(6), &rules, snapshot("b"));
        assert_eq!(
            added.abandoned,
            [Abandoned {
                checkpoint: 3,
                missing: vec!["a".to_string()]
            }]
        );
        let checkpoint = checkpoint_at(cut(2), whole);
        assert_eq!(
            (
                checkpoint.number,
                checkpoint.covers_seq,
                checkpoint.replay_from,
                checkpoint.next_tick_ms
            ),
            (2, 20, 21, Some(1_000))
        );
    }
}
