//! A set of CPU numbers in the kernel's list syntax ("0-3,6"), as config
//! files, `/proc/<pid>/status` (`Cpus_allowed_list`), the status report and
//! the worker's `--cpus` argument write it; and RKLLM's CPU bit mask.
//!
//! On the wire (and in JSON) a set is its list text, so status shows "4-7",
//! not a list of numbers.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Highest CPU number accepted, plus one: glibc's `CPU_SETSIZE`, the most
/// `sched_setaffinity` takes through a `cpu_set_t`.
pub const MAX_CPUS: u32 = 1024;

/// A CPU list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CpuListError {
    /// Nothing in it.
    #[error("names no CPU (write e.g. \"4-7\" or \"0,2\")")]
    Empty,
    /// A part is not a number or a range of numbers.
    #[error("{part:?} is not a CPU number or a range such as \"4-7\"")]
    NotANumber {
        /// The offending part.
        part: String,
    },
    /// A range runs backwards.
    #[error("the range {part:?} runs backwards (write the lower CPU first)")]
    Backwards {
        /// The offending range.
        part: String,
    },
    /// A CPU number beyond what the kernel interface takes.
    #[error("CPU {cpu} is beyond the highest CPU number {}", MAX_CPUS - 1)]
    TooHigh {
        /// The number.
        cpu: u32,
    },
}

/// A set of CPU numbers.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct CpuSet(BTreeSet<u32>);

impl CpuSet {
    /// The CPUs `first..=last`.
    pub fn range(first: u32, last: u32) -> Self {
        Self((first..=last.min(MAX_CPUS - 1)).collect())
    }

    /// The CPUs whose bit is set in `mask` (bit n = CPU n), as RKLLM's
    /// `enabled_cpus_mask` names them.
    pub fn from_mask(mask: u64) -> Self {
        Self((0..64).filter(|i| mask & (1u64 << i) != 0).collect())
    }

    /// The set as a bit mask (bit n = CPU n); CPUs above 63 are dropped.
    pub fn to_mask(&self) -> u64 {
        self.0
            .iter()
            .filter(|&&c| c < 64)
            .fold(0, |m, &c| m | (1u64 << c))
    }

    /// The CPUs from numbers.
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Self {
        Self(cpus.into_iter().filter(|&c| c < MAX_CPUS).collect())
    }

    /// The CPUs, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Number of CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No CPU at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// The CPUs in both sets.
    #[must_use]
    pub fn intersection(&self, other: &Self) -> Self {
        Self(self.0.intersection(&other.0).copied().collect())
    }

    /// The CPUs of `self` not in `other`.
    #[must_use]
    pub fn difference(&self, other: &Self) -> Self {
        Self(self.0.difference(&other.0).copied().collect())
    }

    /// No CPU in common.
    pub fn is_disjoint(&self, other: &Self) -> bool {
        self.0.is_disjoint(&other.0)
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    /// Parses the kernel's list syntax: numbers and ranges separated by
    /// commas ("0-3,6"), spaces allowed around each part.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |t: &str, part: &str| {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CpuListError::NotANumber { part: part.into() });
            }
            match t.parse::<u32>() {
                Ok(n) if n < MAX_CPUS => Ok(n),
                Ok(n) => Err(CpuListError::TooHigh { cpu: n }),
                Err(_) => Err(CpuListError::TooHigh { cpu: u32::MAX }),
            }
        };
        let mut set = BTreeSet::new();
        if s.trim().is_empty() {
            return Err(CpuListError::Empty);
        }
        for part in s.split(',') {
            let part = part.trim();
            if let Some((a, b)) = part.split_once('-') {
                let (a, b) = (number(a, part)?, number(b, part)?);
                if a > b {
                    return Err(CpuListError::Backwards { part: part.into() });
                }
                set.extend(a..=b);
            } else {
                set.insert(number(part, part)?);
            }
        }
        Ok(Self(set))
    }
}

impl fmt::Display for CpuSet {
    /// The shortest list: runs of two or more CPUs as ranges ("0-3,6").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut cpus = self.0.iter().copied().peekable();
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl From<CpuSet> for String {
    fn from(set: CpuSet) -> Self {
        set.to_string()
    }
}

impl TryFrom<String> for CpuSet {
    type Error = CpuListError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        // An empty list is an empty set on the wire (never in a config).
        if s.is_empty() {
            return Ok(Self::default());
        }
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    #[test]
    fn lists_parse_and_print_in_the_kernel_syntax() {
        assert_eq!(set("4-7").iter().collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert_eq!(set("0-3,6").to_string(), "0-3,6");
        assert_eq!(set(" 6, 0-1 ,2,3 ").to_string(), "0-3,6");
        assert_eq!(set("1").to_string(), "1");
        assert_eq!(set("1,3,5").to_string(), "1,3,5");
        assert_eq!(set("2-2").to_string(), "2");
        assert_eq!(set("1023").len(), 1);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert_eq!("".parse::<CpuSet>(), Err(CpuListError::Empty));
        assert_eq!(" ".parse::<CpuSet>(), Err(CpuListError::Empty));
        assert!(
            matches!("4-".parse::<CpuSet>(), Err(CpuListError::NotANumber { part }) if part == "4-")
        );
        assert!(matches!(
            "a".parse::<CpuSet>(),
            Err(CpuListError::NotANumber { .. })
        ));
        assert!(matches!(
            "0,,1".parse::<CpuSet>(),
            Err(CpuListError::NotANumber { .. })
        ));
        assert!(matches!(
            "-1".parse::<CpuSet>(),
            Err(CpuListError::NotANumber { .. })
        ));
        assert!(matches!(
            "+1".parse::<CpuSet>(),
            Err(CpuListError::NotANumber { .. })
        ));
        assert!(
            matches!("7-4".parse::<CpuSet>(), Err(CpuListError::Backwards { part }) if part == "7-4")
        );
        assert_eq!(
            "1024".parse::<CpuSet>(),
            Err(CpuListError::TooHigh { cpu: 1024 })
        );
        assert!(matches!(
            "99999999999".parse::<CpuSet>(),
            Err(CpuListError::TooHigh { .. })
        ));
        let e = "7-4".parse::<CpuSet>().unwrap_err().to_string();
        assert!(e.contains("backwards"), "{e}");
    }

    #[test]
    fn masks_convert_both_ways() {
        assert_eq!(CpuSet::from_mask(0xF0).to_string(), "4-7");
        assert_eq!(CpuSet::from_mask(0x0F).to_string(), "0-3");
        assert_eq!(set("0,7").to_mask(), 0x81);
        assert!(CpuSet::from_mask(0).is_empty());
    }

    #[test]
    fn set_algebra() {
        let a = set("0-5");
        let b = set("4-7");
        assert_eq!(a.intersection(&b).to_string(), "4-5");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        assert!(!a.is_disjoint(&b));
        assert!(set("0-3").is_disjoint(&b));
    }

    #[test]
    fn the_wire_and_json_carry_the_list_text() {
        let s = set("0-3,6");
        let text: String = s.clone().into();
        assert_eq!(text, "0-3,6");
        assert_eq!(CpuSet::try_from(text).unwrap(), s);
        assert_eq!(CpuSet::try_from(String::new()).unwrap(), CpuSet::default());
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&s, cfg).unwrap();
        let (back, _): (CpuSet, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, s);
    }
}
