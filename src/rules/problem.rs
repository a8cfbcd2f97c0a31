//! A problem found in a rule, reported as `path:line:col: message` (and
//! `path:line:col: warning: message` for warnings), the format editors and CI understand.

use std::fmt;
use std::path::PathBuf;

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem with a position in a rule file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: u64,
    pub col: u64,
    pub severity: Severity,
    pub message: String,
}

impl Problem {
    pub fn error(path: impl Into<PathBuf>, line: u64, col: u64, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            line: line.max(1),
            col: col.max(1),
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(path: impl Into<PathBuf>, line: u64, col: u64, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Self::error(path, line, col, message)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {kind}{}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}
