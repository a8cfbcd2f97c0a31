//! Reshaping a rule's planned leaf for the worker: the WHERE filter that reads the leaf
//! comes out of the plan (the worker applies it per batch, `CompiledRule::passing`, first
//! asking its `Gate` whether the batch can hold a passing row at all), and the leaf is
//! narrowed to the columns the plan reads (`CompiledRule::input_of` feeds just those).

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, InListExpr, Literal};
use datafusion::physical_expr::utils::reassign_expr_columns;
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::streaming::StreamingTableExec;

use super::feed::Feed;

/// Takes out of the plan its one filter that reads the leaf directly, when the worker can
/// apply it instead: returns the plan and that filter's predicate, rebound to the table's
/// columns. A projection the filter carried moves into the leaf. The plan is kept whole
/// when there is no such filter (or several), when its predicate names a column the engine
/// adds (`window_start`, …), or when it is volatile (`random()`).
pub(super) fn without_leaf_filter(
    plan: Arc<dyn ExecutionPlan>,
    table: &Schema,
) -> (Arc<dyn ExecutionPlan>, Option<Arc<dyn PhysicalExpr>>) {
    let mut found = Vec::new();
    let _ = plan.apply(|node| {
        if let Some(filter) = node.downcast_ref::<FilterExec>()
            && filter.input().children().is_empty()
        {
            found.push(Arc::clone(filter.predicate()));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let Ok([predicate]) = <[_; 1]>::try_from(found) else {
        return (plan, None);
    };
    let Some(predicate) = reassign_expr_columns(predicate, table).ok().filter(|p| !is_volatile(p)) else {
        return (plan, None);
    };
    let without = Arc::clone(&plan).transform_up(|node| {
        let Some(filter) = node.downcast_ref::<FilterExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(leaf) = filter.input().downcast_ref::<StreamingTableExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(projection) = filter.projection() else {
            return Ok(Transformed::yes(Arc::clone(filter.input())));
        };
        let columns: Vec<usize> = match leaf.projection() {
            Some(read) => projection.iter().map(|&i| read[i]).collect(),
            None => projection.to_vec(),
        };
        if leaf.projected_output_ordering().into_iter().next().is_some() {
            return Err(DataFusionError::NotImplemented("an ordered leaf".to_string()));
        }
        let leaf = StreamingTableExec::try_new(
            Arc::clone(leaf.partition_schema()),
            leaf.partitions().clone(),
            Some(&columns),
            Vec::new(),
            leaf.is_infinite(),
            leaf.limit(),
        )?;
        Ok(Transformed::yes(Arc::new(leaf) as Arc<dyn ExecutionPlan>))
    });
    match without {
        Ok(without) => (without.data, Some(predicate)),
        Err(_) => (plan, None),
    }
}

/// A narrowed plan: the plan, its feed, the feed's schema and, per fed column, its position
/// in the full schema.
pub(super) type Narrowed = (Arc<dyn ExecutionPlan>, Arc<Feed>, SchemaRef, Vec<usize>);

/// Narrows the plan's leaf to the columns the plan reads: a leaf fed the full schema and
/// projecting becomes one fed just those columns, so the worker slices no column the rule
/// does not use. Returns the plan, its feed, the feed's schema and, per fed column, its
/// position in the full schema.
pub(super) fn narrow_leaf(
    plan: Arc<dyn ExecutionPlan>,
    feed: Arc<Feed>,
    full: SchemaRef,
) -> Result<Narrowed, DataFusionError> {
    let all = (0..full.fields().len()).collect::<Vec<_>>();
    let mut projections = Vec::new();
    plan.apply(|node| {
        if let Some(leaf) = node.downcast_ref::<StreamingTableExec>() {
            projections.push(leaf.projection().as_deref().map(<[usize]>::to_vec));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let columns = match projections.as_slice() {
        [Some(columns)] if *columns != all => columns.clone(),
        _ => return Ok((plan, feed, full, all)),
    };
    let narrow = Arc::new(full.project(&columns)?);
    let narrow_feed = Arc::new(Feed::new(Arc::clone(&narrow)));
    let plan = plan
        .transform_up(|node| match node.downcast_ref::<StreamingTableExec>() {
            Some(leaf) => {
                let leaf = StreamingTableExec::try_new(
                    Arc::clone(&narrow),
                    vec![Arc::clone(&narrow_feed) as _],
                    None,
                    leaf.projected_output_ordering(),
                    leaf.is_infinite(),
                    leaf.limit(),
                )?;
                Ok(Transformed::yes(Arc::new(leaf) as Arc<dyn ExecutionPlan>))
            }
            None => Ok(Transformed::no(node)),
        })?
        .data;
    Ok((plan, narrow_feed, narrow, columns))
}

/// A value condition a rule's WHERE clause puts on one text column of its table: a row can
/// pass only when the column holds one of `values` (`kind = 'room'`, `road_class IN
/// ('collector', 'local')`, either side of an AND). A batch whose column holds none of them
/// has no passing row, which the worker learns from the batch's distinct values (worked out
/// once per batch for every rule) without evaluating the clause.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gate {
    /// The column's position in the table.
    pub(crate) column: usize,
    pub(crate) values: Vec<String>,
}

/// The gate of a WHERE clause over the table's columns, when it has one.
pub(super) fn gate_of(predicate: &Arc<dyn PhysicalExpr>) -> Option<Gate> {
    if let Some(binary) = predicate.downcast_ref::<BinaryExpr>() {
        return match binary.op() {
            Operator::And => gate_of(binary.left()).or_else(|| gate_of(binary.right())),
            // DataFusion writes a short IN list as ORs of equalities.
            Operator::Or => {
                let (mut left, right) = (gate_of(binary.left())?, gate_of(binary.right())?);
                (left.column == right.column).then(|| {
                    left.values.extend(right.values);
                    left
                })
            }
            Operator::Eq => {
                let (column, value) = match (column_of(binary.left()), text_of(binary.right())) {
                    (Some(column), Some(value)) => (column, value),
                    _ => (column_of(binary.right())?, text_of(binary.left())?),
                };
                Some(Gate {
                    column,
                    values: vec![value],
                })
            }
            _ => None,
        };
    }
    let list = predicate.downcast_ref::<InListExpr>().filter(|list| !list.negated())?;
    Some(Gate {
        column: column_of(list.expr())?,
        values: list.list().iter().map(text_of).collect::<Option<_>>()?,
    })
}

fn column_of(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    expr.downcast_ref::<Column>().map(Column::index)
}

fn text_of(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    match expr.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text)) | ScalarValue::Utf8View(Some(text)) => {
            Some(text.clone())
        }
        _ => None,
    }
}
