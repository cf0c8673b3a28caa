//! Reads what the runtime logged during `rkllm_init` and decides whether the
//! init failed and why, using the runtime's own words only.
//!
//! Older runtimes returned 0 from a failed init and crashed at the first run,
//! so any `E rkllm` / `E RKNN` line during init counts as a failure whatever
//! the return code. A failure is classified only by error texts the runtime
//! is known to print; any other failure is reported with the runtime's line
//! and a generic exit code that lets the supervisor retry, never a guess at
//! a "will never work" code.

use std::fmt;

use proto::worker::ExitCode;

/// Facts the runtime logs at init (with `RKLLM_LOG_LEVEL=1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitFacts {
    /// `rkllm-runtime version: ...`.
    pub runtime_version: Option<String>,
    /// `rkllm-toolkit version: ...` (what the model was converted with).
    pub toolkit_version: Option<String>,
    /// `target_platform: ...` of the model.
    pub target_platform: Option<String>,
    /// `model_dtype: ...`.
    pub model_dtype: Option<String>,
    /// `max_context_limit: ...`: the longest context the model supports.
    pub max_context_limit: Option<u32>,
}

/// Reads the facts from the init log lines (pure).
pub fn facts(lines: &[String]) -> InitFacts {
    let mut f = InitFacts::default();
    for line in lines {
        set_once(&mut f.runtime_version, field(line, "rkllm-runtime version"));
        set_once(&mut f.toolkit_version, field(line, "rkllm-toolkit version"));
        set_once(&mut f.target_platform, field(line, "target_platform"));
        set_once(&mut f.model_dtype, field(line, "model_dtype"));
        if f.max_context_limit.is_none() {
            f.max_context_limit = field(line, "max_context_limit").and_then(|v| v.parse().ok());
        }
    }
    f
}

fn set_once(slot: &mut Option<String>, value: Option<String>) {
    if slot.is_none() {
        *slot = value;
    }
}

/// The value after `key:` (or `key =`) up to the next comma or space.
fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(key)? + key.len();
    let rest = line[at..].trim_start_matches([':', '=', ' ']);
    let value: String = rest
        .chars()
        .take_while(|c| !matches!(c, ',' | ' ' | ')' | ';'))
        .collect();
    (!value.is_empty()).then_some(value)
}

/// Whether a log line is one of the runtime's error lines.
pub fn is_error_line(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("E rkllm") || l.starts_with("E RKNN")
}

/// Why an init failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitCause {
    /// "invalid rkllm model" / "invalid magic": corrupt, truncated, or from
    /// an incompatible toolkit.
    ModelInvalid,
    /// "target_platform does not match": converted for another SoC.
    PlatformMismatch,
    /// "failed to malloc npu memory".
    AcceleratorMemory,
    /// "Platform error" / "platform is unknown": not a supported SoC.
    UnsupportedPlatform,
    /// Context above the model's limit (from an error line, or from the
    /// `max_context_limit` the runtime logged).
    ContextTooLong,
    /// A failure the runtime described in words this worker does not know.
    Unrecognised,
}

impl InitCause {
    /// The worker's exit code for this cause. An unrecognised failure exits
    /// with 1 ("may work after a restart"): only known causes may claim
    /// "will never work".
    pub fn exit_code(self) -> i32 {
        match self {
            Self::ModelInvalid => ExitCode::ModelInvalid.code(),
            Self::PlatformMismatch => ExitCode::PlatformMismatch.code(),
            Self::AcceleratorMemory => ExitCode::AcceleratorMemory.code(),
            Self::UnsupportedPlatform => ExitCode::UnsupportedPlatform.code(),
            Self::ContextTooLong => ExitCode::ContextTooLong.code(),
            Self::Unrecognised => 1,
        }
    }
}

/// The known error texts and their causes, checked in order (the platform
/// mismatch line also says "platform", so it comes before the unknown-platform texts).
const KNOWN: [(&str, InitCause); 8] = [
    ("target_platform", InitCause::PlatformMismatch),
    ("invalid rkllm model", InitCause::ModelInvalid),
    ("invalid magic", InitCause::ModelInvalid),
    ("failed to malloc npu memory", InitCause::AcceleratorMemory),
    ("platform error", InitCause::UnsupportedPlatform),
    ("platform is unknown", InitCause::UnsupportedPlatform),
    ("max_context_len", InitCause::ContextTooLong),
    ("max_context_limit", InitCause::ContextTooLong),
];

fn known_cause(line: &str) -> Option<InitCause> {
    let lower = line.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|(text, _)| lower.contains(text))
        .map(|(_, cause)| *cause)
}

/// A failed init: the cause and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitFailure {
    /// Why.
    pub cause: InitCause,
    /// The runtime's line that says so (or a description of the evidence).
    pub evidence: String,
}

impl fmt::Display for InitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.cause, self.evidence)
    }
}

/// Decides from `rkllm_init`'s return code and the lines the runtime logged
/// during it whether the init failed (pure). `requested_context` is the
/// `max_context_len` the worker asked for.
pub fn classify(code: i32, lines: &[String], requested_context: u32) -> Option<InitFailure> {
    let errors: Vec<&String> = lines.iter().filter(|l| is_error_line(l)).collect();
    // A recognised error line anywhere wins: runtimes often follow the
    // specific line with a generic "load model failed".
    for line in &errors {
        if let Some(cause) = known_cause(line) {
            return Some(InitFailure {
                cause,
                evidence: line.trim().to_owned(),
            });
        }
    }
    // Runtimes that accept a context above the model's limit crash at the
    // first run; the limit they log at init tells us before that happens.
    if let Some(limit) = facts(lines).max_context_limit {
        if requested_context > limit {
            return Some(InitFailure {
                cause: InitCause::ContextTooLong,
                evidence: format!(
                    "the runtime reports max_context_limit {limit}, the profile asks for {requested_context}"
                ),
            });
        }
    }
    if let Some(line) = errors.first() {
        return Some(InitFailure {
            cause: InitCause::Unrecognised,
            evidence: line.trim().to_owned(),
        });
    }
    (code != 0).then(|| InitFailure {
        cause: InitCause::Unrecognised,
        evidence: format!("rkllm_init returned {code} and logged no error line"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn error_line_fails_init_even_when_it_returned_zero() {
        let log = lines(&["I rkllm: loading", "E rkllm: invalid rkllm model!"]);
        let f = classify(0, &log, 4096).unwrap();
        assert_eq!(f.cause, InitCause::ModelInvalid);
        assert_eq!(f.evidence, "E rkllm: invalid rkllm model!");
        assert_eq!(f.cause.exit_code(), 71);
    }

    #[test]
    fn known_texts_map_to_causes() {
        let cases = [
            ("E rkllm: invalid magic characters", InitCause::ModelInvalid),
            (
                "E rkllm: the target_platform does not match: model RK3576",
                InitCause::PlatformMismatch,
            ),
            (
                "E RKNN: failed to malloc npu memory, size: 1, flags: 0x2",
                InitCause::AcceleratorMemory,
            ),
            ("E rkllm: Platform error!", InitCause::UnsupportedPlatform),
            (
                "E rkllm: Your platform is unknown",
                InitCause::UnsupportedPlatform,
            ),
            (
                "E rkllm: max_context_len 8192 > max_context_limit 4096",
                InitCause::ContextTooLong,
            ),
        ];
        for (line, cause) in cases {
            assert_eq!(
                classify(-1, &lines(&[line]), 1024).unwrap().cause,
                cause,
                "{line}"
            );
        }
    }

    #[test]
    fn the_specific_line_wins_over_a_generic_one() {
        let log = lines(&[
            "E rkllm: load model failed",
            "E RKNN: failed to malloc npu memory",
        ]);
        assert_eq!(
            classify(-1, &log, 1024).unwrap().cause,
            InitCause::AcceleratorMemory
        );
    }

    #[test]
    fn unknown_failures_are_not_guessed() {
        let f = classify(0, &lines(&["E rkllm: something new"]), 1024).unwrap();
        assert_eq!(f.cause, InitCause::Unrecognised);
        assert_eq!(f.cause.exit_code(), 1);
        let f = classify(-1, &lines(&["I rkllm: fine"]), 1024).unwrap();
        assert_eq!(f.cause, InitCause::Unrecognised);
        assert!(f.evidence.contains("returned -1"));
        assert_eq!(classify(0, &lines(&["I rkllm: all good"]), 1024), None);
        // Lines that merely mention an error are not error lines.
        assert_eq!(
            classify(0, &lines(&["I rkllm: E rkllm is the error prefix"]), 1024),
            None
        );
    }

    #[test]
    fn logged_context_limit_below_the_request_fails() {
        let log = lines(&[
            "I rkllm: rkllm-toolkit version: 1.2.1, max_context_limit: 4096, npu_core_num: 3, target_platform: RK3588, model_dtype: W8A8",
        ]);
        let f = classify(0, &log, 8192).unwrap();
        assert_eq!(f.cause, InitCause::ContextTooLong);
        assert!(f.evidence.contains("4096") && f.evidence.contains("8192"));
        assert_eq!(classify(0, &log, 4096), None);
    }

    #[test]
    fn facts_are_read_from_info_lines() {
        let log = lines(&[
            "I rkllm: rkllm-runtime version: 1.2.1, rknpu driver version: 0.9.8, platform: RK3588",
            "I rkllm: rkllm-toolkit version: 1.2.1, max_context_limit: 4096, npu_core_num: 3, target_platform: RK3588, model_dtype: W8A8",
        ]);
        let f = facts(&log);
        assert_eq!(f.runtime_version.as_deref(), Some("1.2.1"));
        assert_eq!(f.toolkit_version.as_deref(), Some("1.2.1"));
        assert_eq!(f.target_platform.as_deref(), Some("RK3588"));
        assert_eq!(f.model_dtype.as_deref(), Some("W8A8"));
        assert_eq!(f.max_context_limit, Some(4096));
        assert_eq!(facts(&[]), InitFacts::default());
    }
}
