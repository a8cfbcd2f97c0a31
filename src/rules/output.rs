//! Arrow rows → the JSON parts of an alert: key, level, values, and whole input rows for
//! late dead letters. Only result rows and rows of keys with live alerts go through here.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

use crate::alert::lifecycle::AlertKey;
use crate::level::Level;
use crate::schema::{ROW_INDEX, WINDOW_END, WINDOW_START};
use crate::time::format_ms;

/// One cell as JSON: numbers stay numbers, timestamps become RFC 3339 text.
pub(crate) fn json_value(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let float = |f: f64| Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null);
    match array.data_type() {
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Timestamp(unit, _) => {
            let ms = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .value(row)
                    .saturating_mul(1_000),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row) / 1_000,
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row) / 1_000_000,
            };
            Value::String(format_ms(ms))
        }
        _ => match ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()) {
            Ok(formatter) => Value::String(formatter.value(row).to_string()),
            Err(_) => Value::Null,
        },
    }
}

/// The alert key of a row from the given columns.
pub(crate) fn key_of(batch: &RecordBatch, row: usize, columns: &[(String, usize)]) -> AlertKey {
    AlertKey::new(
        columns
            .iter()
            .map(|(name, i)| (name.clone(), json_value(batch.column(*i), row)))
            .collect(),
    )
}

/// The named columns of a row as a JSON object.
pub(crate) fn values_of(batch: &RecordBatch, row: usize, columns: &[(String, usize)]) -> Map<String, Value> {
    columns
        .iter()
        .map(|(name, i)| (name.clone(), json_value(batch.column(*i), row)))
        .collect()
}

/// The row's level: its `level` column when the rule has one and it is set, else `default`.
pub(crate) fn level_of(
    batch: &RecordBatch,
    row: usize,
    column: Option<usize>,
    default: Level,
) -> Result<Level, String> {
    match column.map(|i| json_value(batch.column(i), row)) {
        Some(Value::String(text)) => text.parse(),
        _ => Ok(default),
    }
}

/// A whole result row as JSON (the hidden row index left out), for captured results.
pub(crate) fn result_json(batch: &RecordBatch, row: usize) -> Map<String, Value> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() != ROW_INDEX)
        .map(|(i, f)| (f.name().clone(), json_value(batch.column(i), row)))
        .collect()
}

/// A whole input row as JSON (engine columns left out), for dead letters.
pub(crate) fn row_json(batch: &RecordBatch, row: usize) -> Value {
    let schema = batch.schema();
    let fields = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| ![WINDOW_START, WINDOW_END, ROW_INDEX].contains(&f.name().as_str()))
        .map(|(i, f)| (f.name().clone(), json_value(batch.column(i), row)))
        .filter(|(_, v)| !v.is_null())
        .collect();
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn cells_become_json_of_the_right_kind() {
        let schema = Schema::new(vec![
            Field::new("ts", crate::schema::timestamp_type(), false),
            Field::new("device_id", DataType::Utf8, false),
            Field::new("v", DataType::Float64, true),
            Field::new("level", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![1_768_418_100_000]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec!["wp-03"])),
                Arc::new(Float64Array::from(vec![None])),
                Arc::new(StringArray::from(vec![Some("orange")])),
            ],
        )
        .expect("valid batch");
        assert_eq!(json_value(batch.column(0), 0), Value::from("2026-01-14T19:15:00.000Z"));
        let key = key_of(&batch, 0, &[("device_id".to_string(), 1)]);
        assert_eq!(key.id, "wp-03");
        assert_eq!(level_of(&batch, 0, Some(3), Level::Blue), Ok(Level::Orange));
        assert_eq!(level_of(&batch, 0, None, Level::Blue), Ok(Level::Blue));
        assert_eq!(
            row_json(&batch, 0),
            serde_json::json!({"ts": "2026-01-14T19:15:00.000Z", "device_id": "wp-03", "level": "orange"})
        );
    }
}
