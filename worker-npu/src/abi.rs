//! Which binary layout of the RKLLM runtime to use: from the setting, or
//! ("auto") from the version string the library file carries.
//!
//! The layout differs between releases and a wrong choice corrupts memory
//! without any error, so "auto" refuses what it does not recognise instead of
//! guessing: an unknown or ambiguous version ends the load with
//! `RuntimeUnsupported` and tells the operator how to choose explicitly.

use std::fmt;
use std::path::{Path, PathBuf};

use memchr::memmem;
use thiserror::Error;

/// A binary layout of `rkllm.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Abi {
    /// Releases 1.2.1 to 1.2.3.
    V1_2,
    /// Release 1.3.0.
    V1_3,
}

impl Abi {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        }
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `abi` setting of an NPU slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiSetting {
    /// Read the version from the library file.
    Auto,
    /// Use this layout whatever the library says.
    Fixed(Abi),
}

/// A value of the `abi` setting that is none of "auto", "1.2", "1.3".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown RKLLM abi setting {given:?}: use \"auto\", \"1.2\" (runtime 1.2.1-1.2.3) or \"1.3\" (runtime 1.3.0)")]
pub struct BadAbiSetting {
    /// What the setting said.
    pub given: String,
}

impl std::str::FromStr for AbiSetting {
    type Err = BadAbiSetting;

    fn from_str(s: &str) -> Result<Self, BadAbiSetting> {
        match s.trim() {
            "auto" | "" => Ok(Self::Auto),
            "1.2" | "1.2.x" => Ok(Self::Fixed(Abi::V1_2)),
            "1.3" | "1.3.0" => Ok(Self::Fixed(Abi::V1_3)),
            other => Err(BadAbiSetting {
                given: other.to_owned(),
            }),
        }
    }
}

/// A runtime release number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuntimeVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl RuntimeVersion {
    /// The layout of this release, if this worker knows it.
    pub fn abi(self) -> Option<Abi> {
        match (self.major, self.minor, self.patch) {
            (1, 2, 1..=3) => Some(Abi::V1_2),
            (1, 3, 0) => Some(Abi::V1_3),
            _ => None,
        }
    }
}

/// Why "auto" could not pick a layout.
#[derive(Debug, Error)]
pub enum AbiError {
    /// The library file could not be read.
    #[error("cannot read the NPU runtime {path} to find its version: {source}")]
    Unreadable {
        /// The library.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No version string in the file.
    #[error("no RKLLM version string found in {path}: is it librkllmrt.so? If it is, set abi = \"1.2\" or \"1.3\" in the slot's config to match the runtime release")]
    NoVersion {
        /// The library.
        path: PathBuf,
    },
    /// More than one release named in the file.
    #[error("{path} names several RKLLM versions ({}): set abi = \"1.2\" or \"1.3\" in the slot's config to match the runtime release", join(.versions))]
    Ambiguous {
        /// The library.
        path: PathBuf,
        /// The versions found.
        versions: Vec<RuntimeVersion>,
    },
    /// A release whose layout this worker does not know.
    #[error("NPU runtime {path} is version {version}, which this worker does not support (supported: 1.2.1 to 1.2.3 and 1.3.0): install a supported librkllmrt.so")]
    Unsupported {
        /// The library.
        path: PathBuf,
        /// The version found.
        version: RuntimeVersion,
    },
}

fn join(versions: &[RuntimeVersion]) -> String {
    versions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Strings a release's version follows inside `librkllmrt.so`, e.g.
/// `RKLLM SDK (version: 1.2.1 ...` and `rkllm-runtime version: 1.2.1`.
const MARKERS: [&[u8]; 3] = [b"RKLLM SDK", b"rkllm-runtime version", b"RKLLM Runtime"];

/// Every distinct version that follows a known marker in `bytes` (pure).
/// Only separators may stand between marker and version (`: `, ` (version: `,
/// ` V`): in `rkllm-runtime version: %s, rknpu driver version: 0.9.8` the
/// number belongs to the driver, not to the runtime.
pub fn find_versions(bytes: &[u8]) -> Vec<RuntimeVersion> {
    let mut found = Vec::new();
    for marker in MARKERS {
        for at in memmem::find_iter(bytes, marker) {
            if let Some(v) = version_after(&bytes[at + marker.len()..]) {
                if !found.contains(&v) {
                    found.push(v);
                }
            }
        }
    }
    found.sort();
    found
}

/// The version right after a marker, past separators and an optional
/// "version" word and "v" prefix.
fn version_after(rest: &[u8]) -> Option<RuntimeVersion> {
    let is_sep = |b: &u8| matches!(b, b' ' | b'\t' | b':' | b'=' | b'(');
    let skip = |s: &[u8]| s.iter().take_while(|b| is_sep(b)).count();
    let mut pos = skip(rest);
    let word = b"version";
    if rest.len() >= pos + word.len() && rest[pos..pos + word.len()].eq_ignore_ascii_case(word) {
        pos += word.len();
        pos += skip(&rest[pos..]);
    }
    if matches!(rest.get(pos), Some(b'v' | b'V')) {
        pos += 1;
    }
    parse_version_at(&rest[pos..])
}

fn parse_version_at(s: &[u8]) -> Option<RuntimeVersion> {
    let mut parts = [0u32; 3];
    let mut pos = 0;
    for (n, part) in parts.iter_mut().enumerate() {
        let digits = s[pos..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 4 {
            return None;
        }
        *part = std::str::from_utf8(&s[pos..pos + digits])
            .ok()?
            .parse()
            .ok()?;
        pos += digits;
        if n < 2 {
            if s.get(pos) != Some(&b'.') {
                return None;
            }
            pos += 1;
        }
    }
    Some(RuntimeVersion {
        major: parts[0],
        minor: parts[1],
        patch: parts[2],
    })
}

/// Picks the layout for the library at `path` from the version it carries.
///
/// # Errors
/// [`AbiError`] when the file cannot be read, names no version, several, or
/// one this worker does not support.
pub fn detect(path: &Path) -> Result<(RuntimeVersion, Abi), AbiError> {
    let bytes = std::fs::read(path).map_err(|source| AbiError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let versions = find_versions(&bytes);
    match versions.as_slice() {
        [] => Err(AbiError::NoVersion {
            path: path.to_owned(),
        }),
        [version] => version
            .abi()
            .map(|abi| (*version, abi))
            .ok_or(AbiError::Unsupported {
                path: path.to_owned(),
                version: *version,
            }),
        _ => Err(AbiError::Ambiguous {
            path: path.to_owned(),
            versions,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> RuntimeVersion {
        RuntimeVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn versions_follow_markers() {
        let blob =
            b"\0junk 9.9.9\0RKLLM SDK (version: 1.2.1 build@2025)\0rkllm-runtime version: %s\0";
        assert_eq!(find_versions(blob), vec![v(1, 2, 1)]);
        let blob = b"xx rkllm-runtime version: 1.3.0\0 RKLLM SDK V1.3.0\0";
        assert_eq!(find_versions(blob), vec![v(1, 3, 0)]);
        assert!(find_versions(b"librknnrt version: 2.3.0").is_empty());
        // The format string of the runtime's log line: the number is the driver's.
        assert!(
            find_versions(b"rkllm-runtime version: %s, rknpu driver version: 0.9.8\0").is_empty()
        );
        // A NUL ends the string the marker belongs to.
        assert!(find_versions(b"RKLLM SDK\0 1.2.1").is_empty());
    }

    #[test]
    fn two_releases_are_reported_both() {
        let blob = b"RKLLM SDK 1.2.1\0rkllm-runtime version: 1.3.0\0";
        assert_eq!(find_versions(blob), vec![v(1, 2, 1), v(1, 3, 0)]);
    }

    #[test]
    fn known_releases_map_to_layouts() {
        assert_eq!(v(1, 2, 1).abi(), Some(Abi::V1_2));
        assert_eq!(v(1, 2, 3).abi(), Some(Abi::V1_2));
        assert_eq!(v(1, 3, 0).abi(), Some(Abi::V1_3));
        assert_eq!(v(1, 2, 0).abi(), None);
        assert_eq!(v(1, 1, 4).abi(), None);
        assert_eq!(v(1, 3, 1).abi(), None);
    }

    #[test]
    fn setting_parses() {
        assert_eq!("auto".parse(), Ok(AbiSetting::Auto));
        assert_eq!("1.2".parse(), Ok(AbiSetting::Fixed(Abi::V1_2)));
        assert_eq!(" 1.3 ".parse(), Ok(AbiSetting::Fixed(Abi::V1_3)));
        let err = "2.0".parse::<AbiSetting>().unwrap_err();
        assert!(err.to_string().contains("\"2.0\""), "{err}");
    }
}
