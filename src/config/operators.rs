//! Operators and their tokens (`[http.operators]`: a name and the SHA-256 of its token,
//! `sha256:<hex>`; or one operator from `CITYOPS_OPERATOR`, `name:token`). A write action
//! names its operator by its bearer token; the name goes into the alert's history. Tokens
//! are compared by their hashes, never kept in clear from the config.

use std::collections::BTreeMap;

/// Environment variable giving one operator as `name:token`.
pub(crate) const OPERATOR_ENV: &str = "CITYOPS_OPERATOR";

/// The operators that may act, by token hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct Operators {
    /// Hex SHA-256 of a token → the operator's name.
    by_hash: BTreeMap<String, String>,
}

/// The hex SHA-256 of a token, as `[http.operators]` stores it.
pub fn token_hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Operators {
    /// From the config's `name = "sha256:<hex>"` entries, plus `CITYOPS_OPERATOR`.
    pub(crate) fn new(configured: &BTreeMap<String, String>, from_env: Option<String>) -> Result<Self, String> {
        let mut by_hash = BTreeMap::new();
        for (name, stored) in configured {
            let hex = stored.strip_prefix("sha256:").unwrap_or(stored).to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "http.operators.{name}: give the token's SHA-256 as sha256:<64 hex digits> (`cityops token-hash TOKEN` prints it), not the token itself"
                ));
            }
            if let Some(other) = by_hash.insert(hex, name.clone()) {
                return Err(format!(
                    "http.operators: {other} and {name} have the same token; give each operator their own"
                ));
            }
        }
        if let Some(pair) = from_env.filter(|p| !p.is_empty()) {
            let (name, token) = pair
                .split_once(':')
                .filter(|(n, t)| !n.is_empty() && t.len() >= 8)
                .ok_or_else(|| format!("{OPERATOR_ENV} must be name:token, with a token of at least 8 characters"))?;
            by_hash.insert(token_hash(token), name.to_string());
        }
        Ok(Operators { by_hash })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The operator a bearer token belongs to.
    pub(crate) fn who(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&token_hash(token)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_operator_and_clear_tokens_are_refused_in_config() {
        let configured = BTreeMap::from([("li".to_string(), format!("sha256:{}", token_hash("li-secret-1")))]);
        let operators = Operators::new(&configured, Some("wang:wang-secret-2".into())).unwrap();
        assert_eq!(operators.who("li-secret-1"), Some("li"));
        assert_eq!(operators.who("wang-secret-2"), Some("wang"));
        assert_eq!(operators.who("guess"), None);
        let clear = BTreeMap::from([("li".to_string(), "li-secret-1".to_string())]);
        assert!(Operators::new(&clear, None).unwrap_err().contains("SHA-256"));
        assert!(Operators::new(&BTreeMap::new(), Some("nocolon".into())).is_err());
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
