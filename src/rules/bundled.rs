//! The shipped rules (`queries/`), built into the binary so the demo (`cityops run` with no
//! source) runs from any directory, or after `cargo install`: when no rules directory
//! exists where the config points, the demo writes these to a fresh temporary directory and
//! reads them from there.

use std::path::{Path, PathBuf};

/// Every shipped rule: its path under `queries/` and its text.
pub const SHIPPED_RULES: &[(&str, &str)] = &[
    (
        "heating/network_pressure_low.sql",
        include_str!("../../queries/heating/network_pressure_low.sql"),
    ),
    (
        "heating/room_temp_high.sql",
        include_str!("../../queries/heating/room_temp_high.sql"),
    ),
    (
        "heating/room_temp_low.sql",
        include_str!("../../queries/heating/room_temp_low.sql"),
    ),
    (
        "heating/station_silent.sql",
        include_str!("../../queries/heating/station_silent.sql"),
    ),
    (
        "heating/supply_temp_high.sql",
        include_str!("../../queries/heating/supply_temp_high.sql"),
    ),
    (
        "heating/supply_temp_low.sql",
        include_str!("../../queries/heating/supply_temp_low.sql"),
    ),
    (
        "sensor/air_quality_poor.sql",
        include_str!("../../queries/sensor/air_quality_poor.sql"),
    ),
    (
        "sensor/gas_lel_high.sql",
        include_str!("../../queries/sensor/gas_lel_high.sql"),
    ),
    (
        "sensor/manhole_cover_displaced.sql",
        include_str!("../../queries/sensor/manhole_cover_displaced.sql"),
    ),
    (
        "sensor/noise_high.sql",
        include_str!("../../queries/sensor/noise_high.sql"),
    ),
    (
        "sensor/underpass_flooding.sql",
        include_str!("../../queries/sensor/underpass_flooding.sql"),
    ),
    (
        "traffic/arterial_congestion.sql",
        include_str!("../../queries/traffic/arterial_congestion.sql"),
    ),
    (
        "traffic/collector_congestion.sql",
        include_str!("../../queries/traffic/collector_congestion.sql"),
    ),
    (
        "traffic/expressway_congestion.sql",
        include_str!("../../queries/traffic/expressway_congestion.sql"),
    ),
    (
        "water/chlorine_high.sql",
        include_str!("../../queries/water/chlorine_high.sql"),
    ),
    (
        "water/chlorine_low.sql",
        include_str!("../../queries/water/chlorine_low.sql"),
    ),
    (
        "water/ph_out_of_range.sql",
        include_str!("../../queries/water/ph_out_of_range.sql"),
    ),
    (
        "water/pressure_collapse.sql",
        include_str!("../../queries/water/pressure_collapse.sql"),
    ),
    (
        "water/pressure_low.sql",
        include_str!("../../queries/water/pressure_low.sql"),
    ),
    (
        "water/turbidity_high.sql",
        include_str!("../../queries/water/turbidity_high.sql"),
    ),
];

/// Writes the shipped rules under `dir` (created), keeping their subdirectories.
pub(crate) fn write_shipped_rules(dir: &Path) -> std::io::Result<()> {
    for (path, text) in SHIPPED_RULES {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, text)?;
    }
    Ok(())
}

/// A temporary directory holding the shipped rules for one demo run; removed when dropped.
pub struct ShippedRulesDir {
    path: PathBuf,
}

impl ShippedRulesDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ShippedRulesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Writes the shipped rules into a new temporary directory.
pub fn shipped_rules_dir() -> std::io::Result<ShippedRulesDir> {
    let path = std::env::temp_dir().join(format!("cityops-demo-rules-{}", std::process::id()));
    if path.exists() {
        std::fs::remove_dir_all(&path)?;
    }
    let dir = ShippedRulesDir { path };
    write_shipped_rules(&dir.path)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_files(dir: &Path, under: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("queries/ is readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sql_files(&path, under, out);
            } else if path.extension().is_some_and(|e| e == "sql") {
                let relative = path.strip_prefix(under).expect("under queries/");
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_rule_in_queries_is_shipped_in_the_binary() {
        let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
        let mut on_disk = Vec::new();
        sql_files(&queries, &queries, &mut on_disk);
        on_disk.sort();
        let mut shipped: Vec<String> = SHIPPED_RULES.iter().map(|(p, _)| p.to_string()).collect();
        shipped.sort();
        assert_eq!(shipped, on_disk, "add the new rule to SHIPPED_RULES");
    }
}
