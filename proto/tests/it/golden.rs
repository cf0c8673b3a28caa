//! Golden encodings under `tests/data/`: a wire-format change fails here.
//!
//! Each file holds the payload of one message as an earlier build encoded it.
//! The test decodes it to the expected value and re-encodes the value to the
//! same bytes. After a deliberate protocol change (with `PROTOCOL_VERSION`
//! bumped), regenerate with `UPDATE_GOLDEN=1 cargo test -p proto`.

use std::fmt::Debug;
use std::path::PathBuf;

use proto::admin::{AdminToSupervisor, FailoverCommand, RestartCommand, SlotState};
use proto::chat::{Backend, ChatMessage, FinishReason, GenParams, GenStats, Role};
use proto::client::{
    Cancel, ClientToSupervisor, Done, ErrorEvent, ErrorKind, ModelList, ModelSlot, ModelsQuery,
    Queued, Submit, SupervisorToClient,
};
use proto::frame::{decode, encode};
use proto::hello::Hello;
use proto::worker::{
    BackendOptions, CacheReport, CpuOptions, Generate, Heartbeat, HeldConversation, KvCacheType,
    Load, ModelFacts, NpuOptions, Profile, PromptCacheFile, Ready, SupervisorToWorker, Warm,
    Warmed, WorkerDone, WorkerToSupervisor, WorkerToken,
};
use proto::PeerRole;
use serde::{de::DeserializeOwned, Serialize};

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.bin"));
    let encoded = encode(value).unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &encoded).unwrap();
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 after a deliberate change)",
            path.display()
        )
    });
    let decoded: T =
        decode(&stored).unwrap_or_else(|e| panic!("{name}: stored bytes no longer decode: {e}"));
    assert_eq!(
        &decoded, value,
        "{name}: stored bytes decode to another value"
    );
    assert_eq!(
        encoded, stored,
        "{name}: this build encodes differently from the stored bytes"
    );
}

fn messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are terse."),
        ChatMessage::new(Role::User, "What is 2+2?"),
    ]
}

#[test]
fn hello() {
    check(
        "hello",
        &Hello::new(PeerRole::Client, "rocksteady-gateway 0.1.0"),
    );
}

#[test]
fn client_submit() {
    check(
        "client_submit",
        &ClientToSupervisor::Submit(Submit {
            request_id: 42,
            messages: messages(),
            params: GenParams::default(),
            model: "SmolLM2-135M-Instruct".into(),
            conversation: Some("1180000000000000001".into()),
        }),
    );
}

#[test]
fn client_models() {
    check(
        "client_stop",
        &ClientToSupervisor::Stop(Cancel { request_id: 42 }),
    );
    check(
        "client_models_query",
        &ClientToSupervisor::Models(ModelsQuery { request_id: 7 }),
    );
    check(
        "client_models",
        &SupervisorToClient::Models(ModelList {
            request_id: 7,
            slots: vec![
                ModelSlot {
                    name: "primary".into(),
                    backend: Backend::Npu,
                    model: "qwen2.5-1.5b".into(),
                    model_file: "qwen2.5-1.5b.rkllm".into(),
                    state: SlotState::Ready,
                },
                ModelSlot {
                    name: "fallback".into(),
                    backend: Backend::Cpu,
                    model: "SmolLM2-135M-Instruct".into(),
                    model_file: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                    state: SlotState::Idle,
                },
            ],
        }),
    );
}

#[test]
fn client_events() {
    check(
        "client_queued",
        &SupervisorToClient::Queued(Queued {
            request_id: 42,
            position: 2,
            reason: String::new(),
        }),
    );
    check(
        "client_done",
        &SupervisorToClient::Done(Done {
            request_id: 42,
            text: "4".into(),
            backend: Backend::Cpu,
            model: "SmolLM2-135M-Instruct".into(),
            stats: GenStats {
                prompt_tokens: 30,
                generated_tokens: 8,
                ttft_ms: 12.5,
                prefill_ms: 10.0,
                decode_ms: 50.0,
                decode_tps: 140.0,
                cached_tokens: 24,
            },
        }),
    );
    check(
        "client_error",
        &SupervisorToClient::Error(ErrorEvent {
            request_id: 42,
            kind: ErrorKind::Busy,
            message: "queue full".into(),
        }),
    );
}

#[test]
fn worker_messages() {
    check(
        "worker_load",
        &SupervisorToWorker::Load(Load {
            model_path: "/var/lib/rocksteady/models/m.gguf".into(),
            profile: Profile {
                name: "default".into(),
                context_size: 2048,
                batch_size: 512,
                threads: 4,
                kv_cache_type: KvCacheType::Q8_0,
                flash_attention: true,
                max_new_tokens: 512,
            },
            backend: BackendOptions::Cpu(CpuOptions {
                use_mmap: true,
                chat_template: Some("gemma".into()),
                cache_sequences: 4,
            }),
        }),
    );
    check(
        "worker_generate",
        &SupervisorToWorker::Generate(Generate {
            request_id: 9,
            messages: messages(),
            params: GenParams::default(),
            assistant_prefix: "The answer".into(),
            conversation: Some("1180000000000000001".into()),
        }),
    );
    check(
        "worker_warm",
        &SupervisorToWorker::Warm(Warm {
            key: "shadow:9".into(),
            messages: messages(),
            assistant_prefix: "The answer".into(),
        }),
    );
    check(
        "worker_warmed",
        &WorkerToSupervisor::Warmed(Warmed {
            key: "shadow:9".into(),
            tokens: 71,
        }),
    );
    check(
        "worker_token",
        &WorkerToSupervisor::Token(WorkerToken {
            request_id: 9,
            text: "é".into(),
            tokens: 2,
        }),
    );
    check(
        "worker_ready",
        &WorkerToSupervisor::Ready(Ready {
            backend: Backend::Cpu,
            model: ModelFacts {
                name: "gemma-3-270m-it".into(),
                file_size: 241_000_000,
                architecture: "gemma3".into(),
                train_context: 32_768,
                context_size: 2048,
                parameters: 268_000_000,
                chat_template:
                    "gemma (default for architecture gemma3; the model file has no template)".into(),
            },
            profile: "default".into(),
            load_ms: 850.5,
            pid: 4242,
        }),
    );
    check(
        "worker_done",
        &WorkerToSupervisor::Done(WorkerDone {
            request_id: 9,
            finish: FinishReason::EndOfTurn,
            stats: GenStats::default(),
            cache: cache_report(),
        }),
    );
    check(
        "worker_heartbeat",
        &WorkerToSupervisor::Heartbeat(Heartbeat {
            seq: 3,
            busy_with: None,
            tokens_total: 120,
            requests_total: 4,
            cache: cache_report(),
        }),
    );
}

fn cache_report() -> CacheReport {
    CacheReport {
        held: vec![HeldConversation {
            key: "1180000000000000001".into(),
            tokens: 312,
        }],
        capacity: 4,
        kv_bytes_per_sequence: 47_185_920,
        hits: 3,
        misses: 1,
        reused_tokens: 900,
        evictions: 0,
        dropped: 0,
        prompt_cache: Some(PromptCacheFile {
            path: "/var/lib/rocksteady/prompt-cache/qwen.0123456789abcdef.prompt-cache".into(),
            tokens: Some(57),
            built: false,
        }),
    }
}

#[test]
fn npu_load_message() {
    check(
        "worker_load_npu",
        &SupervisorToWorker::Load(Load {
            model_path: "/var/lib/rocksteady/models/q.rkllm".into(),
            profile: Profile {
                name: "default".into(),
                context_size: 4096,
                batch_size: 512,
                threads: 0,
                kv_cache_type: KvCacheType::F16,
                flash_attention: false,
                max_new_tokens: 512,
            },
            backend: BackendOptions::Npu(NpuOptions {
                runtime_path: "/usr/lib/librkllmrt.so".into(),
                abi: "auto".into(),
                enabled_cpus_mask: 0xF0,
                base_domain_id: 0,
                system_prompt: Some("You are terse.".into()),
                prompt_prefix: None,
                prompt_postfix: None,
                prompt_cache_dir: Some("/var/lib/rocksteady/prompt-cache".into()),
            }),
        }),
    );
}

#[test]
fn admin_messages() {
    check("admin_status", &AdminToSupervisor::Status);
    check(
        "admin_failover",
        &AdminToSupervisor::Failover(FailoverCommand {
            to: Some(Backend::Cpu),
        }),
    );
    check(
        "admin_restart",
        &AdminToSupervisor::Restart(RestartCommand {
            slot: "primary".into(),
            now: true,
        }),
    );
}

#[test]
fn client_continue() {
    check(
        "client_continue",
        &ClientToSupervisor::Continue(proto::client::Continue {
            submit: Submit {
                request_id: 43,
                messages: messages(),
                params: GenParams::default(),
                model: String::new(),
                conversation: Some("chain-1".into()),
            },
            assistant_prefix: "2+2 is".into(),
        }),
    );
}
