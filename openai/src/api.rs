//! The OpenAI chat-completions request and response bodies, and the checks
//! that turn a request into supervisor messages and parameters (pure).

use proto::chat::{ChatMessage, GenParams, Role};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Most stop strings a request may give (as OpenAI).
pub const MAX_STOPS: usize = 4;

/// `POST /v1/chat/completions` body. Fields this server does not use
/// (`user`, penalties, `logit_bias`, ...) are accepted and ignored, as
/// clients send them freely.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Model name from `/v1/models`; empty or "auto" lets the supervisor route.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Option<Vec<Message>>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Token limit (older name).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Token limit (newer name).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling, above 0 and at most 1.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Number of choices; only 1 is served.
    #[serde(default)]
    pub n: Option<u32>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage figures.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One message of the conversation.
#[derive(Deserialize)]
pub struct Message {
    /// "system", "developer", "user" or "assistant".
    pub role: String,
    /// Text, or a list of parts of which only text parts are accepted.
    #[serde(default)]
    pub content: Option<Content>,
}

impl std::fmt::Debug for Message {
    // Manual: user text never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Message content in either of OpenAI's forms.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Deserialize)]
pub struct Part {
    /// "text" is the only type served.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A request checked and translated for the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// Model asked for; empty = any.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling and limits.
    pub params: GenParams,
    /// Stop strings (non-empty ones).
    pub stops: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Add a usage chunk to the stream.
    pub include_usage: bool,
}

impl ChatRequest {
    /// Checks the request against `defaults` and the token ceiling `max_tokens_limit`.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] naming the field.
    pub fn check(self, defaults: GenParams, max_tokens_limit: u32) -> Result<Chat, ApiError> {
        let bad = |param: &str, message: String| ApiError::bad_request(param, message);
        let Some(raw) = self.messages else {
            return Err(bad("messages", "'messages' is a required property".into()));
        };
        if raw.is_empty() {
            return Err(bad("messages", "'messages' must not be empty".into()));
        }
        let messages = convert(raw)?;
        if let Some(n) = self.n {
            if n != 1 {
                return Err(bad(
                    "n",
                    format!("n = {n} is not supported; only 1 choice is served"),
                ));
            }
        }
        let mut params = defaults;
        if let (Some(a), Some(b)) = (self.max_tokens, self.max_completion_tokens) {
            if a != b {
                return Err(bad(
                    "max_completion_tokens",
                    "max_tokens and max_completion_tokens disagree; give one".into(),
                ));
            }
        }
        if let Some(limit) = self.max_completion_tokens.or(self.max_tokens) {
            let field = if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            if limit == 0 || limit > max_tokens_limit {
                return Err(bad(
                    field,
                    format!("{field} must be between 1 and {max_tokens_limit}"),
                ));
            }
            params.max_tokens = limit;
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(bad(
                    "temperature",
                    "temperature must be between 0 and 2".into(),
                ));
            }
            params.temperature = t;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(bad("top_p", "top_p must be above 0 and at most 1".into()));
            }
            params.top_p = p;
        }
        if let Some(seed) = self.seed {
            // The worker takes 32 bits; fold larger seeds into them.
            params.seed = u32::try_from(seed.rem_euclid(1 << 32)).unwrap_or(0);
        }
        let stops: Vec<String> = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stops.len() > MAX_STOPS {
            return Err(bad("stop", format!("at most {MAX_STOPS} stop strings")));
        }
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let model = self.model.unwrap_or_default();
        let model = if model == "auto" {
            String::new()
        } else {
            model
        };
        let stream = self.stream.unwrap_or(false);
        Ok(Chat {
            model,
            messages,
            params,
            stops,
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false),
        })
    }
}

/// The conversation in the supervisor's terms.
fn convert(raw: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |param: &str, message: String| ApiError::bad_request(param, message);
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!("role {other:?} is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        ("text", None) => {
                            return Err(bad(
                                &format!("messages[{i}].content[{j}].text"),
                                "a text part needs 'text'".into(),
                            ))
                        }
                        (other, _) => {
                            return Err(bad(
                                &format!("messages[{i}].content[{j}].type"),
                                format!(
                                    "content part type {other:?} is not supported; only \"text\""
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    Ok(messages)
}

/// Token figures of a completion.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens after the chat template.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl Usage {
    /// Usage from the two counts.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// The request header that names a conversation: requests with the same
/// value go to the worker that keeps that conversation's KV cache, so the
/// next turn prefills only what is new. Chosen over the body's `user` field,
/// which names a person (who may hold many conversations at once).
pub const CONVERSATION_HEADER: &str = "x-conversation";

/// The supervisor's conversation key for `header` (the `X-Conversation`
/// value) sent with API key `key_name`: scoped by the API key, so two
/// clients that pick the same name do not share a KV-cache sequence.
///
/// # Errors
/// A value that is empty, not visible ASCII, or too long for a key.
pub fn conversation_key(key_name: &str, header: Option<&[u8]>) -> Result<Option<String>, ApiError> {
    let Some(raw) = header else {
        return Ok(None);
    };
    let bad = |message: String| ApiError::bad_request("X-Conversation", message);
    let value = std::str::from_utf8(raw)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| bad("the X-Conversation header must be visible ASCII characters".into()))?;
    let key = format!("openai:{key_name}:{value}");
    if key.len() > proto::client::MAX_CONVERSATION_KEY {
        return Err(bad(format!(
            "the X-Conversation header is {} bytes; at most {} fit",
            value.len(),
            proto::client::MAX_CONVERSATION_KEY.saturating_sub(key.len() - value.len())
        )));
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Chat, ApiError> {
        let req: ChatRequest = serde_json::from_str(json).unwrap();
        req.check(GenParams::default(), 1000)
    }

    fn param(err: ApiError) -> Option<String> {
        match err {
            ApiError::BadRequest { param, .. } => Some(param),
            _ => None,
        }
    }

    #[test]
    fn both_content_forms_and_roles() {
        let chat = parse(
            r#"{"model":"auto","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
            "max_completion_tokens":7,"temperature":0,"seed":-1,"stop":"\n","stream":true,
            "stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(chat.model, "");
        assert_eq!(chat.messages[0], ChatMessage::new(Role::System, "be brief"));
        assert_eq!(chat.messages[1], ChatMessage::new(Role::User, "hi there"));
        assert_eq!(chat.params.max_tokens, 7);
        assert_eq!(chat.params.seed, u32::MAX);
        assert_eq!(chat.stops, vec!["\n".to_owned()]);
        assert!(chat.stream && chat.include_usage);
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            param(parse(r"{}").unwrap_err()).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(parse(r#"{"messages":[{"role":"tool","content":"x"}]}"#).unwrap_err()).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(
                parse(r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
                    .unwrap_err()
            )
            .as_deref(),
            Some("messages[0].content[0].type")
        );
        assert_eq!(
            param(parse(r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#).unwrap_err())
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            param(
                parse(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":5000}"#)
                    .unwrap_err()
            )
            .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param(
                parse(
                    r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#
                )
                .unwrap_err()
            )
            .as_deref(),
            Some("stop")
        );
    }

    #[test]
    fn the_conversation_header_becomes_a_key_scoped_by_the_api_key() {
        assert_eq!(conversation_key("team", None).unwrap(), None);
        assert_eq!(
            conversation_key("team", Some(b"chat-42"))
                .unwrap()
                .as_deref(),
            Some("openai:team:chat-42")
        );
        for bad in [&b""[..], b"has space", b"\xff\xfe", &[b'x'; 200][..]] {
            let err = conversation_key("team", Some(bad)).unwrap_err();
            assert_eq!(param(err).as_deref(), Some("X-Conversation"));
        }
    }
}
