//! `supctl check-model PATH`: is this model file sound? Works without a
//! running supervisor, says plainly whether the file is the problem, and
//! answers in its exit status too (see [`exit_status`]).

use std::fmt::Write as _;
use std::path::Path;

use proto::artifact::gguf::{self, GgufError};
use proto::artifact::rkllm::{self, Platform};

pub use proto::artifact::rkllm::Verdict;

/// Exit status of `supctl check-model` for each verdict. 1 and 2 are left to
/// supctl's own errors and to bad arguments, so a script can tell "the file
/// is broken" from "supctl could not run".
pub fn exit_status(verdict: Verdict) -> u8 {
    match verdict {
        // No problem found in the file.
        Verdict::Fine => 0,
        // Loadable, but something looks wrong (e.g. converted for another
        // SoC than --board): the runtime may well refuse it.
        Verdict::Suspect => 3,
        // The file itself is broken or the wrong kind: fetch it again.
        Verdict::ArtifactProblem => 4,
        // Missing or unreadable: fix the path or permissions first.
        Verdict::Unavailable => 5,
    }
}

/// What a check found: the report text and the verdict.
#[derive(Debug)]
pub struct Checked {
    /// The report, one `label: value` line each, ending in the verdict.
    pub text: String,
    /// The plain answer.
    pub verdict: Verdict,
}

/// Checks the model file at `path`; `board` is the SoC the file is meant for
/// (`.rkllm` files only).
pub fn check_model(path: &Path, board: Option<Platform>) -> Checked {
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || std::fs::File::open(path)
            .and_then(|mut f| {
                let mut magic = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic == gguf::MAGIC)
            })
            .unwrap_or(false);
    if is_gguf {
        gguf_report(path)
    } else {
        let report = rkllm::inspect(path, board);
        Checked {
            text: format!("format:   RKLLM (.rkllm)\n{report}\n"),
            verdict: report.verdict(),
        }
    }
}

fn gguf_report(path: &Path) -> Checked {
    let mut out = String::new();
    let _ = writeln!(out, "model:    {}", path.display());
    let _ = writeln!(out, "format:   GGUF");
    match gguf::check(path) {
        Ok(info) => {
            let or_none = |v: Option<String>| v.unwrap_or_else(|| "(not set)".into());
            let _ = writeln!(out, "size:     {} bytes", info.file_size);
            let _ = writeln!(out, "version:  {}", info.version);
            let _ = writeln!(out, "tensors:  {}", info.tensor_count);
            let _ = writeln!(out, "metadata: {} entries", info.metadata_count);
            let _ = writeln!(out, "arch:     {}", or_none(info.architecture));
            let _ = writeln!(out, "name:     {}", or_none(info.name));
            let _ = writeln!(
                out,
                "context:  {}",
                or_none(info.context_length.map(|c| format!("{c} tokens (trained)")))
            );
            let _ = writeln!(
                out,
                "template: {}",
                if info.has_chat_template {
                    "embedded"
                } else {
                    "none (ChatML is used)"
                }
            );
            let _ = writeln!(
                out,
                "data:     {} bytes of tensors from offset {}; the file holds all of it",
                info.data_size, info.data_offset
            );
            let _ = writeln!(out, "verdict:  no problem found in the model file");
            Checked {
                text: out,
                verdict: Verdict::Fine,
            }
        }
        Err(e) => {
            let _ = writeln!(out, "problem:  {e}");
            let verdict = if matches!(e, GgufError::Missing { .. } | GgufError::Unreadable { .. }) {
                Verdict::Unavailable
            } else {
                Verdict::ArtifactProblem
            };
            let _ = writeln!(
                out,
                "verdict:  {}",
                if verdict == Verdict::ArtifactProblem {
                    "the model file is the problem (re-download it, or re-convert it with a current llama.cpp)"
                } else {
                    "the model file could not be examined (fix the path or permissions first)"
                }
            );
            Checked { text: out, verdict }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_name_the_artifact_problem() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("m.gguf");
        std::fs::write(&bad, b"GGUF\x03\x00\x00\x00").unwrap();
        let c = check_model(&bad, None);
        assert_eq!(c.verdict, Verdict::ArtifactProblem);
        assert!(
            c.text.contains("truncated") && c.text.contains("the model file is the problem"),
            "{}",
            c.text
        );
        let c = check_model(&dir.path().join("none.gguf"), None);
        assert_eq!(c.verdict, Verdict::Unavailable);
        assert!(c.text.contains("could not be examined"), "{}", c.text);
        let empty = dir.path().join("qwen-rk3588-w8a8.rkllm");
        std::fs::write(&empty, b"").unwrap();
        let c = check_model(&empty, Some(Platform::Rk3588));
        assert_eq!(c.verdict, Verdict::ArtifactProblem);
        assert!(c.text.contains("RKLLM") && c.text.contains("problem"), "{}", c.text);
    }

    #[test]
    fn each_verdict_has_its_own_nonzero_status_but_fine() {
        let all = [
            Verdict::Fine,
            Verdict::Suspect,
            Verdict::ArtifactProblem,
            Verdict::Unavailable,
        ];
        let mut codes: Vec<u8> = all.iter().map(|v| exit_status(*v)).collect();
        assert_eq!(codes[0], 0);
        // Not supctl's own failure (1) nor clap's usage error (2).
        assert!(codes[1..].iter().all(|c| *c > 2), "{codes:?}");
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
