//! The rule's alert lifecycle policy, read from its header: `-- for:` (how long a breach
//! must last before the alert fires: breaching windows for window, session and `devices`
//! rules, a duration for row rules) and `-- resolve:` (how many clean steps resolve it).

use super::RuleKind;
use crate::alert::lifecycle::{FireAfter, Policy};
use crate::rules::loader::RuleFile;
use crate::rules::problem::Problem;
use crate::time::parse_duration_ms;

/// The lifecycle policy of a rule of `kind`; a `for` that does not fit the kind is a problem
/// at the header line.
pub(super) fn lifecycle_policy(rule: &RuleFile, kind: RuleKind) -> Result<Policy, Vec<Problem>> {
    let resolve_after = rule.header.resolve;
    let fire_after = match (&rule.header.fire_for, kind) {
        (None, RuleKind::Window(_) | RuleKind::Session { .. } | RuleKind::Devices) => FireAfter::Windows(1),
        (None, RuleKind::Row) => FireAfter::Duration(0),
        (Some(f), RuleKind::Window(_) | RuleKind::Session { .. } | RuleKind::Devices) => match f.text.parse::<u32>() {
            Ok(n) if n >= 1 => FireAfter::Windows(n),
            _ => {
                return Err(vec![Problem::error(
                    &rule.path,
                    f.line,
                    f.col,
                    format!(
                        "`for` of a window rule counts breaching windows: a whole number of at least 1, got `{}`",
                        f.text
                    ),
                )]);
            }
        },
        (Some(f), RuleKind::Row) => match (f.text.as_str(), parse_duration_ms(&f.text)) {
            ("0", _) => FireAfter::Duration(0),
            (_, Ok(ms)) => FireAfter::Duration(ms),
            (_, Err(e)) => {
                return Err(vec![Problem::error(
                    &rule.path,
                    f.line,
                    f.col,
                    format!("`for` of a row rule is a duration: {e}"),
                )]);
            }
        },
    };
    Ok(Policy {
        fire_after,
        resolve_after,
    })
}
