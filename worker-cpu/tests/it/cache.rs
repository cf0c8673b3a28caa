//! Conversation KV caches on the real model (greedy): a second turn reuses
//! the first's tokens and answers as a cold prefill of the same prompt does,
//! two conversations interleave in their own sequences, a third evicts the
//! least recently used, and a profile switch keeps them only when the
//! context size stays.

use std::sync::PoisonError;

use proto::chat::{ChatMessage, GenParams, Role};
use proto::worker::{
    BackendOptions, CacheReport, CpuOptions, Generate, KvCacheType, Load, Profile, WorkerDone,
};
use worker_cpu::engine::LlamaEngine;
use worker_kit::LocalSession;

use crate::template::model;
use crate::BACKEND;

fn load(context_size: u32, profile: &str, sequences: u32) -> Load {
    Load {
        model_path: model().to_string_lossy().into_owned(),
        profile: Profile {
            name: profile.into(),
            context_size,
            batch_size: 256,
            threads: 2,
            kv_cache_type: KvCacheType::F16,
            flash_attention: false,
            max_new_tokens: 24,
        },
        backend: BackendOptions::Cpu(CpuOptions {
            use_mmap: true,
            chat_template: None,
            cache_sequences: sequences,
        }),
    }
}

const SYSTEM: &str = "You are a helpful assistant who answers in one short sentence.";

/// A chain: the system prompt, then user and assistant turns.
struct Chat {
    key: String,
    messages: Vec<ChatMessage>,
}

impl Chat {
    fn new(key: &str) -> Self {
        Self {
            key: key.into(),
            messages: vec![ChatMessage::new(Role::System, SYSTEM)],
        }
    }

    /// Asks `question` in this conversation and appends the answer.
    fn ask(&mut self, s: &mut LocalSession, id: u64, question: &str) -> (String, WorkerDone) {
        self.messages.push(ChatMessage::new(Role::User, question));
        let (text, done) = generate(s, id, self.messages.clone(), Some(&self.key));
        self.messages
            .push(ChatMessage::new(Role::Assistant, text.clone()));
        (text, done)
    }
}

fn generate(
    s: &mut LocalSession,
    id: u64,
    messages: Vec<ChatMessage>,
    key: Option<&str>,
) -> (String, WorkerDone) {
    let mut text = String::new();
    let done = s
        .generate(
            Generate {
                request_id: id,
                messages,
                params: GenParams {
                    max_tokens: 24,
                    temperature: 0.0,
                    ..GenParams::default()
                },
                assistant_prefix: String::new(),
                conversation: key.map(str::to_owned),
            },
            &mut |p| text.push_str(p),
        )
        .unwrap();
    (text, done)
}

fn session(load: Load) -> LocalSession {
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let mut s = LocalSession::start(LlamaEngine::default()).unwrap();
    s.load(load).unwrap();
    s
}

fn report(s: &mut LocalSession) -> CacheReport {
    s.heartbeat().unwrap().cache
}

fn held(r: &CacheReport) -> Vec<&str> {
    r.held.iter().map(|h| h.key.as_str()).collect()
}

#[test]
fn a_second_turn_reuses_the_first_and_answers_as_a_cold_prefill() {
    let _one = BACKEND.lock().unwrap_or_else(PoisonError::into_inner);
    let mut s = session(load(1024, "default", 2));
    let mut chat = Chat::new("chain-1");
    let (_, first) = chat.ask(&mut s, 1, "What is the capital of France?");
    assert_eq!(first.stats.cached_tokens, 0, "a new conversation");
    let after_first = report(&mut s);
    assert_eq!(held(&after_first), vec!["chain-1"]);
    assert!(after_first.held[0].tokens > first.stats.prompt_tokens);
    let (warm, second) = chat.ask(&mut s, 2, "And what is the capital of Germany?");
    println!(
        "turn 2: {} prompt tokens, {} reused",
        second.stats.prompt_tokens, second.stats.cached_tokens
    );
    // Everything of turn 1 up to its answer's end is reused (the answer's
    // last tokens may retokenise differently in the new prompt).
    assert!(
        second.stats.cached_tokens >= first.stats.prompt_tokens,
        "{} reused of {}",
        second.stats.cached_tokens,
        first.stats.prompt_tokens
    );
    assert!(second.stats.cached_tokens < second.stats.prompt_tokens);
    let r = report(&mut s);
    assert_eq!((r.hits, r.misses), (1, 1));
    assert_eq!(r.reused_tokens, u64::from(second.stats.cached_tokens));
    assert_eq!(r.capacity, 2);
    // What llama.cpp's model says equals what the supervisor's config check
    // reads off the file's header (the two must agree for that check to mean
    // anything).
    let header = model_check::gguf::check(&model()).unwrap();
    assert_eq!(
        r.kv_bytes_per_sequence,
        header
            .kv
            .expect("the model's header gives its KV shape")
            .sequence_bytes(1024, KvCacheType::F16)
    );
    assert!(r.kv_bytes_per_sequence > 0);

    // The same prompt without a conversation: the scratch sequence, cold.
    let mut prompt = chat.messages.clone();
    prompt.pop();
    let (cold, cold_done) = generate(&mut s, 3, prompt, None);
    assert_eq!(cold_done.stats.cached_tokens, 0);
    assert_eq!(cold_done.stats.prompt_tokens, second.stats.prompt_tokens);
    assert_eq!(warm, cold, "greedy: reuse must not change the answer");
    assert_eq!(report(&mut s).hits, 1, "a keyless request is no hit");
}

#[test]
#[allow(clippy::many_single_char_names)] // conversations a, b, c
fn two_conversations_interleave_and_a_third_evicts_the_least_recent() {
    let _one = BACKEND.lock().unwrap_or_else(PoisonError::into_inner);
    let mut s = session(load(512, "default", 2));
    let mut a = Chat::new("a");
    let mut b = Chat::new("b");
    a.ask(&mut s, 1, "Name a colour.");
    b.ask(&mut s, 2, "Name a fruit.");
    let (_, a2) = a.ask(&mut s, 3, "Name another one.");
    let (_, b2) = b.ask(&mut s, 4, "Name another one.");
    assert!(a2.stats.cached_tokens > 0 && b2.stats.cached_tokens > 0);
    let r = report(&mut s);
    assert_eq!((r.hits, r.misses, r.evictions), (2, 2, 0));
    assert_eq!(held(&r), vec!["b", "a"]);

    // a is now the least recently used.
    let mut c = Chat::new("c");
    let (_, c1) = c.ask(&mut s, 5, "Name an animal.");
    let r = report(&mut s);
    assert_eq!(r.evictions, 1);
    assert_eq!(held(&r), vec!["c", "b"]);
    // The evicted sequence's system prompt is reused by the newcomer.
    assert!(c1.stats.cached_tokens > 0, "the shared system prompt");
    assert_eq!(r.misses, 3);
    let (_, a3) = a.ask(&mut s, 6, "And one more?");
    let r = report(&mut s);
    assert_eq!((r.misses, r.evictions), (4, 2), "a came back cold");
    assert_eq!(held(&r), vec!["a", "c"]);
    assert!(a3.stats.cached_tokens < a3.stats.prompt_tokens);
}

#[test]
fn a_profile_switch_keeps_the_caches_only_with_the_same_context_size() {
    let _one = BACKEND.lock().unwrap_or_else(PoisonError::into_inner);
    let mut s = session(load(512, "default", 2));
    let mut chat = Chat::new("kept");
    let (_, first) = chat.ask(&mut s, 1, "What is the capital of France?");
    // Another profile, same context size (fewer tokens per answer).
    let mut same = load(512, "lean", 2);
    same.profile.max_new_tokens = 16;
    s.load(same).unwrap();
    let r = report(&mut s);
    assert_eq!(held(&r), vec!["kept"]);
    assert_eq!(r.dropped, 0);
    let (_, second) = chat.ask(&mut s, 2, "And of Germany?");
    assert!(second.stats.cached_tokens >= first.stats.prompt_tokens);
    assert_eq!(report(&mut s).hits, 1);

    // Another context size: dropped and counted.
    s.load(load(1024, "wide", 2)).unwrap();
    let r = report(&mut s);
    assert!(r.held.is_empty());
    assert_eq!(r.dropped, 1);
    let (_, third) = chat.ask(&mut s, 3, "And of Italy?");
    assert_eq!(third.stats.cached_tokens, 0);
    assert_eq!(report(&mut s).misses, 2);
}

#[test]
fn a_warm_prefills_what_the_failover_generate_reuses() {
    let _one = BACKEND.lock().unwrap_or_else(PoisonError::into_inner);
    let messages = vec![
        ChatMessage::new(Role::System, SYSTEM),
        ChatMessage::new(Role::User, "Tell me about the city of Paris."),
    ];
    let warmed_prefix = "Paris is the capital of France and";
    let full_prefix = "Paris is the capital of France and one of the largest cities";
    let failover = |key: Option<&str>| Generate {
        request_id: 7,
        messages: messages.clone(),
        params: GenParams {
            max_tokens: 12,
            temperature: 0.0,
            ..GenParams::default()
        },
        assistant_prefix: full_prefix.into(),
        conversation: key.map(str::to_owned),
    };

    let mut s = session(load(1024, "default", 2));
    s.warm(proto::worker::Warm {
        key: "shadow:7".into(),
        messages: messages.clone(),
        assistant_prefix: warmed_prefix.into(),
    });
    let warmed = report(&mut s);
    assert_eq!(held(&warmed), vec!["shadow:7"]);
    let warmed_tokens = warmed.held[0].tokens;
    assert!(warmed_tokens > 20, "{warmed_tokens} tokens warmed");
    assert_eq!(
        (warmed.hits, warmed.misses),
        (0, 0),
        "a warm is no client's hit or miss"
    );
    let mut text = String::new();
    let done = s
        .generate(failover(Some("shadow:7")), &mut |p| text.push_str(p))
        .unwrap();
    assert!(
        done.stats.cached_tokens + 1 >= warmed_tokens,
        "{} of {warmed_tokens} warmed tokens reused",
        done.stats.cached_tokens
    );
    assert!(done.stats.cached_tokens < done.stats.prompt_tokens);
    drop(s);

    // The same continuation prefilled cold answers the same.
    let mut cold = session(load(1024, "default", 0));
    let mut cold_text = String::new();
    let cold_done = cold
        .generate(failover(None), &mut |p| cold_text.push_str(p))
        .unwrap();
    assert_eq!(cold_done.stats.cached_tokens, 0);
    assert_eq!(text, cold_text);
}
