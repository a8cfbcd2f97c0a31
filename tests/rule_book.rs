//! A city's rule book: each shipped rule in threshold variants, as districts tune their own
//! (what `benches/rule_variants.py` writes for the 200-rule benchmark). Whatever cityops
//! shares between rules to run many of them (issue 20: rule families), each variant must
//! give exactly the warnings it gives when it runs alone.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cityops::Config;
use cityops::pipeline::Source;
use serde_json::Value;

/// Shipped rules of each kind: a window rule per table and a row rule.
const SHIPPED: [&str; 4] = [
    "water/pressure_low.sql",
    "heating/room_temp_low.sql",
    "sensor/noise_high.sql",
    "sensor/gas_lel_high.sql",
];
const VARIANTS: usize = 8;

/// Scales every threshold of the SQL (a number right after `<`, `<=`, `>`, `>=`, `=` or
/// `<>`, outside quotes and header comments) by `factor`.
fn scaled(text: &str, factor: f64) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("--") {
            out.push_str(line);
        } else {
            let mut quoted = false;
            let mut after_comparison = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\'' {
                    quoted = !quoted;
                }
                if !quoted && after_comparison && c.is_ascii_digit() {
                    let mut number = c.to_string();
                    while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit() || **d == '.') {
                        number.push(d);
                        chars.next();
                    }
                    let value: f64 = number.parse().unwrap();
                    out.push_str(&format!("{}", (value * factor * 1e6).round() / 1e6));
                    after_comparison = false;
                    continue;
                }
                out.push(c);
                if !quoted && matches!(c, '<' | '>' | '=') {
                    after_comparison = true;
                } else if !c.is_whitespace() {
                    after_comparison = false;
                }
            }
        }
        out.push('\n');
    }
    out
}

/// The warnings of every rule in `dir` over the demo city, by rule, in emission order.
fn warnings_by_rule(dir: &Path, dead_letters: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut config = Config::default();
    config.rules.dir = dir.to_path_buf();
    let outcome = common::run_with(config, Source::Demo, dead_letters);
    let mut by_rule: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for warning in &outcome.warnings {
        by_rule
            .entry(warning.rule.clone())
            .or_default()
            .push(common::stable(warning));
    }
    by_rule
}

#[test]
fn each_threshold_variant_gives_the_warnings_it_gives_alone() {
    let s = common::Scenario::new();
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let book = s.path("book");
    let mut variants = Vec::new();
    for shipped in SHIPPED {
        let text = std::fs::read_to_string(queries.join(shipped)).unwrap();
        let stem = Path::new(shipped).file_stem().unwrap().to_string_lossy().to_string();
        for k in 0..VARIANTS {
            let id = format!("{stem}_v{k}");
            let sql = scaled(&text, 0.5 + k as f64 * 0.15);
            std::fs::create_dir_all(&book).unwrap();
            std::fs::write(book.join(format!("{id}.sql")), &sql).unwrap();
            variants.push((id, sql));
        }
    }
    let together = warnings_by_rule(&book, &s.path("dead-together.jsonl"));
    // The variants really differ: not all of a rule's variants warn alike (in count, level
    // or key), and some warn at all.
    for shipped in SHIPPED {
        let stem = Path::new(shipped).file_stem().unwrap().to_string_lossy().to_string();
        let outcomes: Vec<Vec<String>> = (0..VARIANTS)
            .map(|k| {
                together
                    .get(&format!("{stem}_v{k}"))
                    .into_iter()
                    .flatten()
                    .map(|w| format!("{} {} {}", w["status"], w["level"], w["key"]))
                    .collect()
            })
            .collect();
        assert!(outcomes.iter().any(|o| !o.is_empty()), "{stem}: no variant warns");
        assert!(
            outcomes.windows(2).any(|w| w[0] != w[1]),
            "{stem}: every variant warns alike"
        );
    }
    for (id, sql) in &variants {
        let alone = s.path(&format!("alone-{id}"));
        std::fs::create_dir_all(&alone).unwrap();
        std::fs::write(alone.join(format!("{id}.sql")), sql).unwrap();
        let by_itself = warnings_by_rule(&alone, &s.path("dead-alone.jsonl"));
        assert_eq!(
            together.get(id),
            by_itself.get(id),
            "{id} warns differently beside the other variants"
        );
    }
}

#[test]
fn thresholds_are_scaled_and_nothing_else() {
    let sql = "-- level: red 5\nSELECT round(avg(v), 1) AS a FROM water\nWHERE kind = 'x' AND v >= 25\nGROUP BY tumble(ts, INTERVAL '5 minutes')\nHAVING avg(v) < 0.7 * max(v) AND count(*) <> 2\n";
    assert_eq!(
        scaled(sql, 2.0),
        "-- level: red 5\nSELECT round(avg(v), 1) AS a FROM water\nWHERE kind = 'x' AND v >= 50\nGROUP BY tumble(ts, INTERVAL '5 minutes')\nHAVING avg(v) < 1.4 * max(v) AND count(*) <> 4\n"
    );
}
