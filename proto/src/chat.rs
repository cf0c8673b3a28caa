//! Vocabulary shared by the conversations: chat messages, generation
//! parameters, statistics, backends.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The human.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The name chat templates use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
///
/// `Debug` shows only the role and the length: user text never reaches logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

impl fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatMessage")
            .field("role", &self.role)
            .field("chars", &self.content.chars().count())
            .finish()
    }
}

/// How to sample a generation. `temperature <= 0` means greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    /// Upper bound on generated tokens (the supervisor may lower it, e.g. when hot).
    pub max_tokens: u32,
    /// Sampling temperature; 0 = greedy (deterministic).
    pub temperature: f32,
    /// Top-k cut-off; 0 = off.
    pub top_k: u32,
    /// Nucleus cut-off; 1.0 = off.
    pub top_p: f32,
    /// Repetition penalty; 1.0 = off.
    pub repeat_penalty: f32,
    /// Seed for sampling (ignored when greedy).
    pub seed: u32,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            seed: 42,
        }
    }
}

/// Largest `top_k` accepted: no vocabulary the workers load is near it, so
/// anything above is a mistake, not a wish.
pub const MAX_TOP_K: u32 = 1_000_000;

/// Largest temperature accepted (sampling is noise well before this).
pub const MAX_TEMPERATURE: f32 = 10.0;

/// A [`GenParams`] field out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// `max_tokens` is 0: nothing could be generated.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// Temperature NaN, infinite, negative or absurd.
    #[error("temperature must be a number from 0 to {MAX_TEMPERATURE} (got {0})")]
    Temperature(f32),
    /// `top_k` above [`MAX_TOP_K`].
    #[error("top_k must be at most {MAX_TOP_K} (got {0}; 0 turns it off)")]
    TopK(u32),
    /// `top_p` NaN or outside (0, 1].
    #[error("top_p must be above 0 and at most 1 (got {0})")]
    TopP(f32),
    /// Repeat penalty NaN, infinite or not positive.
    #[error("repeat_penalty must be a positive number (got {0}; 1 turns it off)")]
    RepeatPenalty(f32),
}

impl GenParams {
    /// Checks every field's range, so a bad value is refused with its name
    /// at the supervisor's door instead of reaching a worker.
    ///
    /// # Errors
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.max_tokens == 0 {
            return Err(ParamError::ZeroMaxTokens);
        }
        if !(0.0..=MAX_TEMPERATURE).contains(&self.temperature) {
            return Err(ParamError::Temperature(self.temperature));
        }
        if self.top_k > MAX_TOP_K {
            return Err(ParamError::TopK(self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ParamError::TopP(self.top_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(ParamError::RepeatPenalty(self.repeat_penalty));
        }
        Ok(())
    }
}

#[cfg(test)]
mod param_tests {
    use super::*;

    #[test]
    fn out_of_range_params_are_named() {
        assert_eq!(GenParams::default().validate(), Ok(()));
        let bad = |f: fn(&mut GenParams)| {
            let mut p = GenParams::default();
            f(&mut p);
            p.validate().unwrap_err().to_string()
        };
        assert!(bad(|p| p.max_tokens = 0).contains("max_tokens"));
        assert!(bad(|p| p.temperature = f32::NAN).contains("temperature"));
        assert!(bad(|p| p.temperature = -0.5).contains("temperature"));
        assert!(bad(|p| p.top_k = u32::MAX).contains("top_k"));
        assert!(bad(|p| p.top_p = 0.0).contains("top_p"));
        assert!(bad(|p| p.repeat_penalty = f32::INFINITY).contains("repeat_penalty"));
    }
}

/// Which inference engine a worker drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// Rockchip NPU through the RKLLM runtime.
    Npu,
    /// CPU through llama.cpp.
    Cpu,
}

impl Backend {
    /// Lower-case name as used in config files and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Npu => "npu",
            Self::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "npu" => Ok(Self::Npu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!(
                "unknown backend {other:?} (expected \"npu\" or \"cpu\")"
            )),
        }
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model ended its turn.
    EndOfTurn,
    /// `max_tokens` reached.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// Cancelled by the client or the supervisor.
    Cancelled,
}

/// Figures of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct GenStats {
    /// Tokens in the prompt after the chat template was applied.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Milliseconds from the request reaching the worker to the first token.
    pub ttft_ms: f64,
    /// Milliseconds spent on the prompt (prefill).
    pub prefill_ms: f64,
    /// Milliseconds from the first token to the last.
    pub decode_ms: f64,
    /// Generated tokens per second after the first token.
    pub decode_tps: f64,
    /// Prompt tokens whose KV cache was reused from an earlier turn of the
    /// conversation (not prefilled again); 0 on a cold prefill.
    pub cached_tokens: u32,
}
