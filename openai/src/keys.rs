//! API keys: the keys file (one key a line, optionally followed by a name),
//! and the constant-time lookup of a request's bearer token.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A problem in the keys file; never quotes a key.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeysError {
    /// A line holds more than a key and a name.
    #[error("keys file line {line}: expected `KEY [NAME]`")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A key is too short to be a secret.
    #[error("keys file line {line}: the key is shorter than 16 characters")]
    TooShort {
        /// 1-based line number.
        line: usize,
    },
    /// The same key appears twice.
    #[error("keys file line {line}: the key repeats an earlier line")]
    Duplicate {
        /// 1-based line number.
        line: usize,
    },
}

/// One key, kept as its SHA-256 digest so comparisons take the same time
/// whatever the candidate, and the key itself is not kept in memory.
#[derive(Clone)]
struct Key {
    digest: [u8; 32],
    name: String,
}

/// The configured keys. `Debug` shows only the names.
#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.name))
            .finish()
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Equal digests, compared without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Keys {
    /// Parses a keys file: blank lines and `#` comments are skipped; a key
    /// without a name is named `key<line>`.
    ///
    /// # Errors
    /// [`KeysError`] naming the line.
    pub fn parse(text: &str) -> Result<Self, KeysError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let key = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .map_or_else(|| format!("key{line_no}"), str::to_owned);
            if parts.next().is_some() {
                return Err(KeysError::Malformed { line: line_no });
            }
            if key.chars().count() < 16 {
                return Err(KeysError::TooShort { line: line_no });
            }
            let digest = digest(key);
            if keys.iter().any(|k| same(&k.digest, &digest)) {
                return Err(KeysError::Duplicate { line: line_no });
            }
            keys.push(Key { digest, name });
        }
        Ok(Self { keys })
    }

    /// No key configured: the API is open (allowed on loopback only).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The name of the key `candidate`, if it is one. Every key is compared,
    /// so the time taken does not tell which (or whether a prefix) matched.
    pub fn find(&self, candidate: &str) -> Option<&str> {
        let digest = digest(candidate);
        let mut found = None;
        for k in &self.keys {
            if same(&k.digest, &digest) {
                found = Some(k.name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sk-aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sk-bbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn keys_with_and_without_names() {
        let keys = Keys::parse(&format!("# comment\n\n{A} alice\n{B}\n")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.find(A), Some("alice"));
        assert_eq!(keys.find(B), Some("key4"));
        assert_eq!(keys.find("sk-aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(keys.find(""), None);
    }

    #[test]
    fn bad_lines_are_named_without_the_key() {
        assert_eq!(
            Keys::parse(&format!("{A} a b")).unwrap_err(),
            KeysError::Malformed { line: 1 }
        );
        assert_eq!(
            Keys::parse("\nshort name").unwrap_err(),
            KeysError::TooShort { line: 2 }
        );
        let err = Keys::parse(&format!("{A} a\n{A} b")).unwrap_err();
        assert_eq!(err, KeysError::Duplicate { line: 2 });
        assert!(!err.to_string().contains(A));
    }

    #[test]
    fn debug_shows_names_only() {
        let keys = Keys::parse(&format!("{A} alice")).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("alice") && !shown.contains(A));
    }
}
