//! The llama.cpp engine behind `worker_kit`: loads a GGUF model and its
//! context and decodes one generation at a time.
//!
//! Both run on the worker runtime's engine thread: llama.cpp calls block for
//! milliseconds to seconds and a context borrows its model, so both live on
//! that thread's stack for as long as the model serves.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Instant;

use llama_cpp_2::context::params::{KvCacheType as LlamaKv, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use model_check::gguf;
use proto::chat::{Backend, FinishReason, GenParams};
use proto::worker::{
    BackendOptions, ExitCode, Generate, KvCacheType, Load, LoadFailed, ModelFacts, WorkerError,
    WorkerErrorKind,
};
use worker_kit::{
    Engine, Finish, Flow, GenFailure, Job, LoadFailure, Model, Serve, Served, TokenStream,
};

use crate::template;

/// llama.cpp as a worker engine. The backend is started at the first load
/// (llama.cpp allows it once per process) and kept for reloads.
#[derive(Debug, Default)]
pub struct LlamaEngine {
    backend: Option<LlamaBackend>,
}

impl Engine for LlamaEngine {
    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn load(&mut self, load: &Load, serve: Serve<'_>) -> Result<Served, LoadFailure> {
        let backend = match self.backend.take() {
            Some(backend) => backend,
            None => LlamaBackend::init().map_err(|e| {
                LoadFailure::broken(
                    ExitCode::BadSettings,
                    format!("llama.cpp backend failed to start: {e}"),
                )
            })?,
        };
        let backend = self.backend.insert(backend);
        let failure = |f: LoadFailed| LoadFailure {
            exit_code: f.exit_code,
            message: f.message,
        };
        let loaded = Loaded::new(backend, load).map_err(failure)?;
        let ctx = loaded.context(backend, load).map_err(failure)?;
        let mut model = Serving {
            loaded: &loaded,
            ctx,
        };
        Ok(serve.serve(loaded.facts.clone(), &mut model))
    }
}

/// A model and its context, serving generations.
struct Serving<'m> {
    loaded: &'m Loaded,
    ctx: LlamaContext<'m>,
}

impl Model for Serving<'_> {
    fn generate(&mut self, job: &Job, out: &TokenStream) -> Result<Finish, GenFailure> {
        self.loaded.generate(&mut self.ctx, &job.generate, out)
    }
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
        g: &Generate,
        out: &TokenStream,
    ) -> Result<Finish, GenFailure> {
        let t0 = Instant::now();
        let id = g.request_id;
        let failure = |e: WorkerError| GenFailure::new(e.kind, e.message);
        let tokens = self.prompt_tokens(g).map_err(failure)?;
        let n_ctx = ctx.n_ctx() as usize;
        if tokens.len() >= n_ctx {
            return Err(GenFailure::new(
                WorkerErrorKind::PromptTooLong,
                format!(
                    "the prompt is {} tokens and the context window is {n_ctx}: shorten the conversation",
                    tokens.len()
                ),
            ));
        }
        let mut batch = prefill(ctx, &tokens, id).map_err(failure)?;
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        let prefill_ms = ms(t0.elapsed());
        out.prompt(prompt_tokens, prefill_ms);

        let vocab = self.model.vocab();
        let mut sampler = sampler(&g.params, self.model.n_vocab());
        let engine_err = |what: &str, e: &dyn std::fmt::Display| failure(engine_error(id, what, e));
        let mut pos = tokens.len();
        let finish = loop {
            // Stopped by the runtime (cancel, shutdown): it has answered already.
            if out.is_stopped() {
                break FinishReason::Cancelled;
            }
            if pos >= n_ctx {
                break FinishReason::ContextFull;
            }
            let token = sampler.sample(ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break FinishReason::EndOfTurn;
            }
            // Handed over the moment it is decoded: no batching of the stream.
            if out.token(&vocab.token_to_piece(token, false, None)) == Flow::Stop {
                break FinishReason::MaxTokens;
            }
            batch.clear();
            batch
                .add(token, pos_i32(pos), &[0], true)
                .map_err(|e| engine_err("token batch", &e))?;
            pos += 1;
            ctx.decode(&mut batch)
                .map_err(|e| engine_err("decode", &e))?;
        };
        Ok(Finish {
            reason: finish,
            prompt_tokens: Some(prompt_tokens),
            prefill_ms: Some(prefill_ms),
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
