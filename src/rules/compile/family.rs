//! Splitting a window rule's plan at its aggregation, so that rules computing the same
//! aggregates share one: the lower part (the leaf up to the aggregation) runs once per open
//! window for every rule of a family; the upper part (HAVING, the level CASE, the
//! projection) runs per rule over the aggregation's result when the window closes. Rules
//! whose lower parts agree exactly (same table, window, lateness, WHERE, fed columns and
//! aggregation) carry the same `family` fingerprint. Threshold variants of one rule, or two
//! rules reading the same averages with different thresholds, are such a family.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::{ExecutionPlan, displayable};

use crate::rules::feed::Feed;
use crate::window::WindowSpec;

/// The part of a split plan that runs per rule over the family's aggregation result.
pub(crate) struct UpperPlan {
    pub(crate) plan: Arc<dyn ExecutionPlan>,
    /// The leaf the aggregation's result is fed through.
    pub(crate) feed: Arc<Feed>,
}

/// A plan split at its aggregation: the lower part (leaf to aggregation) and the upper one.
pub(super) struct Split {
    pub(super) lower: Arc<dyn ExecutionPlan>,
    pub(super) upper: UpperPlan,
}

/// Splits `plan` at its one aggregation. `None` when the plan has no aggregation, several,
/// or reads its leaf from outside the aggregation (nothing to share then: the rule runs
/// whole, in a family of its own).
pub(super) fn split_at_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<Split> {
    let (mut aggregates, mut leaves) = (Vec::new(), 0usize);
    plan.apply(|node| {
        if node.downcast_ref::<AggregateExec>().is_some() {
            aggregates.push(Arc::clone(node));
            // What lies below the topmost aggregation is the lower part.
            return Ok(TreeNodeRecursion::Jump);
        }
        leaves += usize::from(node.downcast_ref::<StreamingTableExec>().is_some());
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    let Ok([lower]) = <[_; 1]>::try_from(aggregates) else {
        return None;
    };
    if leaves > 0 {
        return None;
    }
    let feed = Arc::new(Feed::new(lower.schema()));
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(
        StreamingTableExec::try_new(
            lower.schema(),
            vec![Arc::clone(&feed) as _],
            None,
            Vec::new(),
            false,
            None,
        )
        .ok()?,
    );
    let upper = Arc::clone(plan)
        .transform_down(|node| {
            if Arc::ptr_eq(&node, &lower) {
                Ok(Transformed::new(Arc::clone(&leaf), true, TreeNodeRecursion::Jump))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .ok()?
        .data;
    Some(Split {
        lower,
        upper: UpperPlan { plan: upper, feed },
    })
}

/// What a family's members agree on, hashed: rules with equal fingerprints can share one
/// window router and one aggregation per open window.
pub(super) struct FamilyTraits<'a> {
    pub(super) table: &'a str,
    pub(super) spec: WindowSpec,
    pub(super) lateness_ms: i64,
    pub(super) prefilter: Option<&'a Arc<dyn PhysicalExpr>>,
    pub(super) input_columns: &'a [usize],
    pub(super) lower: &'a Arc<dyn ExecutionPlan>,
}

impl FamilyTraits<'_> {
    /// The family fingerprint: the plan is compared as DataFusion displays it, schema
    /// included, so two aggregations with the same text over the same fed columns match.
    pub(super) fn fingerprint(&self) -> String {
        let mut hasher = std::hash::DefaultHasher::new();
        self.table.hash(&mut hasher);
        format!("{:?}", self.spec).hash(&mut hasher);
        self.lateness_ms.hash(&mut hasher);
        self.prefilter.map(|p| format!("{p:?}")).hash(&mut hasher);
        self.input_columns.hash(&mut hasher);
        let shown = displayable(self.lower.as_ref()).set_show_schema(true);
        shown.indent(true).to_string().hash(&mut hasher);
        // The display names each aggregate by its output column, which leaves out casts in
        // its arguments, FILTER and ORDER BY: their expressions are hashed whole.
        let _ = self.lower.apply(|node| {
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                format!("{:?}", aggregate.aggr_expr()).hash(&mut hasher);
                format!("{:?}", aggregate.filter_expr()).hash(&mut hasher);
                format!("{:?}", aggregate.group_expr()).hash(&mut hasher);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        format!("{}:{:016x}", self.table, hasher.finish())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::EngineConfig;
    use crate::rules::compile::compile;
    use crate::rules::loader::parse_rule;
    use crate::schema::Catalog;

    fn family(sql: &str) -> Option<String> {
        let file = parse_rule(Path::new("rule.sql"), format!("-- level: yellow\n{sql}\n")).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (rule, _) = runtime
            .block_on(compile(&file, &Catalog::builtin(), &EngineConfig::default()))
            .unwrap();
        rule.family
    }

    /// A pressure rule over `aggregate`, with a HAVING threshold and a WHERE and window.
    fn pressure(aggregate: &str, having: &str, kind: &str, window: &str) -> Option<String> {
        family(&format!(
            "SELECT district, device_id, {aggregate} AS v FROM water WHERE kind = '{kind}' \
             GROUP BY tumble(ts, INTERVAL '{window}'), district, device_id HAVING {aggregate} {having}"
        ))
    }

    #[test]
    fn rules_share_a_family_only_when_their_aggregations_agree() {
        let base = pressure("avg(pressure_mpa)", "< 0.2", "pressure", "1 minute");
        assert!(base.is_some());
        assert_eq!(base, pressure("avg(pressure_mpa)", "> 0.5", "pressure", "1 minute"));
        // A cast the plan's display leaves out of the aggregate's name.
        let cast = pressure("avg(CAST(pressure_mpa AS BIGINT))", "< 0.2", "pressure", "1 minute");
        assert!(cast.is_some());
        assert_ne!(base, cast);
        assert_ne!(base, pressure("max(pressure_mpa)", "< 0.2", "pressure", "1 minute"));
        assert_ne!(base, pressure("avg(pressure_mpa)", "< 0.2", "quality", "1 minute"));
        assert_ne!(base, pressure("avg(pressure_mpa)", "< 0.2", "pressure", "5 minutes"));
        // A row rule has no aggregation to share: it runs whole, in its table's row family.
        assert_eq!(
            family("SELECT district, device_id, pressure_mpa FROM water WHERE pressure_mpa < 0.2").as_deref(),
            Some("row rules of water")
        );
    }
}
