//! Chat templates of GGUF models: which one the CPU worker uses (the slot's
//! `chat_template` setting, else the one embedded in the file, else the
//! default of the model's architecture), and how that choice is described in
//! `supctl check-model`, the worker's Ready message and status.
//!
//! llama.cpp (`llama_chat_apply_template`) does not run Jinja. Given a
//! template it either finds it by name among its built-in formats
//! ([`BUILTIN`]) or looks for a known format's markers in the text
//! (`<|im_start|>` means ChatML, `<start_of_turn>` Gemma, ...) and renders
//! that built-in format. A template whose markers it does not know is
//! refused: there is no generic interpreter behind it. So a "custom" template
//! works only when it is recognisably one of the built-in formats, and a
//! template llama.cpp cannot place is a load error here, never a silent
//! fallback to ChatML.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// The names llama.cpp accepts for its built-in templates (those of the
/// llama.cpp that llama-cpp-sys-2 0.1.16x builds), most common first: when
/// a template renders like several of them, the first is the one reported.
pub const BUILTIN: [&str; 54] = [
    "chatml",
    "llama3",
    "gemma",
    "phi3",
    "phi4",
    "mistral-v7",
    "mistral-v3",
    "mistral-v1",
    "llama2",
    "llama2-sys",
    "llama2-sys-bos",
    "llama2-sys-strip",
    "mistral-v3-tekken",
    "mistral-v7-tekken",
    "llama4",
    "zephyr",
    "falcon3",
    "command-r",
    "deepseek",
    "deepseek2",
    "deepseek3",
    "deepseek-ocr",
    "chatglm3",
    "chatglm4",
    "glmedge",
    "granite",
    "granite-4.0",
    "granite-4.1",
    "exaone3",
    "exaone4",
    "exaone-moe",
    "minicpm",
    "monarch",
    "orion",
    "openchat",
    "vicuna",
    "vicuna-orca",
    "rwkv-world",
    "gigachat",
    "megrez",
    "yandex",
    "bailing",
    "bailing-think",
    "bailing2",
    "smolvlm",
    "hunyuan-moe",
    "hunyuan-dense",
    "hunyuan-vl",
    "gpt-oss",
    "kimi-k2",
    "seed_oss",
    "grok-2",
    "pangu-embedded",
    "solar-open",
];

/// Whether `name` is one of llama.cpp's built-in template names.
pub fn is_builtin(name: &str) -> bool {
    BUILTIN.contains(&name)
}

/// Special tokens whose presence in a vocabulary shows the chat format a
/// model was tuned on. The GGUF check records which of these the file's
/// vocabulary holds; they settle architectures that several formats share
/// ("llama" is Llama 2, Llama 3, Mistral and SmolLM alike).
pub const VOCAB_MARKERS: [&str; 8] = [
    "<|im_start|>",
    "<|im_sep|>",
    "<|start_header_id|>",
    "<|header_start|>",
    "<start_of_turn>",
    "[INST]",
    "[SYSTEM_PROMPT]",
    "<｜Assistant｜>",
];

/// The template a model without one of its own gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchDefault {
    /// A built-in template name.
    pub name: &'static str,
    /// The model's `general.architecture`.
    pub architecture: String,
    /// The vocabulary token that decided it, when the architecture alone
    /// does not.
    pub marker: Option<&'static str>,
}

/// The built-in template for a model whose file carries none, from its
/// architecture and the [`VOCAB_MARKERS`] its vocabulary holds; `None` when
/// neither says (the operator must then name one).
pub fn default_for(architecture: Option<&str>, markers: &[String]) -> Option<ArchDefault> {
    let arch = architecture?;
    let has = |m: &str| markers.iter().any(|k| k == m);
    // The format the vocabulary's special tokens point to, most specific first.
    let by_vocab = || -> Option<(&'static str, &'static str)> {
        [
            ("[SYSTEM_PROMPT]", "mistral-v7"),
            ("[INST]", "mistral-v3"),
            ("<|im_sep|>", "phi4"),
            ("<|im_start|>", "chatml"),
            ("<|start_header_id|>", "llama3"),
            ("<|header_start|>", "llama4"),
            ("<start_of_turn>", "gemma"),
            ("<｜Assistant｜>", "deepseek3"),
        ]
        .into_iter()
        .find(|(m, name)| has(m) && (*name != "phi4" || has("<|im_start|>")))
        .map(|(m, name)| (name, m))
    };
    let fixed = |name: &'static str| Some((name, None));
    let (name, marker) = match arch {
        "gemma" | "gemma2" | "gemma3" | "gemma3n" => fixed("gemma"),
        "qwen" | "qwen2" | "qwen2moe" | "qwen2vl" | "qwen3" | "qwen3moe" | "smollm3" => {
            fixed("chatml")
        }
        "llama4" => fixed("llama4"),
        "command-r" | "cohere2" => fixed("command-r"),
        "deepseek" => fixed("deepseek"),
        "glm4" => fixed("chatglm4"),
        "exaone" => fixed("exaone3"),
        "exaone4" => fixed("exaone4"),
        "granite" | "granitemoe" => fixed("granite"),
        "minicpm" => fixed("minicpm"),
        "rwkv6" | "rwkv7" => fixed("rwkv-world"),
        "orion" => fixed("orion"),
        "gpt-oss" => fixed("gpt-oss"),
        "hunyuan-moe" => fixed("hunyuan-moe"),
        "hunyuan-dense" => fixed("hunyuan-dense"),
        "bailingmoe" => fixed("bailing"),
        "bailingmoe2" => fixed("bailing2"),
        "grok" => fixed("grok-2"),
        "seed_oss" => fixed("seed_oss"),
        // Phi-4 keeps the phi3 architecture but speaks ChatML-like turns.
        "phi3" | "phimoe" => match by_vocab() {
            Some(("phi4", m)) => Some(("phi4", Some(m))),
            _ => fixed("phi3"),
        },
        "deepseek2" => match by_vocab() {
            Some(("deepseek3", m)) => Some(("deepseek3", Some(m))),
            _ => fixed("deepseek2"),
        },
        // Llama 2 chat and the first Mistral releases have no special turn
        // tokens; everything later built on this architecture does.
        "llama" => by_vocab()
            .map(|(name, m)| (name, Some(m)))
            .or(Some(("llama2", None))),
        _ => by_vocab().map(|(name, m)| (name, Some(m))),
    }?;
    Some(ArchDefault {
        name,
        architecture: arch.to_owned(),
        marker,
    })
}

/// What the slot's `chat_template` setting asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// A built-in template by name ("gemma").
    Named(String),
    /// A file holding a template (any value with a `/`).
    File(PathBuf),
}

impl Setting {
    /// Reads a setting: a value with a `/` is a file path (names never have
    /// one), anything else a built-in name.
    pub fn parse(value: &str) -> Self {
        if value.contains('/') {
            Self::File(PathBuf::from(value))
        } else {
            Self::Named(value.to_owned())
        }
    }
}

/// Where the template in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The model file's own `tokenizer.chat_template`.
    Embedded,
    /// Named by the slot's `chat_template`.
    Config,
    /// Read from the file the slot's `chat_template` names.
    ConfigFile(PathBuf),
    /// The default for the model's architecture (the file has none).
    Architecture(ArchDefault),
}

/// How the worker is to get its template (the decision without llama.cpp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A built-in template by name.
    Named {
        /// Built-in name.
        name: String,
        /// Config or architecture.
        origin: Origin,
    },
    /// The text of a template file.
    File(PathBuf),
    /// The template embedded in the model file.
    Embedded,
}

/// Decides where the template comes from: the slot's setting first, then
/// the model file's own template, then its architecture's default.
///
/// # Errors
/// [`TemplateError::UnknownName`] for a setting that names no built-in
/// template, [`TemplateError::NoTemplate`] when nothing provides one.
pub fn plan(
    setting: Option<&str>,
    embedded: bool,
    default: Option<ArchDefault>,
    architecture: Option<&str>,
) -> Result<Plan, TemplateError> {
    match setting.map(Setting::parse) {
        Some(Setting::Named(name)) if is_builtin(&name) => Ok(Plan::Named {
            name,
            origin: Origin::Config,
        }),
        Some(Setting::Named(name)) => Err(TemplateError::UnknownName { name }),
        Some(Setting::File(path)) => Ok(Plan::File(path)),
        None if embedded => Ok(Plan::Embedded),
        None => match default {
            Some(default) => Ok(Plan::Named {
                name: default.name.to_owned(),
                origin: Origin::Architecture(default),
            }),
            None => Err(TemplateError::NoTemplate {
                architecture: architecture.map(str::to_owned),
            }),
        },
    }
}

/// The template in use and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// The built-in format llama.cpp renders (`None` when it is not known,
    /// e.g. in `check-model`, which reads an embedded template without
    /// llama.cpp).
    pub name: Option<String>,
    /// Where it came from.
    pub origin: Origin,
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.as_deref();
        match (&self.origin, name) {
            (Origin::Embedded, Some(n)) => write!(f, "{n} (embedded in the model file)"),
            (Origin::Embedded, None) => f.write_str("embedded in the model file"),
            (Origin::Config, n) => write!(f, "{} (set by chat_template)", n.unwrap_or("?")),
            (Origin::ConfigFile(path), Some(n)) => write!(
                f,
                "{n} (file {} set by chat_template, which llama.cpp renders as {n})",
                path.display()
            ),
            (Origin::ConfigFile(path), None) => {
                write!(f, "file {} set by chat_template", path.display())
            }
            (Origin::Architecture(d), _) => {
                write!(f, "{} (default for architecture {}", d.name, d.architecture)?;
                if let Some(m) = d.marker {
                    write!(f, " with {m} in its vocabulary")?;
                }
                f.write_str("; the model file has no template)")
            }
        }
    }
}

/// Why no usable chat template could be settled on.
#[derive(Debug, Error)]
pub enum TemplateError {
    /// The setting names no built-in template.
    #[error("chat_template {name:?} is not one of llama.cpp's built-in templates ({}); to use a template file, give its path with a '/' (e.g. \"./template.jinja\")", BUILTIN.join(", "))]
    UnknownName {
        /// The value given.
        name: String,
    },
    /// No setting, nothing embedded, no default for the architecture.
    #[error("the model file has no chat template and architecture {} has no default one: set chat_template in the slot's [cpu] table to the model's format (e.g. \"chatml\", \"llama3\", \"gemma\"; see the README)", .architecture.as_deref().unwrap_or("(not set)"))]
    NoTemplate {
        /// The model's architecture, when set.
        architecture: Option<String>,
    },
    /// The template file cannot be read.
    #[error("chat template file {path} cannot be read: {source}")]
    FileUnreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The template file is empty, too large or not text.
    #[error("chat template file {path} {problem}")]
    FileUnusable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// llama.cpp cannot place the template among its built-in formats.
    #[error("{what} is not a template llama.cpp recognises: llama.cpp does not run Jinja, it renders one of its built-in formats, chosen by name or by the markers it finds in the template (such as <|im_start|> for chatml); set chat_template in the slot's [cpu] table to the name of the model's format ({})", BUILTIN[..8].join(", "))]
    Unrecognised {
        /// Which template ("the model file's embedded chat template").
        what: String,
    },
}

/// The longest template file read: real templates are a few KiB.
pub const MAX_FILE: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn markers(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_architecture_picks_the_default() {
        let d = default_for(Some("gemma3"), &[]).unwrap();
        assert_eq!((d.name, d.marker), ("gemma", None));
        assert_eq!(default_for(Some("qwen2"), &[]).unwrap().name, "chatml");
        assert_eq!(default_for(Some("phi3"), &[]).unwrap().name, "phi3");
        assert_eq!(
            default_for(Some("phi3"), &markers(&["<|im_start|>", "<|im_sep|>"]))
                .unwrap()
                .name,
            "phi4"
        );
        assert_eq!(default_for(None, &markers(&["<|im_start|>"])), None);
        assert_eq!(default_for(Some("bert"), &[]), None);
    }

    #[test]
    fn the_vocabulary_settles_a_shared_architecture() {
        // SmolLM2 and Llama 3 are both "llama".
        let d = default_for(Some("llama"), &markers(&["<|im_start|>"])).unwrap();
        assert_eq!((d.name, d.marker), ("chatml", Some("<|im_start|>")));
        let d = default_for(Some("llama"), &markers(&["<|start_header_id|>"])).unwrap();
        assert_eq!(d.name, "llama3");
        let d = default_for(Some("llama"), &markers(&["[INST]", "[SYSTEM_PROMPT]"])).unwrap();
        assert_eq!(d.name, "mistral-v7");
        assert_eq!(default_for(Some("llama"), &[]).unwrap().name, "llama2");
        // <|im_sep|> alone is no ChatML.
        assert_eq!(
            default_for(Some("llama"), &markers(&["<|im_sep|>"]))
                .unwrap()
                .name,
            "llama2"
        );
        // An architecture this table does not know, with a telling vocabulary.
        let d = default_for(Some("newarch"), &markers(&["<start_of_turn>"])).unwrap();
        assert_eq!(d.name, "gemma");
        let text = InUse {
            name: Some("gemma".into()),
            origin: Origin::Architecture(d),
        }
        .to_string();
        assert!(
            text.contains("default for architecture newarch with <start_of_turn>"),
            "{text}"
        );
    }

    #[test]
    fn every_default_is_a_builtin_name() {
        for arch in [
            "gemma",
            "gemma3",
            "qwen2",
            "llama",
            "llama4",
            "phi3",
            "deepseek2",
            "glm4",
            "grok",
            "rwkv7",
            "gpt-oss",
            "bailingmoe2",
        ] {
            for m in [vec![], markers(&VOCAB_MARKERS)] {
                if let Some(d) = default_for(Some(arch), &m) {
                    assert!(is_builtin(d.name), "{arch}: {}", d.name);
                }
            }
        }
        let mut sorted = BUILTIN.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), BUILTIN.len(), "no name twice");
    }

    #[test]
    fn the_setting_comes_first_then_the_file_then_the_architecture() {
        let gemma = default_for(Some("gemma3"), &[]);
        assert_eq!(
            plan(Some("llama3"), true, gemma.clone(), Some("gemma3")).unwrap(),
            Plan::Named {
                name: "llama3".into(),
                origin: Origin::Config
            }
        );
        assert_eq!(
            plan(Some("./t.jinja"), true, gemma.clone(), Some("gemma3")).unwrap(),
            Plan::File("./t.jinja".into())
        );
        assert_eq!(
            plan(None, true, gemma.clone(), Some("gemma3")).unwrap(),
            Plan::Embedded
        );
        assert!(matches!(
            plan(None, false, gemma, Some("gemma3")).unwrap(),
            Plan::Named { ref name, origin: Origin::Architecture(_) } if name == "gemma"
        ));
        let err = plan(None, false, None, Some("bert")).unwrap_err();
        assert!(
            err.to_string().contains("architecture bert has no default"),
            "{err}"
        );
        // A typo is refused, not replaced by ChatML.
        let err = plan(Some("gema"), false, None, None).unwrap_err();
        assert!(matches!(err, TemplateError::UnknownName { .. }));
        assert!(err.to_string().contains("\"gema\""), "{err}");
    }
}
