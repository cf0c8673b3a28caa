//! Turns a conversation into what the RKLLM runtime takes: one prompt string
//! plus the chat template (`system prompt`, `prefix`, `postfix`) that the
//! runtime wraps it in as `system + prefix + prompt + postfix`.
//!
//! The runtime knows nothing of multi-turn history or of an assistant turn
//! that has already begun, so the whole transcript is rendered here in the
//! model family's format and then cut into the four parts so that their
//! concatenation is exactly the transcript. An assistant prefix (text already
//! shown to the user before a failover) ends the transcript, so the model
//! continues after it instead of starting over.

use std::fmt;

use proto::chat::{ChatMessage, Role};
use thiserror::Error;

/// A chat format, detected from the model's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// ChatML (`<|im_start|>`): Qwen 1.5/2/2.5, SmolLM, InternLM and the default.
    ChatMl,
    /// Qwen3: ChatML with an empty thinking block, so the model answers directly.
    Qwen3,
    /// DeepSeek-R1 distills (`<｜User｜>` / `<｜Assistant｜>`).
    DeepSeekR1,
    /// Llama 3.x (`<|start_header_id|>`).
    Llama3,
    /// Phi-3 (`<|user|>`).
    Phi3,
    /// Gemma (`<start_of_turn>`; no system role).
    Gemma,
}

impl Family {
    /// The family a model file name points to (any path works; only the file name counts).
    pub fn detect(file_name: &str) -> Self {
        let base = file_name
            .rsplit('/')
            .next()
            .unwrap_or(file_name)
            .to_ascii_lowercase();
        let tokens: Vec<&str> = base
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|t| !t.is_empty())
            .collect();
        let has = |pred: &dyn Fn(&str) -> bool| tokens.iter().any(|t| pred(t));
        // DeepSeek distills carry the base model's name too ("...-Distill-Qwen-1.5B"),
        // but speak DeepSeek's format: check it first.
        if has(&|t| t.starts_with("deepseek")) {
            Self::DeepSeekR1
        } else if has(&|t| t.starts_with("qwen3")) {
            Self::Qwen3
        } else if has(&|t| {
            t.starts_with("qwen") || t.starts_with("smollm") || t.starts_with("internlm")
        }) {
            Self::ChatMl
        } else if has(&|t| t.starts_with("llama")) {
            Self::Llama3
        } else if has(&|t| {
            t == "phi" || (t.starts_with("phi") && t[3..].starts_with(|c: char| c.is_ascii_digit()))
        }) {
            Self::Phi3
        } else if has(&|t| t.starts_with("gemma")) {
            Self::Gemma
        } else {
            Self::ChatMl
        }
    }

    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChatMl => "chatml",
            Self::Qwen3 => "qwen3",
            Self::DeepSeekR1 => "deepseek-r1",
            Self::Llama3 => "llama3",
            Self::Phi3 => "phi3",
            Self::Gemma => "gemma",
        }
    }

    /// The family's turn markers.
    pub fn format(self) -> Format {
        let chatml = Format {
            system_open: "<|im_start|>system\n",
            system_close: "<|im_end|>\n",
            default_system: Some("You are a helpful assistant."),
            user_open: "<|im_start|>user\n",
            user_close: "<|im_end|>\n",
            assistant_open: "<|im_start|>assistant\n",
            reply_open: "<|im_start|>assistant\n",
            assistant_close: "<|im_end|>\n",
            system_role: true,
        };
        match self {
            Self::ChatMl => chatml,
            Self::Qwen3 => Format {
                default_system: None,
                reply_open: "<|im_start|>assistant\n<think>\n\n</think>\n\n",
                ..chatml
            },
            Self::DeepSeekR1 => Format {
                system_open: "",
                system_close: "",
                default_system: None,
                user_open: "<｜User｜>",
                user_close: "",
                assistant_open: "<｜Assistant｜>",
                reply_open: "<｜Assistant｜>",
                assistant_close: "<｜end▁of▁sentence｜>",
                system_role: true,
            },
            Self::Llama3 => Format {
                system_open: "<|start_header_id|>system<|end_header_id|>\n\n",
                system_close: "<|eot_id|>",
                default_system: None,
                user_open: "<|start_header_id|>user<|end_header_id|>\n\n",
                user_close: "<|eot_id|>",
                assistant_open: "<|start_header_id|>assistant<|end_header_id|>\n\n",
                reply_open: "<|start_header_id|>assistant<|end_header_id|>\n\n",
                assistant_close: "<|eot_id|>",
                system_role: true,
            },
            Self::Phi3 => Format {
                system_open: "<|system|>\n",
                system_close: "<|end|>\n",
                default_system: None,
                user_open: "<|user|>\n",
                user_close: "<|end|>\n",
                assistant_open: "<|assistant|>\n",
                reply_open: "<|assistant|>\n",
                assistant_close: "<|end|>\n",
                system_role: true,
            },
            Self::Gemma => Format {
                system_open: "",
                system_close: "",
                default_system: None,
                user_open: "<start_of_turn>user\n",
                user_close: "<end_of_turn>\n",
                assistant_open: "<start_of_turn>model\n",
                reply_open: "<start_of_turn>model\n",
                assistant_close: "<end_of_turn>\n",
                system_role: false,
            },
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Turn markers of a chat format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Before the system text.
    pub system_open: &'static str,
    /// After the system text.
    pub system_close: &'static str,
    /// System text used when neither the request nor the config gives one.
    pub default_system: Option<&'static str>,
    /// Before a user turn.
    pub user_open: &'static str,
    /// After a user turn.
    pub user_close: &'static str,
    /// Before an assistant turn of the history.
    pub assistant_open: &'static str,
    /// Before the assistant turn the model is to write.
    pub reply_open: &'static str,
    /// After an assistant turn of the history.
    pub assistant_close: &'static str,
    /// Whether the format has a system role (Gemma's does not: the system
    /// text goes at the start of the first user turn).
    pub system_role: bool,
}

/// The operator's template settings (`NpuOptions`), each replacing the
/// family's default when set: `system_prompt` is the system text used when a
/// request brings no system message (wrapped in the family's system markers
/// like a request's own); `prompt_prefix` goes literally before every user
/// turn; `prompt_postfix` literally after it (closing the user turn and
/// opening the assistant's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Default system text.
    pub system_prompt: Option<String>,
    /// Text before each user turn.
    pub prompt_prefix: Option<String>,
    /// Text after each user turn.
    pub prompt_postfix: Option<String>,
}

/// The template handed to `rkllm_set_chat_template`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// System block.
    pub system_prompt: String,
    /// Before the prompt.
    pub prompt_prefix: String,
    /// After the prompt.
    pub prompt_postfix: String,
}

/// A conversation ready for the runtime. `Debug` shows only sizes: prompts
/// are user text.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedPrompt {
    /// The template for this request.
    pub template: ChatTemplate,
    /// The prompt string for `rkllm_run`.
    pub input: String,
}

impl RenderedPrompt {
    /// What the model sees: the template and the prompt put together the way
    /// the runtime does.
    pub fn transcript(&self) -> String {
        let t = &self.template;
        [
            t.system_prompt.as_str(),
            &t.prompt_prefix,
            &self.input,
            &t.prompt_postfix,
        ]
        .concat()
    }
}

impl fmt::Debug for RenderedPrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedPrompt")
            .field("system_bytes", &self.template.system_prompt.len())
            .field("input_bytes", &self.input.len())
            .finish()
    }
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("system_bytes", &self.system_prompt.len())
            .field("prompt_prefix", &self.prompt_prefix)
            .field("prompt_postfix", &self.prompt_postfix)
            .finish()
    }
}

/// A conversation that cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChatError {
    /// No user message at all.
    #[error("the conversation has no user message")]
    NoUserMessage,
    /// The last turn is not the user's (and there is no assistant prefix to continue).
    #[error("the conversation must end with a user message")]
    LastNotUser,
    /// A NUL byte, which C strings cannot carry.
    #[error("a message contains a NUL byte")]
    Nul,
}

/// Renders `messages` (system messages anywhere, then user/assistant turns
/// ending with the user's) for `family`, with the operator's `overrides`, and
/// `assistant_prefix` as the start of the reply.
///
/// # Errors
/// [`ChatError`] for a conversation without a final user turn or with NUL bytes.
pub fn render(
    family: Family,
    overrides: &Overrides,
    messages: &[ChatMessage],
    assistant_prefix: &str,
) -> Result<RenderedPrompt, ChatError> {
    let format = family.format();
    if messages.iter().any(|m| m.content.contains('\0')) || assistant_prefix.contains('\0') {
        return Err(ChatError::Nul);
    }
    let system_texts: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let turns = merge_turns(messages);
    match turns.last() {
        None => return Err(ChatError::NoUserMessage),
        Some((Role::User, _)) => {}
        Some(_) => return Err(ChatError::LastNotUser),
    }

    let prefix = overrides
        .prompt_prefix
        .clone()
        .unwrap_or_else(|| format.user_open.to_owned());
    let history_postfix = overrides
        .prompt_postfix
        .clone()
        .unwrap_or_else(|| [format.user_close, format.assistant_open].concat());
    let reply_postfix = overrides
        .prompt_postfix
        .clone()
        .unwrap_or_else(|| [format.user_close, format.reply_open].concat());

    // The request's own system text wins, then the operator's, then the family's.
    let system_text = if system_texts.is_empty() {
        overrides
            .system_prompt
            .clone()
            .or_else(|| format.default_system.map(str::to_owned))
    } else {
        Some(system_texts.join("\n\n"))
    };
    let mut system_block = String::new();
    let mut system_in_first_user = None;
    match (system_text, format.system_role) {
        (Some(text), true) => {
            system_block = [format.system_open, &text, format.system_close].concat();
        }
        (Some(text), false) => system_in_first_user = Some(text),
        (None, _) => {}
    }

    let mut body = String::new();
    let last = turns.len() - 1;
    let mut after_user = false;
    for (i, (role, content)) in turns.iter().enumerate() {
        match role {
            Role::User => {
                body.push_str(&prefix);
                if let Some(system) = system_in_first_user.take() {
                    body.push_str(&system);
                    body.push_str("\n\n");
                }
                body.push_str(content);
                body.push_str(if i == last {
                    &reply_postfix
                } else {
                    &history_postfix
                });
                after_user = true;
            }
            Role::Assistant => {
                if !after_user {
                    body.push_str(format.assistant_open);
                }
                body.push_str(content);
                body.push_str(format.assistant_close);
                after_user = false;
            }
            Role::System => {}
        }
    }
    body.push_str(assistant_prefix);

    // Cut the body so that system + prefix + input + postfix == transcript.
    let (prompt_prefix, rest) = match body.strip_prefix(prefix.as_str()) {
        Some(rest) => (prefix.clone(), rest),
        None => (String::new(), body.as_str()),
    };
    let (input, prompt_postfix) = match rest.strip_suffix(reply_postfix.as_str()) {
        Some(input) if !reply_postfix.is_empty() => (input.to_owned(), reply_postfix.clone()),
        _ => (rest.to_owned(), String::new()),
    };
    Ok(RenderedPrompt {
        template: ChatTemplate {
            system_prompt: system_block,
            prompt_prefix,
            prompt_postfix,
        },
        input,
    })
}

/// User and assistant turns in order, consecutive turns of one role merged
/// (formats expect them to alternate).
fn merge_turns(messages: &[ChatMessage]) -> Vec<(Role, String)> {
    let mut turns: Vec<(Role, String)> = Vec::new();
    for m in messages.iter().filter(|m| m.role != Role::System) {
        match turns.last_mut() {
            Some((role, text)) if *role == m.role => {
                text.push_str("\n\n");
                text.push_str(&m.content);
            }
            _ => turns.push((m.role, m.content.clone())),
        }
    }
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, text: &str) -> ChatMessage {
        ChatMessage::new(role, text)
    }

    #[test]
    fn families_from_file_names() {
        let cases = [
            ("Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm", Family::ChatMl),
            ("/m/Qwen3-1.7B-w8a8-rk3588.rkllm", Family::Qwen3),
            (
                "DeepSeek-R1-Distill-Qwen-1.5B_W8A8_RK3588.rkllm",
                Family::DeepSeekR1,
            ),
            ("Llama-3.2-1B-Instruct-rk3588-w8a8.rkllm", Family::Llama3),
            ("Phi-3-mini-4k-instruct_w8a8.rkllm", Family::Phi3),
            ("phi3_mini.rkllm", Family::Phi3),
            ("dolphin-2.9.rkllm", Family::ChatMl),
            ("gemma-2-2b-it_rk3588.rkllm", Family::Gemma),
            ("SmolLM2-135M.rkllm", Family::ChatMl),
            ("mystery.rkllm", Family::ChatMl),
        ];
        for (name, family) in cases {
            assert_eq!(Family::detect(name), family, "{name}");
        }
    }

    #[test]
    fn single_turn_chatml_uses_template_parts() {
        let r = render(
            Family::ChatMl,
            &Overrides::default(),
            &[msg(Role::User, "Hi")],
            "",
        )
        .unwrap();
        assert_eq!(
            r.template.system_prompt,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        );
        assert_eq!(r.template.prompt_prefix, "<|im_start|>user\n");
        assert_eq!(
            r.template.prompt_postfix,
            "<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(r.input, "Hi");
    }

    #[test]
    fn history_is_rendered_inside_the_prompt() {
        let messages = [
            msg(Role::System, "Be brief."),
            msg(Role::User, "A?"),
            msg(Role::Assistant, "B."),
            msg(Role::User, "C?"),
        ];
        let r = render(Family::ChatMl, &Overrides::default(), &messages, "").unwrap();
        assert_eq!(
            r.transcript(),
            "<|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>user\nA?<|im_end|>\n<|im_start|>assistant\nB.<|im_end|>\n\
             <|im_start|>user\nC?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            r.input,
            "A?<|im_end|>\n<|im_start|>assistant\nB.<|im_end|>\n<|im_start|>user\nC?"
        );
    }

    #[test]
    fn assistant_prefix_ends_the_transcript() {
        let r = render(
            Family::DeepSeekR1,
            &Overrides::default(),
            &[msg(Role::User, "Count")],
            "1, 2,",
        )
        .unwrap();
        assert_eq!(r.transcript(), "<｜User｜>Count<｜Assistant｜>1, 2,");
        assert!(r.transcript().ends_with("1, 2,"));
        assert_eq!(r.template.prompt_postfix, "");
    }

    #[test]
    fn qwen3_reply_skips_thinking_but_history_does_not_repeat_it() {
        let messages = [
            msg(Role::User, "a"),
            msg(Role::Assistant, "b"),
            msg(Role::User, "c"),
        ];
        let t = render(Family::Qwen3, &Overrides::default(), &messages, "")
            .unwrap()
            .transcript();
        assert_eq!(t.matches("<think>").count(), 1);
        assert!(t.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    }

    #[test]
    fn gemma_puts_the_system_text_in_the_first_user_turn() {
        let messages = [msg(Role::System, "S"), msg(Role::User, "U")];
        let r = render(Family::Gemma, &Overrides::default(), &messages, "").unwrap();
        assert_eq!(r.template.system_prompt, "");
        assert_eq!(
            r.transcript(),
            "<start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn overrides_replace_the_family_defaults() {
        let overrides = Overrides {
            system_prompt: Some("Be terse.".into()),
            prompt_prefix: Some("[U]".into()),
            prompt_postfix: Some("[/U][A]".into()),
        };
        let r = render(Family::ChatMl, &overrides, &[msg(Role::User, "x")], "").unwrap();
        assert_eq!(
            r.transcript(),
            "<|im_start|>system\nBe terse.<|im_end|>\n[U]x[/U][A]"
        );
        assert_eq!(r.input, "x");
        // A request's own system message still wins over the configured text.
        let r = render(
            Family::ChatMl,
            &overrides,
            &[msg(Role::System, "Be kind."), msg(Role::User, "x")],
            "",
        )
        .unwrap();
        assert!(r.template.system_prompt.contains("Be kind."));
        assert!(!r.template.system_prompt.contains("Be terse."));
    }

    #[test]
    fn every_family_concatenates_to_its_transcript() {
        let messages = [
            msg(Role::System, "sys"),
            msg(Role::User, "u1"),
            msg(Role::User, "u1b"),
            msg(Role::Assistant, "a1"),
            msg(Role::User, "u2"),
        ];
        for family in [
            Family::ChatMl,
            Family::Qwen3,
            Family::DeepSeekR1,
            Family::Llama3,
            Family::Phi3,
            Family::Gemma,
        ] {
            for prefix in ["", "Sure"] {
                let r = render(family, &Overrides::default(), &messages, prefix).unwrap();
                let t = r.transcript();
                assert!(
                    t.ends_with(&format!("{}{prefix}", family.format().reply_open)),
                    "{family}"
                );
                assert!(
                    t.contains("u1\n\nu1b"),
                    "{family}: consecutive user turns merge"
                );
                assert!(t.contains("sys"), "{family}");
            }
        }
    }

    #[test]
    fn bad_conversations_are_refused() {
        let o = Overrides::default();
        assert_eq!(
            render(Family::ChatMl, &o, &[], ""),
            Err(ChatError::NoUserMessage)
        );
        assert_eq!(
            render(Family::ChatMl, &o, &[msg(Role::System, "s")], ""),
            Err(ChatError::NoUserMessage)
        );
        assert_eq!(
            render(
                Family::ChatMl,
                &o,
                &[msg(Role::User, "a"), msg(Role::Assistant, "b")],
                ""
            ),
            Err(ChatError::LastNotUser)
        );
        assert_eq!(
            render(Family::ChatMl, &o, &[msg(Role::User, "a\0")], ""),
            Err(ChatError::Nul)
        );
    }
}
