//! `supctl check-model PATH`: is this model file sound? Works without a
//! running supervisor and says plainly whether the file is the problem.

use std::fmt::Write as _;
use std::path::Path;

use proto::artifact::gguf::{self, GgufError};
use proto::artifact::rkllm::{self, Platform, Verdict};

/// The report text and whether the file is fit to load.
pub fn check_model(path: &Path, board: Option<Platform>) -> (String, bool) {
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
        let fine = matches!(report.verdict(), Verdict::Fine | Verdict::Suspect);
        (format!("format:   RKLLM (.rkllm)\n{report}\n"), fine)
    }
}

fn gguf_report(path: &Path) -> (String, bool) {
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
            (out, true)
        }
        Err(e) => {
            let _ = writeln!(out, "problem:  {e}");
            let artifact = !matches!(e, GgufError::Missing { .. } | GgufError::Unreadable { .. });
            let _ = writeln!(
                out,
                "verdict:  {}",
                if artifact {
                    "the model file is the problem (re-download it, or re-convert it with a current llama.cpp)"
                } else {
                    "the model file could not be examined (fix the path or permissions first)"
                }
            );
            (out, false)
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
        let (text, ok) = check_model(&bad, None);
        assert!(!ok);
        assert!(
            text.contains("truncated") && text.contains("the model file is the problem"),
            "{text}"
        );
        let (text, ok) = check_model(&dir.path().join("none.gguf"), None);
        assert!(!ok);
        assert!(text.contains("could not be examined"), "{text}");
        let empty = dir.path().join("qwen-rk3588-w8a8.rkllm");
        std::fs::write(&empty, b"").unwrap();
        let (text, ok) = check_model(&empty, Some(Platform::Rk3588));
        assert!(!ok);
        assert!(text.contains("RKLLM") && text.contains("problem"), "{text}");
    }
}
