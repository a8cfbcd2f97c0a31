//! `cityops check`: reads the config and plans every rule against the table schemas,
//! reporting every problem at once as `path:line:col: message`, sorted by position.

use std::path::Path;

use crate::config::Config;
use crate::rules::compile::compile_all;
use crate::rules::loader::load_dir;
use crate::rules::problem::{Problem, Severity};

/// The result of checking a rules directory.
#[derive(Debug)]
pub struct CheckReport {
    /// Rules that planned cleanly.
    pub ok: Vec<String>,
    /// Errors and warnings, sorted by file and position.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// Checks every rule under `dir` against `config`'s tables.
pub fn check(config: &Config, dir: &Path) -> Result<CheckReport, std::io::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let catalog = config.catalog();
    let (files, mut problems) = load_dir(dir);
    let (compiled, more) = runtime.block_on(compile_all(&files, &catalog, &config.engine));
    problems.extend(more);
    problems.sort_by(|a, b| (&a.path, a.line, a.col, a.severity).cmp(&(&b.path, b.line, b.col, b.severity)));
    if files.is_empty() && problems.is_empty() {
        problems.push(Problem::error(dir, 1, 1, "no rules (*.sql files) found"));
    }
    Ok(CheckReport {
        ok: compiled.iter().map(|c| c.id.clone()).collect(),
        problems,
    })
}
