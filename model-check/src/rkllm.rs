//! `.rkllm` model check (RKLLM runtime, NPU worker): size, readability, what
//! the first bytes say the file really is, and what its name says it was
//! converted for, with a verdict saying plainly whether the file itself is
//! the problem.
//!
//! `.rkllm` files have no public format specification, so this reads no
//! header: it catches what is certain (missing, 0 bytes, too small to hold a
//! model, a Git LFS pointer or an HTML page saved under the model's name, a
//! GGUF file given to the NPU) and reports what the file name hints (SoC,
//! quantisation) as warnings. Whether the runtime accepts the file is decided
//! by the runtime's own init log, which the NPU worker classifies.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use proto::worker::ExitCode;

/// Below this size a file cannot hold any language model converted for the
/// NPU (the smallest ones are well over 100 MB): a cut-off download or not a
/// model at all.
pub const MIN_MODEL_SIZE: u64 = 1 << 20;

/// Below this size a file is loadable in principle but smaller than any
/// published RKLLM model: worth a warning.
pub const SUSPICIOUS_BELOW: u64 = 64 << 20;

/// Bytes read from the start of the file to recognise what it really is.
const SNIFF_LEN: usize = 512;

/// A Rockchip SoC an RKLLM model is converted for (`target_platform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// RK3588 / RK3588S (ROCK 5B, Orange Pi 5, ...).
    Rk3588,
    /// RK3576.
    Rk3576,
    /// RK3562.
    Rk3562,
    /// RV1126B.
    Rv1126b,
}

impl Platform {
    /// Lower-case name as the toolkit's `target_platform` and file names spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rk3588 => "rk3588",
            Self::Rk3576 => "rk3576",
            Self::Rk3562 => "rk3562",
            Self::Rv1126b => "rv1126b",
        }
    }

    /// The platform a name token stands for: `rk3588`, `RK3588S`,
    /// `rockchip,rk3588` (device-tree spelling).
    fn from_token(token: &str) -> Option<Self> {
        let t = token.trim().to_ascii_lowercase();
        let t = t.strip_prefix("rockchip,").unwrap_or(&t);
        match t {
            "rk3588" | "rk3588s" => Some(Self::Rk3588),
            "rk3576" => Some(Self::Rk3576),
            "rk3562" => Some(Self::Rk3562),
            "rv1126b" => Some(Self::Rv1126b),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Platform::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown Rockchip platform {given:?} (expected rk3588, rk3576, rk3562 or rv1126b)")]
pub struct UnknownPlatform {
    /// The text given.
    pub given: String,
}

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(s: &str) -> Result<Self, UnknownPlatform> {
        Self::from_token(s).ok_or_else(|| UnknownPlatform {
            given: s.to_owned(),
        })
    }
}

/// A quantisation scheme as RKLLM file names spell it: `w8a8`, `w4a16_g128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quant {
    /// Bits per weight.
    pub weight_bits: u8,
    /// Bits per activation.
    pub activation_bits: u8,
    /// Group size of grouped quantisation (`_g128`), if any.
    pub group: Option<u32>,
}

impl Quant {
    fn from_token(token: &str) -> Option<Self> {
        let t = token.to_ascii_lowercase();
        let rest = t.strip_prefix('w')?;
        let (w, a) = rest.split_once('a')?;
        Some(Self {
            weight_bits: w.parse().ok().filter(|b| (2..=16).contains(b))?,
            activation_bits: a.parse().ok().filter(|b| (2..=16).contains(b))?,
            group: None,
        })
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}a{}", self.weight_bits, self.activation_bits)?;
        if let Some(g) = self.group {
            write!(f, "_g{g}")?;
        }
        Ok(())
    }
}

/// What a model's file name says about it. Names are set by whoever
/// converted or uploaded the file, so these are hints, never proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameHints {
    /// SoC named in the file name.
    pub platform: Option<Platform>,
    /// Quantisation named in the file name.
    pub quant: Option<Quant>,
}

/// Reads the hints from a file name (or a whole path: only the last
/// component counts), e.g. `Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm`.
pub fn name_hints(file_name: &str) -> NameHints {
    let base = file_name.rsplit('/').next().unwrap_or(file_name);
    let tokens: Vec<&str> = base
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    let mut hints = NameHints::default();
    for (i, token) in tokens.iter().enumerate() {
        if hints.platform.is_none() {
            hints.platform = Platform::from_token(token);
        }
        if hints.quant.is_none() {
            if let Some(mut quant) = Quant::from_token(token) {
                quant.group = tokens
                    .get(i + 1)
                    .and_then(|next| next.to_ascii_lowercase().strip_prefix('g')?.parse().ok());
                hints.quant = Some(quant);
            }
        }
    }
    hints
}

/// What the first bytes of a file show it to be, when it is certainly not an
/// RKLLM model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// A Git LFS pointer file: the repository was cloned without `git lfs`.
    LfsPointer,
    /// An HTML page (a download link that served a web page).
    Html,
    /// A GGUF model (for the CPU worker).
    Gguf,
}

impl Foreign {
    fn describe(self) -> &'static str {
        match self {
            Self::LfsPointer => "a Git LFS pointer, not the model: the repository was cloned without git-lfs; run `git lfs pull` or download the file itself",
            Self::Html => "an HTML page, not a model: the download link served a web page; download the raw file",
            Self::Gguf => "a GGUF model, which the CPU worker (llama.cpp) loads; the NPU worker needs a model converted with rkllm-toolkit (.rkllm)",
        }
    }
}

/// Recognises files that are certainly not RKLLM models from their first bytes.
pub fn sniff(head: &[u8]) -> Option<Foreign> {
    if head.starts_with(b"GGUF") {
        return Some(Foreign::Gguf);
    }
    if head.starts_with(b"version https://git-lfs.github.com/spec/") {
        return Some(Foreign::LfsPointer);
    }
    let start = head
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(head.len());
    let text = &head[start..];
    let lower: Vec<u8> = text.iter().take(16).map(u8::to_ascii_lowercase).collect();
    if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") {
        return Some(Foreign::Html);
    }
    None
}

/// Why a file cannot be an RKLLM model (or cannot be looked at).
#[derive(Debug, Error)]
pub enum RkllmError {
    /// Nothing at that path.
    #[error("model file {path} does not exist: check the model path in the config, or download the model")]
    Missing {
        /// The path checked.
        path: PathBuf,
    },
    /// The file exists but cannot be opened or read.
    #[error("model file {path} cannot be read: {source} (check permissions: the worker runs as the service user)")]
    Unreadable {
        /// The path checked.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Not a regular file (a directory, a device).
    #[error("model path {path} is not a regular file: point the config at the .rkllm file itself")]
    NotAFile {
        /// The path checked.
        path: PathBuf,
    },
    /// Zero bytes: an interrupted download or a failed conversion.
    #[error("model file {path} is empty (0 bytes): the download or conversion failed; {advice}")]
    Empty {
        /// The path checked.
        path: PathBuf,
        /// What to do ("re-download or re-convert for rk3588").
        advice: String,
    },
    /// Too small to hold any model.
    #[error("model file {path} is only {size} bytes, too small to hold a language model: the download is incomplete; {advice}")]
    TooSmall {
        /// The path checked.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// What to do.
        advice: String,
    },
    /// Certainly some other kind of file.
    #[error("model file {path} is {}", .kind.describe())]
    Foreign {
        /// The path checked.
        path: PathBuf,
        /// What it is.
        kind: Foreign,
    },
}

impl RkllmError {
    /// The worker exit code for this problem (all mean "do not restart").
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Missing { .. } => ExitCode::ModelMissing,
            Self::Unreadable { .. } | Self::NotAFile { .. } => ExitCode::ModelUnreadable,
            Self::Empty { .. } => ExitCode::ModelEmpty,
            Self::TooSmall { .. } => ExitCode::ModelTruncated,
            Self::Foreign { .. } => ExitCode::ModelBadFormat,
        }
    }

    /// Whether the file itself is at fault (as opposed to the path or permissions).
    pub fn is_artifact_problem(&self) -> bool {
        !matches!(
            self,
            Self::Missing { .. } | Self::Unreadable { .. } | Self::NotAFile { .. }
        )
    }
}

/// Something that does not stop a load but deserves the operator's eye.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Smaller than any published RKLLM model.
    SuspiciouslySmall {
        /// File size.
        size: u64,
    },
    /// The file name names another SoC than this board's.
    PlatformHint {
        /// SoC in the file name.
        named: Platform,
        /// This board's SoC.
        board: Platform,
    },
    /// The file name names a quantisation the board's NPU does not run.
    QuantForPlatform {
        /// Quantisation in the file name.
        quant: Quant,
        /// The SoC that is to run it.
        platform: Platform,
    },
    /// The name does not end in `.rkllm`.
    Extension {
        /// The file name.
        name: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SuspiciouslySmall { size } => write!(
                f,
                "only {size} bytes, smaller than any published RKLLM model: the download may be incomplete"
            ),
            Self::PlatformHint { named, board } => write!(
                f,
                "the file name says {named} but this board is {board}: RKLLM models are converted for one SoC; get the {board} build or re-convert with target_platform={board}"
            ),
            Self::QuantForPlatform { quant, platform } => write!(
                f,
                "the file name says {quant}, but {platform} runs W8A8 models: get a w8a8 build for {platform}"
            ),
            Self::Extension { name } => write!(
                f,
                "{name:?} does not end in .rkllm: is this the model converted with rkllm-toolkit?"
            ),
        }
    }
}

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RkllmInfo {
    /// File size in bytes.
    pub file_size: u64,
    /// What the file name says.
    pub hints: NameHints,
    /// Things that look wrong without proving the file unusable.
    pub warnings: Vec<Warning>,
}

/// Checks the `.rkllm` file at `path` before a load. `board` is the SoC of
/// this machine when known (compared with the file name's hint).
///
/// # Errors
/// An [`RkllmError`] naming the problem and what to do about it.
pub fn check(path: &Path, board: Option<Platform>) -> Result<RkllmInfo, RkllmError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hints = name_hints(&name);
    let advice = advice(hints.platform.or(board));
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RkllmError::Missing {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(RkllmError::Unreadable {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(RkllmError::NotAFile {
            path: path.to_owned(),
        });
    }
    let size = meta.len();
    if size == 0 {
        return Err(RkllmError::Empty {
            path: path.to_owned(),
            advice,
        });
    }
    // Reading proves readability (permissions, I/O errors) before the runtime
    // turns an unreadable file into "invalid model".
    let mut head = Vec::with_capacity(SNIFF_LEN);
    File::open(path)
        .and_then(|f| f.take(SNIFF_LEN as u64).read_to_end(&mut head))
        .map_err(|source| RkllmError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
    if let Some(kind) = sniff(&head) {
        return Err(RkllmError::Foreign {
            path: path.to_owned(),
            kind,
        });
    }
    if size < MIN_MODEL_SIZE {
        return Err(RkllmError::TooSmall {
            path: path.to_owned(),
            size,
            advice,
        });
    }
    Ok(RkllmInfo {
        file_size: size,
        hints,
        warnings: warnings(&name, size, hints, board),
    })
}

/// The warnings for a file that passed the hard checks (pure).
pub fn warnings(
    file_name: &str,
    size: u64,
    hints: NameHints,
    board: Option<Platform>,
) -> Vec<Warning> {
    let mut out = Vec::new();
    if size < SUSPICIOUS_BELOW {
        out.push(Warning::SuspiciouslySmall { size });
    }
    if let (Some(named), Some(board)) = (hints.platform, board) {
        if named != board {
            out.push(Warning::PlatformHint { named, board });
        }
    }
    if let (Some(quant), Some(platform)) = (hints.quant, board.or(hints.platform)) {
        if platform == Platform::Rk3588 && (quant.weight_bits, quant.activation_bits) != (8, 8) {
            out.push(Warning::QuantForPlatform { quant, platform });
        }
    }
    if !file_name.to_ascii_lowercase().ends_with(".rkllm") {
        out.push(Warning::Extension {
            name: file_name.to_owned(),
        });
    }
    out
}

fn advice(platform: Option<Platform>) -> String {
    match platform {
        Some(p) => format!("re-download it or re-convert it for {p}"),
        None => "re-download it or re-convert it for this board's SoC".to_owned(),
    }
}

/// The answer to "is the model file the problem?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong found in the file; if a load fails, look at the
    /// runtime's init log (runtime version, driver, NPU memory, settings).
    Fine,
    /// Loadable, but something looks off (see the warnings); the runtime's
    /// init log decides.
    Suspect,
    /// The file itself is broken or the wrong kind: re-download or re-convert it.
    ArtifactProblem,
    /// The file could not be looked at (path or permissions): fix those first.
    Unavailable,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fine => "no problem found in the model file",
            Self::Suspect => "the model file may be the problem (see warnings)",
            Self::ArtifactProblem => "the model file is the problem",
            Self::Unavailable => "the model file could not be examined",
        })
    }
}

/// A full check, for `supctl check-model` and the worker's log.
#[derive(Debug)]
pub struct RkllmReport {
    /// The path checked.
    pub path: PathBuf,
    /// The board's SoC, when known.
    pub board: Option<Platform>,
    /// What the check found.
    pub outcome: Result<RkllmInfo, RkllmError>,
}

impl RkllmReport {
    /// The plain answer.
    pub fn verdict(&self) -> Verdict {
        match &self.outcome {
            Ok(info) if info.warnings.is_empty() => Verdict::Fine,
            Ok(_) => Verdict::Suspect,
            Err(e) if e.is_artifact_problem() => Verdict::ArtifactProblem,
            Err(_) => Verdict::Unavailable,
        }
    }
}

/// Checks the file and wraps the outcome in a report.
pub fn inspect(path: &Path, board: Option<Platform>) -> RkllmReport {
    RkllmReport {
        path: path.to_owned(),
        board,
        outcome: check(path, board),
    }
}

impl fmt::Display for RkllmReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model:    {}", self.path.display())?;
        match &self.outcome {
            Ok(info) => {
                writeln!(f, "size:     {} bytes", info.file_size)?;
                let hint = |v: Option<String>| v.unwrap_or_else(|| "not in the file name".into());
                writeln!(
                    f,
                    "platform: {}",
                    hint(info.hints.platform.map(|p| p.to_string()))
                )?;
                writeln!(
                    f,
                    "quant:    {}",
                    hint(info.hints.quant.map(|q| q.to_string()))
                )?;
                for w in &info.warnings {
                    writeln!(f, "warning:  {w}")?;
                }
            }
            Err(e) => writeln!(f, "problem:  {e}")?,
        }
        write!(f, "verdict:  {}", self.verdict())?;
        match self.verdict() {
            Verdict::ArtifactProblem => write!(
                f,
                " ({})",
                advice(
                    self.board
                        .or_else(|| name_hints(&self.path.to_string_lossy()).platform)
                )
            ),
            Verdict::Fine => write!(
                f,
                " (if loading fails, the runtime's init log names the cause)"
            ),
            Verdict::Suspect | Verdict::Unavailable => Ok(()),
        }
    }
}

/// The Rockchip SoC named in `<sysfs_root>/firmware/devicetree/base/compatible`
/// (NUL-separated strings such as `radxa,rock-5b\0rockchip,rk3588\0`).
pub fn read_soc(sysfs_root: &Path) -> Option<Platform> {
    let bytes = std::fs::read(sysfs_root.join("firmware/devicetree/base/compatible")).ok()?;
    bytes
        .split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .find_map(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_from_typical_names() {
        let h = name_hints("Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm");
        assert_eq!(h.platform, Some(Platform::Rk3588));
        assert_eq!(
            h.quant,
            Some(Quant {
                weight_bits: 8,
                activation_bits: 8,
                group: None
            })
        );
        let h = name_hints("/models/deepseek-r1-1.5b-w4a16_g128-rk3576.rkllm");
        assert_eq!(h.platform, Some(Platform::Rk3576));
        assert_eq!(
            h.quant.map(|q| q.to_string()).as_deref(),
            Some("w4a16_g128")
        );
        let h = name_hints("model.rkllm");
        assert_eq!(h, NameHints::default());
        // "rk3588s" is the same NPU.
        assert_eq!(
            name_hints("x-RK3588S.rkllm").platform,
            Some(Platform::Rk3588)
        );
    }

    #[test]
    fn platform_parses_device_tree_and_config_spellings() {
        assert_eq!("rockchip,rk3588".parse(), Ok(Platform::Rk3588));
        assert_eq!("RK3576".parse(), Ok(Platform::Rk3576));
        assert!("rk9999".parse::<Platform>().is_err());
    }

    #[test]
    fn sniff_recognises_foreign_files() {
        assert_eq!(sniff(b"GGUF\x03\0\0\0"), Some(Foreign::Gguf));
        assert_eq!(
            sniff(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab"),
            Some(Foreign::LfsPointer)
        );
        assert_eq!(sniff(b"\n  <!DOCTYPE html><html>"), Some(Foreign::Html));
        assert_eq!(sniff(b"<HTML><body>"), Some(Foreign::Html));
        assert_eq!(sniff(b"\x00\x01RKLLM-ish binary"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn warnings_compare_hints_with_the_board() {
        let hints = name_hints("m_w4a16_rk3576.rkllm");
        let w = warnings(
            "m_w4a16_rk3576.rkllm",
            500 << 20,
            hints,
            Some(Platform::Rk3588),
        );
        assert!(w.contains(&Warning::PlatformHint {
            named: Platform::Rk3576,
            board: Platform::Rk3588
        }));
        assert!(w.iter().any(|w| matches!(
            w,
            Warning::QuantForPlatform {
                platform: Platform::Rk3588,
                ..
            }
        )));
        let hints = name_hints("m_w8a8_rk3588.rkllm");
        assert!(warnings(
            "m_w8a8_rk3588.rkllm",
            500 << 20,
            hints,
            Some(Platform::Rk3588)
        )
        .is_empty());
        let w = warnings("m.bin", 10 << 20, NameHints::default(), None);
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn verdict_separates_the_file_from_the_path() {
        let report = |outcome| RkllmReport {
            path: "/m/x_rk3588.rkllm".into(),
            board: None,
            outcome,
        };
        let r = report(Err(RkllmError::Empty {
            path: "/m/x_rk3588.rkllm".into(),
            advice: advice(Some(Platform::Rk3588)),
        }));
        assert_eq!(r.verdict(), Verdict::ArtifactProblem);
        assert_eq!(
            r.outcome.as_ref().unwrap_err().exit_code(),
            ExitCode::ModelEmpty
        );
        let text = r.to_string();
        assert!(
            text.contains("re-download it or re-convert it for rk3588"),
            "{text}"
        );
        let r = report(Err(RkllmError::Missing {
            path: "/m/x.rkllm".into(),
        }));
        assert_eq!(r.verdict(), Verdict::Unavailable);
        let r = report(Ok(RkllmInfo {
            file_size: 1 << 30,
            hints: NameHints::default(),
            warnings: vec![],
        }));
        assert_eq!(r.verdict(), Verdict::Fine);
    }
}
