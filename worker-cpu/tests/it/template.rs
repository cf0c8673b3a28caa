//! The chat template on the real model: a file without one gets its
//! architecture's default (not always ChatML), the slot's setting wins, a
//! template llama.cpp cannot place is a load error, and Ready says which
//! template is in use and where it came from.

use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use model_check::template::BUILTIN;
use proto::chat::{ChatMessage, GenParams, Role};
use proto::worker::{
    BackendOptions, CpuOptions, ExitCode, Generate, KvCacheType, Load, LoadFailed, Profile, Ready,
};
use worker_cpu::engine::LlamaEngine;
use worker_kit::LocalError;

use crate::BACKEND;

pub fn model() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run deploy/fetch-model.sh",
        path.display()
    );
    path
}

/// A copy of the model without its `tokenizer.chat_template`: the key is
/// renamed to one of the same length, so every offset stays valid.
fn without_template(dir: &Path) -> PathBuf {
    let key = b"tokenizer.chat_template";
    let other = b"rocksteady.test_no_tmpl";
    assert_eq!(key.len(), other.len());
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key);
    let mut bytes = std::fs::read(model()).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the model has an embedded template");
    bytes[at + 8..at + needle.len()].copy_from_slice(other);
    let path = dir.join("SmolLM2-no-template.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load(path: &Path, chat_template: Option<&str>) -> Load {
    Load {
        model_path: path.to_string_lossy().into_owned(),
        profile: Profile {
            name: "test".into(),
            context_size: 512,
            batch_size: 256,
            threads: 2,
            kv_cache_type: KvCacheType::F16,
            flash_attention: false,
            max_new_tokens: 48,
        },
        backend: BackendOptions::Cpu(CpuOptions {
            use_mmap: true,
            chat_template: chat_template.map(str::to_owned),
            cache_sequences: 0,
        }),
    }
}

/// Loads, and on Ready asks `question` (greedy; a one-token greeting when
/// none is given, since the runtime's local path always generates): the
/// load's outcome and the answer.
fn run(load: Load, question: Option<&str>) -> (Result<Ready, LoadFailed>, String) {
    let _one = BACKEND.lock().unwrap_or_else(PoisonError::into_inner);
    // llama.cpp's chatter goes to tracing (no subscriber here), not stderr.
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let generate = Generate {
        request_id: 1,
        messages: vec![ChatMessage::new(Role::User, question.unwrap_or("Hi"))],
        params: GenParams {
            max_tokens: if question.is_some() { 48 } else { 1 },
            temperature: 0.0,
            ..GenParams::default()
        },
        assistant_prefix: String::new(),
        conversation: None,
    };
    let mut answer = String::new();
    let outcome = worker_kit::generate_locally(LlamaEngine::default(), load, generate, &mut |p| {
        answer.push_str(p);
    });
    match outcome {
        Ok((ready, _)) => (
            Ok(ready),
            if question.is_some() {
                answer
            } else {
                String::new()
            },
        ),
        Err(LocalError::Load { exit_code, message }) => {
            (Err(LoadFailed { exit_code, message }), String::new())
        }
        Err(e) => panic!("generation failed: {e}"),
    }
}

const QUESTION: &str = "What is the capital of France?";

fn assert_no_markers(answer: &str) {
    for marker in ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "[INST]"] {
        assert!(!answer.contains(marker), "{answer:?}");
    }
}

#[test]
fn a_model_without_a_template_gets_its_architectures_and_answers_like_with_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let stripped = without_template(dir.path());
    let (ready, stripped_answer) = run(load(&stripped, None), Some(QUESTION));
    let ready = ready.unwrap();
    // SmolLM2 is a "llama" whose vocabulary has ChatML's turn tokens.
    assert_eq!(
        ready.model.chat_template,
        "chatml (default for architecture llama with <|im_start|> in its vocabulary; the model file has no template)"
    );
    let (ready, own_answer) = run(load(&model(), None), Some(QUESTION));
    assert_eq!(
        ready.unwrap().model.chat_template,
        "chatml (embedded in the model file)"
    );
    assert_no_markers(&stripped_answer);
    assert!(stripped_answer.contains("Paris"), "{stripped_answer:?}");
    assert_eq!(stripped_answer, own_answer, "greedy: the same prompt");
}

#[test]
fn the_slots_setting_wins_over_the_file_and_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let stripped = without_template(dir.path());
    let (ready, answer) = run(load(&stripped, Some("chatml")), Some(QUESTION));
    assert_eq!(
        ready.unwrap().model.chat_template,
        "chatml (set by chat_template)"
    );
    assert_no_markers(&answer);
    assert!(answer.contains("Paris"), "{answer:?}");
    // Over an embedded template too (a wrong choice for this model, but
    // the operator's).
    let (ready, _) = run(load(&model(), Some("gemma")), None);
    assert_eq!(
        ready.unwrap().model.chat_template,
        "gemma (set by chat_template)"
    );
}

#[test]
fn an_unknown_template_name_is_a_load_error_not_chatml() {
    let (ready, _) = run(load(&model(), Some("chatlm")), None);
    let failed = ready.unwrap_err();
    assert_eq!(failed.exit_code, ExitCode::BadSettings.code());
    assert!(failed.message.contains("\"chatlm\""), "{}", failed.message);
    assert!(
        failed.message.contains("chatml, llama3"),
        "{}",
        failed.message
    );
}

#[test]
fn a_template_file_works_when_llama_cpp_recognises_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let stripped = without_template(dir.path());
    let chatml = dir.path().join("chatml.jinja");
    std::fs::write(
        &chatml,
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    )
    .unwrap();
    let setting = chatml.to_string_lossy().into_owned();
    let (ready, answer) = run(load(&stripped, Some(&setting)), Some(QUESTION));
    let facts = ready.unwrap().model;
    assert_eq!(
        facts.chat_template,
        format!(
            "chatml (file {} set by chat_template, which llama.cpp renders as chatml)",
            chatml.display()
        )
    );
    assert!(answer.contains("Paris"), "{answer:?}");

    // Jinja in a format llama.cpp does not know: refused at load, with the
    // reason (llama.cpp runs no Jinja) and the fix.
    let custom = dir.path().join("custom.jinja");
    std::fs::write(
        &custom,
        "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}### assistant:\n",
    )
    .unwrap();
    let (ready, _) = run(
        load(&stripped, Some(&custom.to_string_lossy())),
        Some(QUESTION),
    );
    let failed = ready.unwrap_err();
    assert_eq!(failed.exit_code, ExitCode::BadSettings.code());
    assert!(
        failed.message.contains(&custom.display().to_string())
            && failed.message.contains("does not run Jinja")
            && failed.message.contains("chat_template"),
        "{}",
        failed.message
    );

    // A file that is not there.
    let missing = dir.path().join("nope.jinja");
    let (ready, _) = run(load(&stripped, Some(&missing.to_string_lossy())), None);
    let failed = ready.unwrap_err();
    assert_eq!(failed.exit_code, ExitCode::BadSettings.code());
    assert!(
        failed.message.contains("cannot be read"),
        "{}",
        failed.message
    );
}

#[test]
fn every_builtin_name_is_one_this_llama_cpp_renders() {
    let _one = BACKEND.lock().unwrap_or_else(PoisonError::into_inner);
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let backend = LlamaBackend::init().unwrap();
    let model =
        LlamaModel::load_from_file(&backend, model(), &LlamaModelParams::default()).unwrap();
    for name in BUILTIN {
        let tmpl = LlamaChatTemplate::new(name).unwrap();
        assert!(
            worker_cpu::template::render_probe(&model, &tmpl).is_some(),
            "llama.cpp does not know {name:?}"
        );
    }
    let typo = LlamaChatTemplate::new("chatlm").unwrap();
    assert!(worker_cpu::template::render_probe(&model, &typo).is_none());
}
