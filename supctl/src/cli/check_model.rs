//! `supctl check-model PATH`: is this model file sound? Works without a
//! running supervisor, says plainly whether the file is the problem, and
//! answers in its exit status too (see [`exit_status`]).

use std::fmt::Write as _;
use std::path::Path;

use model_check::gguf::{self, GgufError, GgufInfo};
use model_check::rkllm::{self, Platform};
use model_check::template::{self, InUse, Plan};
use proto::chat::Backend;

use supervisor::config::Config;

pub use model_check::rkllm::Verdict;

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

/// A CPU slot's `chat_template` setting for the model being checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredTemplate {
    /// Dotted config key, e.g. `slots.fallback.cpu.chat_template`.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// The `chat_template` of the CPU slot of `config` that serves `model` (as
/// its model or its fallback model), if one sets it.
pub fn configured_template(config: &Config, model: &Path) -> Option<ConfiguredTemplate> {
    let same = |p: &Path| {
        p == model || matches!((p.canonicalize(), model.canonicalize()), (Ok(a), Ok(b)) if a == b)
    };
    config.slot_list().into_iter().find_map(|(name, slot)| {
        let serves = slot.backend == Backend::Cpu
            && (same(&slot.model) || slot.fallback_model.as_deref().is_some_and(same));
        let value = slot.cpu.chat_template.clone().filter(|_| serves)?;
        Some(ConfiguredTemplate {
            key: format!("slots.{name}.cpu.chat_template"),
            value,
        })
    })
}

/// Checks the model file at `path`; `board` is the SoC the file is meant for
/// (`.rkllm` files only), `configured` the template a CPU slot sets for it.
pub fn check_model(
    path: &Path,
    board: Option<Platform>,
    configured: Option<&ConfiguredTemplate>,
) -> Checked {
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
        gguf_report(path, configured)
    } else {
        let report = rkllm::inspect(path, board);
        Checked {
            text: format!("format:   RKLLM (.rkllm)\n{report}\n"),
            verdict: report.verdict(),
        }
    }
}

/// The template line of a sound GGUF file, and whether the CPU worker will
/// find a template at all.
fn template_line(info: &GgufInfo, configured: Option<&ConfiguredTemplate>) -> (String, bool) {
    let arch = info.architecture.as_deref();
    let default = template::default_for(arch, &info.vocab_markers);
    let setting = configured.map(|c| c.value.as_str());
    let text = match template::plan(setting, info.has_chat_template, default, arch) {
        Ok(Plan::Named { name, origin }) => InUse {
            name: Some(name),
            origin,
        }
        .to_string(),
        Ok(Plan::File(path)) => format!(
            "file {} set by chat_template (the worker checks at load that llama.cpp recognises its format)",
            path.display()
        ),
        Ok(Plan::Embedded) => "embedded in the model file (the worker checks at load that llama.cpp recognises its format)".to_owned(),
        Err(e) => return (format!("none usable: {e}"), false),
    };
    let text = match configured {
        Some(c) => format!("{text}\nconfig:   {} = {:?}", c.key, c.value),
        None => text,
    };
    (text, true)
}

fn gguf_report(path: &Path, configured: Option<&ConfiguredTemplate>) -> Checked {
    let mut out = String::new();
    let _ = writeln!(out, "model:    {}", path.display());
    let _ = writeln!(out, "format:   GGUF");
    match gguf::check(path) {
        Ok(info) => {
            let (template, has_template) = template_line(&info, configured);
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
            let _ = writeln!(out, "template: {template}");
            let _ = writeln!(
                out,
                "data:     {} bytes of tensors from offset {}; the file holds all of it",
                info.data_size, info.data_offset
            );
            if has_template {
                let _ = writeln!(out, "verdict:  no problem found in the model file");
                Checked {
                    text: out,
                    verdict: Verdict::Fine,
                }
            } else {
                let _ = writeln!(
                    out,
                    "verdict:  the file is sound, but the CPU worker will not load it until chat_template names its chat format"
                );
                Checked {
                    text: out,
                    verdict: Verdict::Suspect,
                }
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
        let c = check_model(&bad, None, None);
        assert_eq!(c.verdict, Verdict::ArtifactProblem);
        assert!(
            c.text.contains("truncated") && c.text.contains("the model file is the problem"),
            "{}",
            c.text
        );
        let c = check_model(&dir.path().join("none.gguf"), None, None);
        assert_eq!(c.verdict, Verdict::Unavailable);
        assert!(c.text.contains("could not be examined"), "{}", c.text);
        let empty = dir.path().join("qwen-rk3588-w8a8.rkllm");
        std::fs::write(&empty, b"").unwrap();
        let c = check_model(&empty, Some(Platform::Rk3588), None);
        assert_eq!(c.verdict, Verdict::ArtifactProblem);
        assert!(
            c.text.contains("RKLLM") && c.text.contains("problem"),
            "{}",
            c.text
        );
    }

    #[test]
    fn the_template_line_says_which_template_and_why() {
        let info = |arch: &str, embedded: bool| GgufInfo {
            architecture: Some(arch.into()),
            has_chat_template: embedded,
            ..GgufInfo::default()
        };
        let (text, ok) = template_line(&info("gemma3", false), None);
        assert!(ok);
        assert!(
            text.starts_with("gemma (default for architecture gemma3"),
            "{text}"
        );
        let (text, ok) = template_line(&info("gemma3", true), None);
        assert!(
            ok && text.starts_with("embedded in the model file"),
            "{text}"
        );
        let configured = ConfiguredTemplate {
            key: "slots.fallback.cpu.chat_template".into(),
            value: "llama3".into(),
        };
        let (text, ok) = template_line(&info("gemma3", true), Some(&configured));
        assert!(
            ok && text.starts_with("llama3 (set by chat_template)"),
            "{text}"
        );
        assert!(
            text.contains("slots.fallback.cpu.chat_template = \"llama3\""),
            "{text}"
        );
        // Nothing says which format: not ChatML by default, a clear need.
        let (text, ok) = template_line(&info("bert", false), None);
        assert!(!ok);
        assert!(text.contains("set chat_template"), "{text}");
    }

    #[test]
    fn the_configured_template_is_the_one_of_the_slot_serving_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[slots.primary]\nbackend = \"cpu\"\nmodel = \"a.gguf\"\n\
                    [slots.fallback]\nbackend = \"cpu\"\nmodel = \"b.gguf\"\n\
                    [slots.fallback.cpu]\nchat_template = \"gemma\"\n";
        let config = Config::from_toml(text, dir.path()).unwrap();
        assert_eq!(
            configured_template(&config, &dir.path().join("a.gguf")),
            None
        );
        assert_eq!(
            configured_template(&config, &dir.path().join("b.gguf")),
            Some(ConfiguredTemplate {
                key: "slots.fallback.cpu.chat_template".into(),
                value: "gemma".into()
            })
        );
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
