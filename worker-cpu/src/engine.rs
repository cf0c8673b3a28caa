//! The llama.cpp engine: owns the model and context on one dedicated thread
//! and turns `Load`/`Generate` commands into worker events.
//!
//! llama.cpp calls block for milliseconds to seconds and a context borrows
//! its model, so both live on this thread's stack; the async side only sends
//! commands and receives events, which is what lets the worker answer pings
//! while a generation runs.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use llama_cpp_2::context::params::{KvCacheType as LlamaKv, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use proto::artifact::gguf;
use proto::chat::{Backend, FinishReason, GenParams, GenStats};
use proto::worker::{
    BackendOptions, ExitCode, Generate, KvCacheType, Load, LoadFailed, ModelFacts, Ready,
    WorkerDone, WorkerError, WorkerErrorKind, WorkerToSupervisor, WorkerToken,
};

use crate::fault::Faults;
use crate::template;
use crate::utf8::Utf8Stream;

/// What the async side asks of the engine thread.
#[derive(Debug)]
pub enum Command {
    /// Run one generation.
    Generate(Generate),
    /// Drop the current model and load another (profile switch).
    Reload(Load),
}

/// Counters and the cancel flag, shared between the engine thread and the
/// socket side.
#[derive(Debug, Default)]
pub struct Shared {
    /// Request id to cancel (0 = none); checked between tokens.
    pub cancel: AtomicU64,
    /// Tokens generated since start.
    pub tokens_total: AtomicU64,
    /// Generations finished since start.
    pub requests_total: AtomicU64,
}

/// Runs the engine until the command channel closes or a load fails. Every
/// outcome is reported through `emit`; after a `LoadFailed` the caller exits.
pub fn run(
    first: Load,
    commands: &Receiver<Command>,
    shared: &Shared,
    faults: &Faults,
    emit: &dyn Fn(WorkerToSupervisor),
) {
    let backend = match LlamaBackend::init() {
        Ok(backend) => backend,
        Err(e) => {
            emit(load_failed(
                ExitCode::BadSettings,
                format!("llama.cpp backend failed to start: {e}"),
            ));
            return;
        }
    };
    let mut next = Some(first);
    while let Some(load) = next.take() {
        let started = Instant::now();
        faults.at_load();
        let loaded = match Loaded::new(&backend, &load) {
            Ok(loaded) => loaded,
            Err(failed) => {
                emit(WorkerToSupervisor::LoadFailed(failed));
                return;
            }
        };
        let mut ctx = match loaded.context(&backend, &load) {
            Ok(ctx) => ctx,
            Err(failed) => {
                emit(WorkerToSupervisor::LoadFailed(failed));
                return;
            }
        };
        emit(WorkerToSupervisor::Ready(Ready {
            backend: Backend::Cpu,
            model: loaded.facts.clone(),
            profile: load.profile.name.clone(),
            load_ms: started.elapsed().as_secs_f64() * 1000.0,
            pid: std::process::id(),
        }));
        faults.start_growth();
        loop {
            match commands.recv() {
                Ok(Command::Generate(g)) => {
                    let id = g.request_id;
                    let outcome = loaded.generate(&mut ctx, &load, &g, shared, faults, emit);
                    shared.requests_total.fetch_add(1, Ordering::Relaxed);
                    // A cancel that arrived for this request is spent now.
                    let _ =
                        shared
                            .cancel
                            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Relaxed);
                    emit(match outcome {
                        Ok(done) => WorkerToSupervisor::Done(done),
                        Err(error) => WorkerToSupervisor::Error(error),
                    });
                }
                Ok(Command::Reload(load)) => {
                    next = Some(load);
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

fn load_failed(code: ExitCode, message: String) -> WorkerToSupervisor {
    WorkerToSupervisor::LoadFailed(LoadFailed {
        exit_code: code.code(),
        message,
    })
}

/// A loaded model with what we know about it.
struct Loaded {
    model: LlamaModel,
    template: LlamaChatTemplate,
    facts: ModelFacts,
}

impl Loaded {
    fn new(backend: &LlamaBackend, load: &Load) -> Result<Self, LoadFailed> {
        let path = Path::new(&load.model_path);
        // Check the file first: llama.cpp's own failures on a truncated or
        // foreign file are late and unclear.
        let info = gguf::check(path).map_err(|e| LoadFailed {
            exit_code: e.exit_code().code(),
            message: e.to_string(),
        })?;
        let (use_mmap, template_setting) = match &load.backend {
            BackendOptions::Cpu(cpu) => (cpu.use_mmap, cpu.chat_template.as_deref()),
            BackendOptions::Npu(_) => {
                return Err(LoadFailed {
                    exit_code: ExitCode::BadSettings.code(),
                    message:
                        "worker-cpu was given NPU settings: the slot's backend must be \"cpu\""
                            .into(),
                })
            }
        };
        if let Some(train) = info.context_length {
            if u64::from(load.profile.context_size) > train {
                return Err(LoadFailed {
                    exit_code: ExitCode::ContextTooLong.code(),
                    message: format!(
                        "context_size {} is above the {train} tokens model {} was trained for: lower it in the profile",
                        load.profile.context_size, load.model_path
                    ),
                });
            }
        }
        let params = LlamaModelParams::default().with_use_mmap(use_mmap);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| LoadFailed {
            exit_code: ExitCode::ModelInvalid.code(),
            message: format!("llama.cpp could not load {}: {e} (the file passed the GGUF header check: the model may use an architecture this llama.cpp does not support)", load.model_path),
        })?;
        // Not ChatML for every model without a template: one tuned on
        // another format answers by echoing the markers.
        let chosen = template::choose(&model, &info, template_setting)?;
        tracing::info!(template = %chosen.in_use, "chat template");
        let file_name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let facts = ModelFacts {
            name: file_name.trim_end_matches(".gguf").to_owned(),
            file_size: info.file_size,
            architecture: info.architecture.unwrap_or_default(),
            train_context: model.n_ctx_train(),
            context_size: load.profile.context_size,
            parameters: model.n_params(),
            chat_template: chosen.in_use.to_string(),
        };
        Ok(Self {
            model,
            template: chosen.template,
            facts,
        })
    }

    fn context<'m>(
        &'m self,
        backend: &LlamaBackend,
        load: &Load,
    ) -> Result<LlamaContext<'m>, LoadFailed> {
        let p = &load.profile;
        let threads = if p.threads == 0 {
            std::thread::available_parallelism().map_or(4, std::num::NonZeroUsize::get)
        } else {
            p.threads as usize
        };
        let threads = i32::try_from(threads).unwrap_or(i32::MAX);
        let kv = match p.kv_cache_type {
            KvCacheType::F16 => LlamaKv::F16,
            KvCacheType::Q8_0 => LlamaKv::Q8_0,
            KvCacheType::Q4_0 => LlamaKv::Q4_0,
        };
        // A quantised V cache only works with flash attention.
        let flash = p.flash_attention || p.kv_cache_type != KvCacheType::F16;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(p.context_size))
            .with_n_batch(p.batch_size.max(1))
            .with_n_ubatch(p.batch_size.max(1))
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_type_k(kv)
            .with_type_v(kv)
            .with_flash_attention_policy(if flash {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
            });
        self.model
            .new_context(backend, params)
            .map_err(|e| LoadFailed {
                exit_code: ExitCode::BadSettings.code(),
                message: format!(
                    "llama.cpp could not create a context of {} tokens with a {} KV cache: {e}",
                    p.context_size,
                    p.kv_cache_type.as_str()
                ),
            })
    }

    fn prompt_tokens(
        &self,
        g: &Generate,
    ) -> Result<Vec<llama_cpp_2::token::LlamaToken>, WorkerError> {
        let bad = |message: String| WorkerError {
            request_id: g.request_id,
            kind: WorkerErrorKind::BadRequest,
            message,
        };
        if g.messages.is_empty() {
            return Err(bad("the request has no messages".into()));
        }
        let chat = g
            .messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.as_str().to_owned(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("a message contains a NUL character".into()))?;
        let mut prompt = self
            .model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| bad(format!("the chat template failed on these messages: {e}")))?;
        prompt.push_str(&g.assistant_prefix);
        Ok(self.model.vocab().tokenize(prompt.as_bytes(), true, true))
    }

    fn generate(
        &self,
        ctx: &mut LlamaContext<'_>,
        load: &Load,
        g: &Generate,
        shared: &Shared,
        faults: &Faults,
        emit: &dyn Fn(WorkerToSupervisor),
    ) -> Result<WorkerDone, WorkerError> {
        let t0 = Instant::now();
        let id = g.request_id;
        let tokens = self.prompt_tokens(g)?;
        let n_ctx = ctx.n_ctx() as usize;
        if tokens.len() >= n_ctx {
            return Err(WorkerError {
                request_id: id,
                kind: WorkerErrorKind::PromptTooLong,
                message: format!(
                    "the prompt is {} tokens and the context window is {n_ctx}: shorten the conversation",
                    tokens.len()
                ),
            });
        }
        let budget = (g.params.max_tokens.min(load.profile.max_new_tokens) as usize)
            .min(n_ctx - tokens.len());
        let cancelled = || shared.cancel.load(Ordering::Acquire) == id;

        let mut batch = prefill(ctx, &tokens, id)?;
        let prefill_ms = ms(t0.elapsed());

        let vocab = self.model.vocab();
        let mut sampler = sampler(&g.params, self.model.n_vocab());
        let engine_err = |what: &str, e: &dyn std::fmt::Display| engine_error(id, what, e);
        let mut utf8 = Utf8Stream::default();
        let mut pos = tokens.len();
        let mut generated = 0usize;
        let mut first_at: Option<Instant> = None;
        let mut last_at = t0;
        // Tokens decoded since the last frame: a token that ends inside a
        // UTF-8 sequence is held back and goes out with the next one.
        let mut unsent = 0u32;
        let mut send = |text: String, decoded: u32| {
            unsent += decoded;
            if !text.is_empty() {
                emit(WorkerToSupervisor::Token(WorkerToken {
                    request_id: id,
                    text,
                    tokens: std::mem::take(&mut unsent),
                }));
            }
        };
        let finish = loop {
            if cancelled() {
                break FinishReason::Cancelled;
            }
            if generated >= budget {
                break FinishReason::MaxTokens;
            }
            if pos >= n_ctx {
                break FinishReason::ContextFull;
            }
            let token = sampler.sample(ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break FinishReason::EndOfTurn;
            }
            generated += 1;
            shared.tokens_total.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            first_at.get_or_insert(now);
            last_at = now;
            // Sent the moment it is decoded: no batching of the stream.
            send(utf8.push(&vocab.token_to_piece(token, false, None)), 1);
            if let Some(delay) = faults.token_delay {
                std::thread::sleep(delay);
            }
            batch.clear();
            batch
                .add(token, pos_i32(pos), &[0], true)
                .map_err(|e| engine_err("token batch", &e))?;
            pos += 1;
            ctx.decode(&mut batch)
                .map_err(|e| engine_err("decode", &e))?;
        };
        send(utf8.finish(), 0);

        let first = first_at.unwrap_or(last_at);
        let decode_s = last_at.duration_since(first).as_secs_f64();
        let generated_u32 = u32::try_from(generated).unwrap_or(u32::MAX);
        Ok(WorkerDone {
            request_id: id,
            finish,
            stats: GenStats {
                prompt_tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
                generated_tokens: generated_u32,
                ttft_ms: first_at.map_or(0.0, |f| ms(f.duration_since(t0))),
                prefill_ms,
                decode_ms: decode_s * 1000.0,
                decode_tps: if generated > 1 && decode_s > 0.0 {
                    f64::from(generated_u32 - 1) / decode_s
                } else {
                    0.0
                },
            },
        })
    }
}

fn engine_error(request_id: u64, what: &str, e: &dyn std::fmt::Display) -> WorkerError {
    WorkerError {
        request_id,
        kind: WorkerErrorKind::Engine,
        message: format!("{what}: {e}"),
    }
}

/// Clears the KV cache and decodes the prompt in batches, asking for logits
/// of the last prompt token only; returns the batch, whose last entry the
/// first sample reads.
fn prefill(
    ctx: &mut LlamaContext<'_>,
    tokens: &[llama_cpp_2::token::LlamaToken],
    id: u64,
) -> Result<LlamaBatch<'static>, WorkerError> {
    ctx.clear_kv_cache();
    let n_batch = (ctx.n_batch() as usize).max(1);
    let mut batch = LlamaBatch::new(n_batch, 1);
    let last = tokens.len() - 1;
    for (chunk_no, chunk) in tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, token) in chunk.iter().enumerate() {
            let pos = chunk_no * n_batch + j;
            batch
                .add(*token, pos_i32(pos), &[0], pos == last)
                .map_err(|e| engine_error(id, "prompt batch", &e))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| engine_error(id, "prompt decode", &e))?;
    }
    Ok(batch)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pos_i32(pos: usize) -> i32 {
    // Positions are below n_ctx, which llama.cpp itself keeps in 32 bits.
    i32::try_from(pos).unwrap_or(i32::MAX)
}

fn sampler(p: &GenParams, n_vocab: i32) -> LlamaSampler {
    if p.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::new();
    if (p.repeat_penalty - 1.0).abs() > f32::EPSILON {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            64,
            p.repeat_penalty,
            0.0,
            0.0,
        ));
    }
    if p.top_k > 0 {
        chain.push(LlamaSampler::top_k(
            i32::try_from(p.top_k).unwrap_or(i32::MAX),
        ));
    }
    if p.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(p.top_p, 1));
    }
    chain.push(LlamaSampler::temp(p.temperature));
    chain.push(LlamaSampler::dist(p.seed));
    LlamaSampler::chain_simple(chain)
}
