//! The tables rule authors query: their names, columns and Arrow schemas, defined once.
//! Every other stage refers to these definitions; a city adds columns or whole tables in
//! `cityops.toml` (see `config::TableConfig`) without recompiling.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

/// Event time column, `Timestamp(Millisecond, "UTC")`, present in every table.
pub(crate) const TS: &str = "ts";
/// Device identifier column, present in every table.
pub(crate) const DEVICE_ID: &str = "device_id";
/// District column, present in every table.
pub(crate) const DISTRICT: &str = "district";
/// Window bounds a window rule may select; added to the rule's input by the engine.
pub(crate) const WINDOW_START: &str = "window_start";
/// See [`WINDOW_START`].
pub(crate) const WINDOW_END: &str = "window_end";
/// Hidden input row index that lets a row rule tell breaching rows from clean ones.
pub(crate) const ROW_INDEX: &str = "__row";
/// The engine-kept table of devices and when each was last seen (silence rules).
pub(crate) const DEVICES: &str = "devices";
/// `devices` columns beyond `device_id` and `district`.
pub(crate) const TABLE_NAME: &str = "table_name";
pub(crate) const LAST_SEEN: &str = "last_seen";
/// The evaluation time of a `devices` snapshot.
pub(crate) const NOW: &str = "now";
/// Seconds from `last_seen` to `now`.
pub(crate) const SILENT_S: &str = "silent_s";
/// Timezone of every timestamp column.
pub(crate) const UTC: &str = "UTC";

/// The type of a measurement or attribute column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Nullable Float64; units belong in the column name (`pressure_mpa`).
    Float,
    /// Nullable Utf8.
    String,
}

impl ColumnType {
    fn arrow(self) -> DataType {
        match self {
            ColumnType::Float => DataType::Float64,
            ColumnType::String => DataType::Utf8,
        }
    }
}

/// A column beyond `ts`, `device_id` and `district`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub kind: ColumnType,
}

/// One table: its name, its payload columns and the Arrow schema of its batches.
#[derive(Debug)]
pub struct TableDef {
    pub name: String,
    /// Columns after the three common ones, in schema order.
    pub columns: Vec<ColumnDef>,
    /// `ts`, `device_id`, `district`, then `columns`.
    pub schema: SchemaRef,
}

impl TableDef {
    fn new(name: &str, columns: Vec<ColumnDef>) -> Self {
        let mut fields = vec![
            Field::new(TS, timestamp_type(), false),
            Field::new(DEVICE_ID, DataType::Utf8, false),
            Field::new(DISTRICT, DataType::Utf8, false),
        ];
        fields.extend(columns.iter().map(|c| Field::new(&c.name, c.kind.arrow(), true)));
        TableDef {
            name: name.to_string(),
            columns,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// Index of a column in [`TableDef::schema`].
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.schema.index_of(name).ok()
    }
}

/// `Timestamp(Millisecond, "UTC")`, the type of `ts`, `window_start` and `window_end`.
pub(crate) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

/// The schema of the `devices` table: one row per (table, device) ever seen.
pub(crate) fn devices_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(TABLE_NAME, DataType::Utf8, false),
        Field::new(DEVICE_ID, DataType::Utf8, false),
        Field::new(DISTRICT, DataType::Utf8, false),
        Field::new(LAST_SEEN, timestamp_type(), false),
        Field::new(NOW, timestamp_type(), false),
        Field::new(SILENT_S, DataType::Float64, false),
    ]))
}

/// The built-in tables of DESIGN.md with their default columns.
fn builtin_tables() -> Vec<(&'static str, Vec<(&'static str, ColumnType)>)> {
    use ColumnType::{Float as F, String as S};
    vec![
        (
            "sensor",
            vec![("kind", S), ("value", F), ("unit", S), ("lat", F), ("lon", F)],
        ),
        (
            "traffic",
            vec![
                ("road_class", S),
                ("speed_kmh", F),
                ("volume_vph", F),
                ("occupancy_pct", F),
                ("travel_time_s", F),
            ],
        ),
        (
            "heating",
            vec![
                ("kind", S),
                ("supply_temp_c", F),
                ("return_temp_c", F),
                ("supply_pressure_mpa", F),
                ("return_pressure_mpa", F),
                ("flow_m3h", F),
                ("room_temp_c", F),
                ("outdoor_temp_c", F),
            ],
        ),
        (
            "water",
            vec![
                ("kind", S),
                ("pressure_mpa", F),
                ("flow_m3h", F),
                ("turbidity_ntu", F),
                ("chlorine_mg_l", F),
                ("ph", F),
            ],
        ),
    ]
}

/// All tables of this deployment: the built-ins plus what the config adds.
#[derive(Debug, Clone)]
pub struct Catalog {
    tables: Vec<Arc<TableDef>>,
}

impl Catalog {
    /// The built-in tables, extended by `extra`: for a known table its columns are appended,
    /// for a new name a new table is made. Problems are returned all at once.
    pub fn new(extra: &BTreeMap<String, BTreeMap<String, ColumnType>>) -> Result<Self, Vec<String>> {
        let mut defs: Vec<(String, Vec<ColumnDef>)> = builtin_tables()
            .into_iter()
            .map(|(name, cols)| {
                let cols = cols
                    .into_iter()
                    .map(|(n, kind)| ColumnDef {
                        name: n.to_string(),
                        kind,
                    })
                    .collect();
                (name.to_string(), cols)
            })
            .collect();
        let mut problems = Vec::new();
        for (table, columns) in extra {
            if !is_identifier(table) || table == DEVICES {
                problems.push(format!("table name `{table}` must be lower-case letters, digits and _"));
                continue;
            }
            let index = match defs.iter().position(|(n, _)| n == table) {
                Some(i) => i,
                None => {
                    defs.push((table.clone(), Vec::new()));
                    defs.len() - 1
                }
            };
            for (name, kind) in columns {
                let reserved = [TS, DEVICE_ID, DISTRICT, WINDOW_START, WINDOW_END, ROW_INDEX];
                if !is_identifier(name) || reserved.contains(&name.as_str()) {
                    problems.push(format!("table `{table}`: `{name}` cannot be a column name"));
                } else if defs[index].1.iter().any(|c| &c.name == name) {
                    problems.push(format!("table `{table}` already has a column `{name}`"));
                } else {
                    defs[index].1.push(ColumnDef {
                        name: name.clone(),
                        kind: *kind,
                    });
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let tables = defs
            .into_iter()
            .map(|(name, cols)| Arc::new(TableDef::new(&name, cols)))
            .collect();
        Ok(Catalog { tables })
    }

    /// The built-in tables only.
    pub fn builtin() -> Self {
        match Self::new(&BTreeMap::new()) {
            Ok(catalog) => catalog,
            Err(problems) => unreachable!("built-in tables are valid: {problems:?}"),
        }
    }

    /// Tables in a stable order; a table's position is its id throughout the pipeline.
    pub fn tables(&self) -> &[Arc<TableDef>] {
        &self.tables
    }

    /// Position of a table by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index_of_bytes(name.as_bytes())
    }

    /// The index of a table by its name's bytes (a topic segment not yet checked as UTF-8).
    pub fn index_of_bytes(&self, name: &[u8]) -> Option<usize> {
        self.tables.iter().position(|t| t.name.as_bytes() == name)
    }

    /// A table by name.
    pub fn get(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.tables.iter().find(|t| t.name == name)
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tables_have_the_design_columns() {
        let catalog = Catalog::builtin();
        let names: Vec<_> = catalog.tables().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["sensor", "traffic", "heating", "water"]);
        let water = catalog.get("water").map(|t| t.schema.fields().len());
        assert_eq!(water, Some(9));
    }

    #[test]
    fn config_adds_columns_and_tables() {
        let mut extra = BTreeMap::new();
        extra.insert(
            "water".to_string(),
            BTreeMap::from([("nitrate_mg_l".to_string(), ColumnType::Float)]),
        );
        extra.insert(
            "elevator".to_string(),
            BTreeMap::from([("load_kg".to_string(), ColumnType::Float)]),
        );
        let catalog = Catalog::new(&extra).expect("valid extension");
        assert!(
            catalog
                .get("water")
                .and_then(|t| t.column_index("nitrate_mg_l"))
                .is_some()
        );
        assert_eq!(catalog.index_of("elevator"), Some(4));
    }

    #[test]
    fn config_cannot_redefine_reserved_columns() {
        let extra = BTreeMap::from([(
            "water".to_string(),
            BTreeMap::from([("ts".to_string(), ColumnType::Float)]),
        )]);
        assert_eq!(Catalog::new(&extra).map(|_| ()).unwrap_err().len(), 1);
    }
}
