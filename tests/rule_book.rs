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
    warnings_with(dir, dead_letters, true)
}

/// The same, with rules sharing what they can (rule families) or not.
fn warnings_with(dir: &Path, dead_letters: &Path, rule_families: bool) -> BTreeMap<String, Vec<Value>> {
    let mut config = Config::default();
    config.rules.dir = dir.to_path_buf();
    config.engine.rule_families = rule_families;
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

/// Every shipped rule's SQL (not the rule tests'), by its path under `queries/`.
fn shipped_rules() -> Vec<(String, String)> {
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut rules = Vec::new();
    for dir in std::fs::read_dir(&queries).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() || dir.ends_with("tests") {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "sql") {
                let stem = file.file_stem().unwrap().to_string_lossy().to_string();
                rules.push((stem, std::fs::read_to_string(&file).unwrap()));
            }
        }
    }
    rules.sort();
    rules
}

/// 200 rules, each shipped rule in 10 variants: run as families they warn exactly as when
/// each aggregates alone (`engine.rule_families = false`, the way every rule ran before
/// families). That the rules really form families is checked on their compiled plans.
#[test]
fn two_hundred_variants_warn_alike_in_families_and_alone() {
    let s = common::Scenario::new();
    let book = s.path("book200");
    std::fs::create_dir_all(&book).unwrap();
    let shipped = shipped_rules();
    assert_eq!(shipped.len(), 20, "the shipped rule book changed");
    let (mut families, mut watches) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let (mut window_rules, mut ids) = (0, Vec::new());
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for (stem, text) in &shipped {
        for k in 0..10 {
            let id = format!("{stem}_v{k}");
            let path = book.join(format!("{id}.sql"));
            std::fs::write(&path, scaled(text, 0.5 + k as f64 * 0.15)).unwrap();
            let file = cityops::parse_rule(&path, std::fs::read_to_string(&path).unwrap()).unwrap();
            let (rule, _) = runtime
                .block_on(cityops::compile(
                    &file,
                    &cityops::Catalog::builtin(),
                    &Default::default(),
                ))
                .unwrap();
            match rule.kind {
                cityops::RuleKind::Window(_) => {
                    window_rules += 1;
                    families.insert(
                        rule.family
                            .clone()
                            .expect("a shipped window rule splits at its aggregation"),
                    );
                }
                cityops::RuleKind::Devices => {
                    watches.insert(rule.family.clone().expect("a devices rule shares its watch"));
                }
                _ => {}
            }
            ids.push(id);
        }
    }
    // Variants differ only in thresholds, and two pairs of shipped rules read the same
    // averages (room temperature high and low, chlorine high and low): 17 shipped window
    // rules make 15 families.
    assert_eq!(window_rules, 170);
    assert_eq!(families.len(), 15, "families of the 170 window rules");
    // The ten variants of `station_silent` watch the heating table, with one watch.
    assert_eq!(watches.len(), 1);

    let shared = warnings_with(&book, &s.path("dead-shared.jsonl"), true);
    let alone = warnings_with(&book, &s.path("dead-alone.jsonl"), false);
    let warned = ids.iter().filter(|id| shared.contains_key(*id)).count();
    assert!(warned >= 40, "only {warned} of the 200 variants warn on the demo");
    for id in &ids {
        assert_eq!(shared.get(id), alone.get(id), "{id} warns differently in its family");
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
