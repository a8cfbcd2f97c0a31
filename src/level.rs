//! The national four-colour warning levels: blue (IV) < yellow (III) < orange (II) < red (I).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A warning level; the derived order is the severity order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Blue,
    Yellow,
    Orange,
    Red,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Blue, Level::Yellow, Level::Orange, Level::Red];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Blue => "blue",
            Level::Yellow => "yellow",
            Level::Orange => "orange",
            Level::Red => "red",
        }
    }

    /// The roman grade of the national scheme (red is I).
    pub fn grade(self) -> &'static str {
        match self {
            Level::Blue => "IV",
            Level::Yellow => "III",
            Level::Orange => "II",
            Level::Red => "I",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "blue" | "iv" => Ok(Level::Blue),
            "yellow" | "iii" => Ok(Level::Yellow),
            "orange" | "ii" => Ok(Level::Orange),
            "red" | "i" => Ok(Level::Red),
            other => Err(format!("`{other}` is not a level; use blue, yellow, orange or red")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_by_severity_and_parse_both_names() {
        assert!(Level::Blue < Level::Yellow && Level::Yellow < Level::Orange && Level::Orange < Level::Red);
        assert_eq!("RED".parse::<Level>(), Ok(Level::Red));
        assert_eq!("iii".parse::<Level>(), Ok(Level::Yellow));
        assert!("purple".parse::<Level>().is_err());
    }
}
