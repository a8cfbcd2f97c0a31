//! Which tables a `devices` rule needs to watch. The `devices` table lists the devices of
//! every table, but a rule whose WHERE clause pins `table_name` (`table_name = 'heating'`,
//! `table_name IN ('water', 'heating')`) can only ever judge those tables' devices. Its
//! worker then receives only their batches: the last-seen map holds a third of a city
//! instead of all of it, and the other tables' rows cost it nothing. Results do not
//! change, since a device of another table would fail the clause anyway.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

use crate::schema::{DEVICES, TABLE_NAME};

/// The tables (positions in `names`) whose devices can pass the rule's clause: every table
/// unless the only scan of `devices` sits right under a filter (through aliases) with a
/// top-level `table_name = '…'` or `table_name IN (…)` conjunct.
pub(super) fn watched_tables(plan: &LogicalPlan, names: &[String]) -> Vec<usize> {
    let every = || (0..names.len()).collect();
    let mut scans = 0;
    let mut pinned: Option<Vec<String>> = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Filter(filter) = node
            && scans_devices(&filter.input)
        {
            pinned = split_conjunction(&filter.predicate).into_iter().find_map(pinned_names);
        }
        if matches!(node, LogicalPlan::TableScan(scan) if scan.table_name.table() == DEVICES) {
            scans += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match pinned {
        Some(pinned) if scans == 1 => (0..names.len())
            .filter(|&i| pinned.iter().any(|p| *p == names[i]))
            .collect(),
        _ => every(),
    }
}

/// Whether `plan` is the scan of `devices`, possibly under aliases.
fn scans_devices(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => scan.table_name.table() == DEVICES,
        LogicalPlan::SubqueryAlias(alias) => scans_devices(&alias.input),
        _ => false,
    }
}

/// The table names one conjunct pins `table_name` to, if it does.
fn pinned_names(conjunct: &Expr) -> Option<Vec<String>> {
    match conjunct {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (is_table_name(left), is_table_name(right)) {
            (true, false) => text(right).map(|t| vec![t]),
            (false, true) => text(left).map(|t| vec![t]),
            _ => None,
        },
        Expr::InList(list) if !list.negated && is_table_name(&list.expr) => list.list.iter().map(text).collect(),
        _ => None,
    }
}

fn is_table_name(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == TABLE_NAME)
}

fn text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Literal(value, _) => value.try_as_str().flatten().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::schema::devices_schema;

    fn names() -> Vec<String> {
        ["water", "heating", "sensor", "traffic"].map(String::from).to_vec()
    }

    async fn watched(sql: &str) -> Vec<usize> {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(devices_schema(), vec![vec![]]).unwrap();
        ctx.register_table(DEVICES, Arc::new(table)).unwrap();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        watched_tables(&plan, &names())
    }

    #[tokio::test]
    async fn a_pinned_table_name_narrows_the_watch() {
        let sql = "SELECT device_id FROM devices WHERE table_name = 'heating' AND silent_s >= 600";
        assert_eq!(watched(sql).await, vec![1]);
        let sql = "SELECT device_id FROM devices d WHERE silent_s >= 600 AND 'sensor' = d.table_name";
        assert_eq!(watched(sql).await, vec![2]);
        let sql = "SELECT device_id FROM devices WHERE table_name IN ('traffic', 'water') AND silent_s > 60";
        assert_eq!(watched(sql).await, vec![0, 3]);
    }

    #[tokio::test]
    async fn an_unknown_table_name_watches_nothing() {
        assert_eq!(
            watched("SELECT * FROM devices WHERE table_name = 'gas'").await,
            Vec::<usize>::new()
        );
    }

    #[tokio::test]
    async fn anything_looser_watches_every_table() {
        let every = vec![0, 1, 2, 3];
        for sql in [
            "SELECT * FROM devices WHERE silent_s >= 600",
            "SELECT * FROM devices WHERE table_name = 'heating' OR silent_s > 3600",
            "SELECT * FROM devices WHERE table_name <> 'heating'",
            "SELECT * FROM devices WHERE table_name NOT IN ('heating')",
            "SELECT * FROM devices WHERE lower(table_name) = 'heating'",
            "SELECT * FROM (SELECT * FROM devices WHERE table_name = 'water') \
             UNION ALL SELECT * FROM devices WHERE table_name = 'heating'",
        ] {
            assert_eq!(watched(sql).await, every, "{sql}");
        }
    }
}
