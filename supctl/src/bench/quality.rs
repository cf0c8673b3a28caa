//! Quality samples: does a greedy answer contain the known answer, and a
//! stable hash of each output so a later run can tell the text changed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Outcome of a prompt's known-answer check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// The answer contains the expected word or number.
    Pass,
    /// It does not.
    Fail,
    /// The prompt has no known answer.
    Unchecked,
}

impl Quality {
    /// Word for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Unchecked => "-",
        }
    }
}

/// Whether `output` contains `expected` as a whole word or number, ignoring
/// case: "4" matches "The answer is: 4." but not "14" or "4.5".
pub fn check(output: &str, expected: Option<&str>) -> Quality {
    let Some(expected) = expected else {
        return Quality::Unchecked;
    };
    let hay = output.to_lowercase();
    let needle = expected.trim().to_lowercase();
    if needle.is_empty() {
        return Quality::Unchecked;
    }
    let joins = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut from = 0;
    while let Some(at) = hay[from..].find(&needle) {
        let start = from + at;
        let end = start + needle.len();
        let before = hay[..start].chars().next_back();
        let mut rest = hay[end..].chars();
        let after = rest.next();
        // "4.5" is not "4": a decimal point followed by a digit continues a number.
        let decimal = needle.chars().last().is_some_and(|c| c.is_ascii_digit())
            && matches!(after, Some('.' | ','))
            && rest.next().is_some_and(|c| c.is_ascii_digit());
        if !joins(before) && !joins(after) && !decimal {
            return Quality::Pass;
        }
        from = start + needle.chars().next().map_or(1, char::len_utf8);
    }
    Quality::Fail
}

/// Hex SHA-256 of a text (outputs and prompts).
pub fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_match_whole_words_only() {
        assert_eq!(check("The answer is: 4", Some("4")), Quality::Pass);
        assert_eq!(check("2 + 2 = 4.", Some("4")), Quality::Pass);
        assert_eq!(check("It is 14 or 4.5", Some("4")), Quality::Fail);
        assert_eq!(check("the capital is paris", Some("Paris")), Quality::Pass);
        assert_eq!(check("Parisian food", Some("Paris")), Quality::Fail);
        assert_eq!(check("anything", None), Quality::Unchecked);
    }

    #[test]
    fn hashes_are_stable_hex() {
        let h = hash("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash("abc "), h);
    }
}
