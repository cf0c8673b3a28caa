//! The llama.cpp engine behind `worker_kit`: loads a GGUF model and its
//! context and decodes one generation at a time, keeping each conversation's
//! KV cache in a sequence of its own between requests (the decisions are in
//! [`crate::cache`]).
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
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};
use model_check::gguf;
use proto::chat::{Backend, FinishReason, GenParams};
use proto::worker::{
    BackendOptions, CacheReport, ExitCode, Generate, KvCacheType, Load, LoadFailed, ModelFacts,
    WorkerError, WorkerErrorKind,
};
use worker_kit::{
    Engine, Finish, Flow, GenFailure, Job, LoadFailure, Model, Serve, Served, TokenStream,
};

use crate::cache::{self, Counters, Entry, Table, SCRATCH};
use crate::template;

/// llama.cpp as a worker engine. The backend is started at the first load
/// (llama.cpp allows it once per process) and kept for reloads, and so are
/// the cache figures and, across a profile switch that keeps the context
/// size, the cached conversations.
#[derive(Debug, Default)]
pub struct LlamaEngine {
    backend: Option<LlamaBackend>,
    counters: Counters,
    carried: Option<Carried>,
}

/// Conversations saved from the previous context, for the next load.
#[derive(Debug)]
struct Carried {
    model_path: String,
    context_size: u32,
    sequences: Vec<(u32, Entry, SeqState)>,
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
        let carried = self.carried.take();
        let loaded = Loaded::new(backend, load).map_err(failure)?;
        let sequences = match &load.backend {
            BackendOptions::Cpu(cpu) => cpu.cache_sequences,
            BackendOptions::Npu(_) => 0,
        };
        let ctx = loaded.context(backend, load, sequences).map_err(failure)?;
        let kv_bytes = loaded.kv_bytes(load);
        let mut model = Serving {
            loaded: &loaded,
            ctx,
            table: Table::new(sequences),
            counters: self.counters,
            context_size: load.profile.context_size,
            kv_bytes,
        };
        if let Some(carried) = carried {
            model.restore(carried, load);
        }
        let served = serve.serve(loaded.facts.clone(), &mut model);
        self.counters = model.counters;
        self.carried = model.save(&load.model_path);
        Ok(served)
    }
}

/// A model and its context, serving generations, and what the context's
/// sequences hold.
struct Serving<'m> {
    loaded: &'m Loaded,
    ctx: LlamaContext<'m>,
    table: Table,
    counters: Counters,
    /// Tokens one sequence holds at most (the profile's context window).
    context_size: u32,
    /// KV bytes of one sequence.
    kv_bytes: u64,
}

impl Model for Serving<'_> {
    fn generate(&mut self, job: &Job, out: &TokenStream) -> Result<Finish, GenFailure> {
        self.run(&job.generate, out)
    }

    fn cache(&self) -> CacheReport {
        self.table.report(self.counters, self.kv_bytes)
    }

    fn warm(&mut self, job: &Job, out: &TokenStream) -> Result<(), GenFailure> {
        self.warm_sequence(&job.generate, out)
    }
}

impl Serving<'_> {
    /// Puts the conversations of the previous context into this one, when
    /// the model and the context size are the same; the rest are dropped
    /// and counted.
    fn restore(&mut self, carried: Carried, load: &Load) {
        let keep = cache::survives_switch(
            &carried.model_path,
            carried.context_size,
            &load.model_path,
            load.profile.context_size,
        );
        for (seq, entry, state) in carried.sequences {
            let restored = keep
                && seq <= self.table.capacity()
                && self
                    .ctx
                    .state_seq_set(&state, pos_i32(seq as usize))
                    .is_ok();
            if restored {
                self.table.restore(seq, entry);
            } else {
                let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
                self.counters.dropped += 1;
            }
        }
        tracing::info!(
            kept = self.table.held().len(),
            dropped = self.counters.dropped,
            "cached conversations after the profile switch"
        );
    }

    /// Saves the held conversations' KV, for a reload that keeps them.
    fn save(&self, model_path: &str) -> Option<Carried> {
        let sequences: Vec<_> = self
            .table
            .held()
            .into_iter()
            .filter_map(|(seq, entry)| {
                let state = self
                    .ctx
                    .state_seq_get(pos_i32(seq as usize), LlamaStateSeqFlags::empty())
                    .ok()?;
                Some((seq, entry.clone(), state))
            })
            .collect();
        (!sequences.is_empty()).then(|| Carried {
            model_path: model_path.to_owned(),
            context_size: self.context_size,
            sequences,
        })
    }

    /// One generation in the sequence of its conversation (the scratch
    /// sequence when it has none): the cached common prefix is kept, the
    /// rest of the prompt decoded.
    fn run(&mut self, g: &Generate, out: &TokenStream) -> Result<Finish, GenFailure> {
        let t0 = Instant::now();
        let id = g.request_id;
        let failure = |e: WorkerError| GenFailure::new(e.kind, e.message);
        let tokens = self.loaded.prompt_tokens(g).map_err(failure)?;
        let n_ctx = self.context_size as usize;
        if tokens.len() >= n_ctx {
            return Err(GenFailure::new(
                WorkerErrorKind::PromptTooLong,
                format!(
                    "the prompt is {} tokens and the context window is {n_ctx}: shorten the conversation",
                    tokens.len()
                ),
            ));
        }
        let ids: Vec<i32> = tokens.iter().map(|t| t.0).collect();
        let key = g.conversation.as_deref();
        let (seq, mut reuse) = if let Some(place) = key.and_then(|k| self.table.place(k)) {
            {
                if place.hit {
                    self.counters.hits += 1;
                } else {
                    self.counters.misses += 1;
                }
                if let Some(evicted) = &place.evicted {
                    self.counters.evictions += 1;
                    tracing::debug!(
                        seq = place.seq,
                        evicted_chars = evicted.len(),
                        "evicted the least recently used conversation"
                    );
                }
                let cached = self
                    .table
                    .entry(place.seq)
                    .map_or(&[][..], |e| &e.tokens[..]);
                (place.seq, cache::reusable(cached, &ids))
            }
        } else {
            if key.is_some() {
                // Keys are welcome but nothing is kept (cache_sequences = 0).
                self.counters.misses += 1;
            }
            (SCRATCH, 0)
        };
        // Drop the divergent tail; a model whose cache cannot be cut (a
        // recurrent one) starts the sequence over.
        let cut = u32::try_from(reuse).unwrap_or(u32::MAX);
        if !matches!(
            self.ctx.clear_kv_cache_seq(Some(seq), Some(cut), None),
            Ok(true)
        ) {
            let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
            reuse = 0;
        }
        self.table.set_tokens(seq, ids[..reuse].to_vec());
        if key.is_some() {
            self.counters.reused_tokens += reuse as u64;
        }
        let mut batch = match prefill(&mut self.ctx, &tokens[reuse..], reuse, seq, id) {
            Ok(batch) => batch,
            Err(e) => {
                self.drop_sequence(seq);
                return Err(failure(e));
            }
        };
        let mut held = ids;
        self.table.set_tokens(seq, held.clone());
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        let prefill_ms = ms(t0.elapsed());
        out.prompt_cached(
            prompt_tokens,
            u32::try_from(reuse).unwrap_or(u32::MAX),
            prefill_ms,
        );
        out.cache(self.cache());
        let decoded = self.decode(g, &mut batch, seq, &mut held, out);
        match decoded {
            Ok(finish) => {
                self.table.set_tokens(seq, held);
                Ok(Finish {
                    reason: finish,
                    prompt_tokens: Some(prompt_tokens),
                    prefill_ms: Some(prefill_ms),
                })
            }
            Err(e) => {
                self.drop_sequence(seq);
                Err(failure(e))
            }
        }
    }

    /// A warm: the prompt (and assistant prefix) of `g` prefilled into its
    /// conversation's sequence, keeping the cached common prefix, one batch
    /// at a time so that a generation waiting behind it (which stops `out`)
    /// waits for one batch at most; what was prefilled before the stop
    /// stays cached. Not counted as a hit or miss: no client asked.
    fn warm_sequence(&mut self, g: &Generate, out: &TokenStream) -> Result<(), GenFailure> {
        let id = g.request_id;
        let failure = |e: WorkerError| GenFailure::new(e.kind, e.message);
        let Some(key) = g.conversation.as_deref() else {
            return Ok(());
        };
        let tokens = self.loaded.prompt_tokens(g).map_err(failure)?;
        if tokens.len() >= self.context_size as usize {
            return Err(GenFailure::new(
                WorkerErrorKind::PromptTooLong,
                "the shadowed prompt does not fit the context window",
            ));
        }
        let ids: Vec<i32> = tokens.iter().map(|t| t.0).collect();
        let Some(place) = self.table.place(key) else {
            return Ok(());
        };
        if place.evicted.is_some() {
            self.counters.evictions += 1;
        }
        let seq = place.seq;
        let cached = self.table.entry(seq).map_or(&[][..], |e| &e.tokens[..]);
        let mut done = cache::reusable(cached, &ids);
        let cut = u32::try_from(done).unwrap_or(u32::MAX);
        if !matches!(
            self.ctx.clear_kv_cache_seq(Some(seq), Some(cut), None),
            Ok(true)
        ) {
            let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
            done = 0;
        }
        self.table.set_tokens(seq, ids[..done].to_vec());
        let n_batch = (self.ctx.n_batch() as usize).max(1);
        while done < tokens.len() && !out.is_stopped() {
            let end = (done + n_batch).min(tokens.len());
            if let Err(e) = prefill(&mut self.ctx, &tokens[done..end], done, seq, id) {
                self.drop_sequence(seq);
                return Err(failure(e));
            }
            done = end;
            self.table.set_tokens(seq, ids[..done].to_vec());
        }
        Ok(())
    }

    /// Samples and decodes the answer in `seq`, appending each token decoded
    /// into the cache to `held`.
    fn decode(
        &mut self,
        g: &Generate,
        batch: &mut LlamaBatch<'static>,
        seq: u32,
        held: &mut Vec<i32>,
        out: &TokenStream,
    ) -> Result<FinishReason, WorkerError> {
        let id = g.request_id;
        let n_ctx = self.context_size as usize;
        let seq_id = pos_i32(seq as usize);
        let model = &self.loaded.model;
        let vocab = model.vocab();
        let mut sampler = sampler(&g.params, model.n_vocab());
        loop {
            // Stopped by the runtime (cancel, shutdown): it has answered already.
            if out.is_stopped() {
                return Ok(FinishReason::Cancelled);
            }
            if held.len() >= n_ctx {
                return Ok(FinishReason::ContextFull);
            }
            let token = sampler.sample(&self.ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                return Ok(FinishReason::EndOfTurn);
            }
            // Handed over the moment it is decoded: no batching of the stream.
            if out.token(&vocab.token_to_piece(token, false, None)) == Flow::Stop {
                return Ok(FinishReason::MaxTokens);
            }
            batch.clear();
            batch
                .add(token, pos_i32(held.len()), &[seq_id], true)
                .map_err(|e| engine_error(id, "token batch", &e))?;
            self.ctx
                .decode(batch)
                .map_err(|e| engine_error(id, "decode", &e))?;
            held.push(token.0);
        }
    }

    /// Forgets a sequence whose cells are in doubt (a failed decode).
    fn drop_sequence(&mut self, seq: u32) {
        let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
        self.table.forget(seq);
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

    /// KV bytes of one sequence of the profile's context (the same
    /// arithmetic the supervisor's config check does on the file's header).
    fn kv_bytes(&self, load: &Load) -> u64 {
        let heads = u64::from(self.model.n_head().max(1));
        let head_dim = u64::try_from(self.model.n_embd()).unwrap_or(0) / heads;
        model_check::gguf::KvShape {
            layers: u64::from(self.model.n_layer()),
            kv_heads: u64::from(self.model.n_head_kv()),
            key_dim: head_dim,
            value_dim: head_dim,
        }
        .sequence_bytes(
            u64::from(load.profile.context_size),
            load.profile.kv_cache_type,
        )
    }

    /// A context of `sequences` conversation sequences and the scratch one,
    /// each of the profile's context size (llama.cpp gives every sequence
    /// a stream of its own unless the KV cache is unified).
    fn context<'m>(
        &'m self,
        backend: &LlamaBackend,
        load: &Load,
        sequences: u32,
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
        let streams = sequences.saturating_add(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(p.context_size.saturating_mul(streams)))
            .with_n_seq_max(streams)
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

    fn prompt_tokens(&self, g: &Generate) -> Result<Vec<LlamaToken>, WorkerError> {
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
}

fn engine_error(request_id: u64, what: &str, e: &dyn std::fmt::Display) -> WorkerError {
    WorkerError {
        request_id,
        kind: WorkerErrorKind::Engine,
        message: format!("{what}: {e}"),
    }
}

/// Decodes `tokens` into sequence `seq` from position `start` (the cells
/// before it are the cached prefix) in batches, asking for logits of the
/// last token only; returns the batch, whose last entry the first sample
/// reads. `tokens` is never empty: the prompt's last token is always decoded.
fn prefill(
    ctx: &mut LlamaContext<'_>,
    tokens: &[LlamaToken],
    start: usize,
    seq: u32,
    id: u64,
) -> Result<LlamaBatch<'static>, WorkerError> {
    let n_batch = (ctx.n_batch() as usize).max(1);
    let mut batch = LlamaBatch::new(n_batch, 1);
    let last = tokens.len().saturating_sub(1);
    let seq_id = pos_i32(seq as usize);
    for (chunk_no, chunk) in tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, token) in chunk.iter().enumerate() {
            let i = chunk_no * n_batch + j;
            batch
                .add(*token, pos_i32(start + i), &[seq_id], i == last)
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
