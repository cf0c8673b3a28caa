//! Generation without a supervisor: `worker-cpu generate` (smoke tests of a
//! build, e.g. the arm64 binary under emulation) and the in-process baseline
//! that the relay-overhead benchmark compares the full stack against.

use proto::chat::{ChatMessage, GenParams, GenStats, Role};
use proto::worker::{Generate, Load};
pub use worker_kit::LocalError as StandaloneError;

use crate::engine::LlamaEngine;

/// Loads the model of `load`, generates one answer to `prompt`, calls
/// `on_token` for each piece as it is decoded, and returns the whole text and
/// the figures (`load_ms` first).
///
/// # Errors
/// [`StandaloneError`] when loading or generating fails.
pub fn generate(
    load: Load,
    prompt: &str,
    params: GenParams,
    on_token: &mut dyn FnMut(&str),
) -> Result<(String, f64, GenStats), StandaloneError> {
    generate_chat(
        load,
        vec![ChatMessage::new(Role::User, prompt)],
        params,
        on_token,
    )
}

/// Like [`generate`], for a whole conversation ending with the user's turn
/// (a cold prefill of all of it: the baseline of `supctl bench`'s
/// conversation profile).
///
/// # Errors
/// [`StandaloneError`] when loading or generating fails.
pub fn generate_chat(
    load: Load,
    messages: Vec<ChatMessage>,
    params: GenParams,
    on_token: &mut dyn FnMut(&str),
) -> Result<(String, f64, GenStats), StandaloneError> {
    let mut text = String::new();
    let generate = Generate {
        request_id: 1,
        messages,
        params,
        assistant_prefix: String::new(),
        conversation: None,
    };
    let (ready, done) =
        worker_kit::generate_locally(LlamaEngine::default(), load, generate, &mut |piece| {
            on_token(piece);
            text.push_str(piece);
        })?;
    Ok((text, ready.load_ms, done.stats))
}
