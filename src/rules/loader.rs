//! Reading rule files: every `*.sql` under the rules directory, the file stem as rule id,
//! and the `-- key: value` header (description, level, for, key, resolve, lateness).
//! Unknown header keys are errors. Interpretation that needs the SQL (is `for` a window
//! count or a duration?) is left to `compile`.

use std::path::{Path, PathBuf};

use super::problem::Problem;
use crate::level::Level;
use crate::time::parse_duration_ms;

/// A header value with the line it came from (for error positions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub text: String,
    pub line: u64,
    pub col: u64,
}

/// The parsed header of a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHeader {
    pub description: String,
    pub level: Level,
    /// Raw `for`: a window count for window rules, a duration for row rules.
    pub fire_for: Option<Located>,
    /// Alert key columns, overriding the GROUP BY columns.
    pub key: Option<Vec<String>>,
    pub resolve: u32,
    pub lateness_ms: Option<i64>,
}

/// One rule file, read and with its header parsed.
#[derive(Debug, Clone)]
pub struct RuleFile {
    /// The file stem.
    pub id: String,
    pub path: PathBuf,
    /// The whole file; the SQL parser skips the header comments, so positions match the file.
    pub text: String,
    pub header: RuleHeader,
}

impl RuleFile {
    /// A short hash (FNV-1a) of the whole file: tells versions of a rule apart in logs.
    pub fn version(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", hash >> 32)
    }
}

/// Reads every rule under `dir`, sorted by path. Returns the rules that could be read and
/// every problem found (unreadable files, bad headers, duplicate ids).
pub(crate) fn load_dir(dir: &Path) -> (Vec<RuleFile>, Vec<Problem>) {
    let mut paths = Vec::new();
    let mut problems = Vec::new();
    collect_sql_files(dir, &mut paths, &mut problems);
    paths.sort();
    let mut rules: Vec<RuleFile> = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::error(&path, 1, 1, format!("cannot read rule: {e}")));
                continue;
            }
        };
        match parse_rule(&path, text) {
            Ok(rule) => {
                if let Some(other) = rules.iter().find(|r| r.id == rule.id) {
                    problems.push(Problem::error(
                        &rule.path,
                        1,
                        1,
                        format!(
                            "rule id `{}` is already used by {}; file stems must be unique",
                            rule.id,
                            other.path.display()
                        ),
                    ));
                } else {
                    rules.push(rule);
                }
            }
            Err(mut found) => problems.append(&mut found),
        }
    }
    (rules, problems)
}

fn collect_sql_files(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(Problem::error(dir, 1, 1, format!("cannot read rules directory: {e}")));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_sql_files(&path, out, problems);
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
}

/// Parses one rule file's text (the header; the SQL is checked by `compile`).
pub fn parse_rule(path: &Path, text: String) -> Result<RuleFile, Vec<Problem>> {
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut problems = Vec::new();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        problems.push(Problem::error(
            path,
            1,
            1,
            format!("rule id `{id}` (the file stem) may hold only letters, digits, _ and -"),
        ));
    }
    let mut header = RuleHeader {
        description: String::new(),
        level: Level::Blue,
        fire_for: None,
        key: None,
        resolve: 1,
        lateness_ms: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index as u64 + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix("--") else {
            break; // the header ends at the first line of SQL
        };
        let Some((key, value)) = comment.split_once(':') else {
            continue; // a free comment
        };
        let key = key.trim();
        let value = value.trim();
        let value_col = (line.find(value).unwrap_or(0) + 1) as u64;
        let key_col = (line.find(key).unwrap_or(0) + 1) as u64;
        if key.contains(char::is_whitespace) {
            continue; // prose that happens to contain a colon
        }
        if seen.iter().any(|k| k == key) {
            problems.push(Problem::error(
                path,
                line_no,
                key_col,
                format!("header key `{key}` is given twice"),
            ));
            continue;
        }
        seen.push(key.to_string());
        let mut bad = |message: String| problems.push(Problem::error(path, line_no, value_col, message));
        match key {
            "description" => header.description = value.to_string(),
            "level" => match value.parse() {
                Ok(level) => header.level = level,
                Err(e) => bad(e),
            },
            "for" => {
                header.fire_for = Some(Located {
                    text: value.to_string(),
                    line: line_no,
                    col: value_col,
                })
            }
            "key" => {
                let columns: Vec<String> = value
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect();
                if columns.is_empty() {
                    bad("`key` needs at least one column".to_string());
                } else {
                    header.key = Some(columns);
                }
            }
            "resolve" => match value.parse::<u32>() {
                Ok(n) if n >= 1 => header.resolve = n,
                _ => bad(format!(
                    "`resolve` must be a whole number of windows (or rows) of at least 1, got `{value}`"
                )),
            },
            "lateness" => match parse_duration_ms(value) {
                Ok(ms) => header.lateness_ms = Some(ms),
                Err(e) => bad(e),
            },
            other => problems.push(Problem::error(
                path,
                line_no,
                key_col,
                format!("unknown header key `{other}`; known keys are description, level, for, key, resolve, lateness"),
            )),
        }
    }
    if problems.is_empty() {
        Ok(RuleFile {
            id,
            path: path.to_path_buf(),
            text,
            header,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_keys_are_parsed_with_defaults() {
        let text = "-- description: Low: below 18\n-- level: yellow\n-- for: 2\n-- key: district, device_id\n\nSELECT 1\n-- trailing: not header\n";
        let rule = parse_rule(Path::new("q/heating/room_low.sql"), text.to_string()).expect("valid");
        assert_eq!(rule.id, "room_low");
        assert_eq!(rule.header.description, "Low: below 18");
        assert_eq!(rule.header.level, Level::Yellow);
        assert_eq!(
            rule.header.fire_for.as_ref().map(|f| (f.text.as_str(), f.line)),
            Some(("2", 3))
        );
        assert_eq!(
            rule.header.key,
            Some(vec!["district".to_string(), "device_id".to_string()])
        );
        assert_eq!((rule.header.resolve, rule.header.lateness_ms), (1, None));
    }

    #[test]
    fn unknown_and_invalid_header_keys_are_errors_with_positions() {
        let text = "-- level: purple\n-- severity: high\n-- resolve: 0\nSELECT 1";
        let problems = parse_rule(Path::new("r.sql"), text.to_string()).unwrap_err();
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[0].starts_with("r.sql:1:11: `purple` is not a level"),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].starts_with("r.sql:2:4: unknown header key `severity`"),
            "{}",
            shown[1]
        );
        assert!(shown[2].starts_with("r.sql:3:13: `resolve` must be"), "{}", shown[2]);
    }
}
