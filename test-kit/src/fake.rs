//! The fake worker's engine: follows a [`Script`] instead of running a
//! model. Its answer is a fixed passage, one word per token, cycled until the
//! request's cap or the script's `tokens`; given an assistant prefix that is
//! the start of that passage it continues after it (as a model continuing a
//! failed-over answer would), so a test can tell a continuation from a
//! restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::chat::{Backend, FinishReason};
use proto::worker::{ExitCode, Load, ModelFacts, WorkerErrorKind};
use worker_kit::{
    Engine, Exit, Finish, Flow, GenFailure, Job, LoadFailure, Model, Serve, Served, TokenStream,
};

use crate::script::{Refusal, Script};

/// The passage every answer is made of (one word and its space per token;
/// accented letters and a dash so the text is not plain ASCII).
pub const PASSAGE: &str = "The lighthouse keeper climbed the stairs as the storm rolled in over the grey sea — the café lights below went dark one by one, and the beam turned on through the rain. ";

/// The words of [`PASSAGE`], one per token.
pub fn words() -> Vec<&'static str> {
    PASSAGE.split_inclusive(' ').collect()
}

/// Where an answer starts: after the words `prefix` consists of, when it is
/// the start of the (cycled) passage; otherwise at the beginning.
pub fn start_after(prefix: &str) -> usize {
    let words = words();
    let mut text = String::new();
    let mut i = 0;
    while text.len() < prefix.len() {
        text.push_str(words[i % words.len()]);
        i += 1;
    }
    if text == prefix {
        i
    } else {
        0
    }
}

/// The scripted engine.
#[derive(Debug)]
pub struct FakeEngine {
    script: Script,
    growing: Arc<AtomicBool>,
}

impl FakeEngine {
    /// An engine following `script`.
    pub fn new(script: Script) -> Self {
        Self {
            script,
            growing: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Engine for FakeEngine {
    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn load(&mut self, load: &Load, serve: Serve<'_>) -> Result<Served, LoadFailure> {
        let s = &self.script;
        let crash = s.crash_on_load || s.crash_on_load_while.as_deref().is_some_and(Path::exists);
        if crash {
            tracing::error!("fake worker: crashing during the load, as scripted");
            std::process::abort();
        }
        if s.hang_on_load {
            tracing::warn!("fake worker: hanging in the load, as scripted");
            hang();
        }
        std::thread::sleep(s.load);
        if let Some(code) = s.exit_on_load {
            let what = ExitCode::from_code(code)
                .map_or("a failure that may pass with a restart", ExitCode::describe);
            return Err(LoadFailure {
                exit_code: code,
                message: format!("fake worker: scripted load failure: {what}"),
            });
        }
        if s.grow_at.is_none() {
            grow(s.grow_mib_per_s, &self.growing);
        }
        let path = Path::new(&load.model_path);
        let facts = ModelFacts {
            name: path
                .file_stem()
                .map_or_else(|| "fake".to_owned(), |n| n.to_string_lossy().into_owned()),
            file_size: std::fs::metadata(path).map_or(0, |m| m.len()),
            architecture: "fake".into(),
            train_context: 0,
            context_size: load.profile.context_size,
            parameters: 0,
            chat_template: "none (scripted worker)".into(),
        };
        let mut model = FakeModel {
            script: self.script.clone(),
            growing: Arc::clone(&self.growing),
        };
        Ok(serve.serve(facts, &mut model))
    }
}

struct FakeModel {
    script: Script,
    growing: Arc<AtomicBool>,
}

impl Model for FakeModel {
    fn generate(&mut self, job: &Job, out: &TokenStream) -> Result<Finish, GenFailure> {
        let s = &self.script;
        if let Some(refusal) = s.refuse {
            let kind = match refusal {
                Refusal::Busy => WorkerErrorKind::Busy,
                Refusal::NotLoaded => WorkerErrorKind::NotLoaded,
            };
            return Err(GenFailure::new(kind, "fake worker: refused, as scripted"));
        }
        let words = words();
        let first = start_after(&job.generate.assistant_prefix);
        out.prompt(8, 0.5);
        for k in 1u32.. {
            if s.tokens.is_some_and(|n| k > n) {
                return Ok(Finish::new(FinishReason::EndOfTurn));
            }
            std::thread::sleep(s.delay_before(k));
            if out.is_stopped() {
                return Ok(Finish::new(FinishReason::Cancelled));
            }
            if s.crash_at == Some(k) {
                tracing::error!(token = k, "fake worker: crashing, as scripted");
                std::process::abort();
            }
            if let Some((_, code)) = s.exit_at.filter(|(at, _)| *at == k) {
                tracing::error!(token = k, code, "fake worker: exiting, as scripted");
                worker_kit::exit(Exit { code });
            }
            if s.hang_at == Some(k) {
                tracing::warn!(token = k, "fake worker: hanging, as scripted");
                hang();
            }
            if s.grow_at == Some(k) {
                grow(s.grow_mib_per_s, &self.growing);
            }
            let word = words[(first + k as usize - 1) % words.len()];
            if out.token(word.as_bytes()) == Flow::Stop {
                return Ok(Finish::new(FinishReason::MaxTokens));
            }
        }
        Ok(Finish::new(FinishReason::MaxTokens))
    }
}

/// Blocks the calling thread for good (a stuck engine; the socket side goes
/// on answering pings).
fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Starts growing anonymous memory at `rate` MiB/s (once per process).
fn grow(rate: Option<u64>, growing: &AtomicBool) {
    let Some(rate) = rate else {
        return;
    };
    if growing.swap(true, Ordering::AcqRel) {
        return;
    }
    tracing::warn!(
        mib_per_s = rate,
        "fake worker: growing anonymous memory, as scripted"
    );
    let spawned = std::thread::Builder::new()
        .name("fake-grow".into())
        .spawn(move || {
            let step = usize::try_from(rate << 20).unwrap_or(usize::MAX) / 10;
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Ten steps a second; writing every byte makes the pages
                // resident, so they show up in RssAnon.
                hoard.push(vec![0x5a; step]);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    if let Err(err) = spawned {
        tracing::error!(%err, "fake worker: cannot start the memory growth");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_of_the_passage_is_continued_and_anything_else_starts_over() {
        let w = words();
        assert_eq!(start_after(""), 0);
        assert_eq!(start_after(&w[..3].concat()), 3);
        // Past the end of one passage: it cycles.
        let long: String = w.iter().chain(w.iter().take(2)).copied().collect();
        assert_eq!(start_after(&long), w.len() + 2);
        assert_eq!(start_after("Something else entirely"), 0);
        assert_eq!(
            start_after(&w[0][..3]),
            0,
            "half a word is not a prefix of words"
        );
    }
}
