//! Broken model files: each gets its own message and exit code from the
//! worker, and the supervisor marks the slot unavailable instead of
//! restarting it in a loop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proto::admin::SlotState;
use proto::client::{ErrorKind, SupervisorToClient};
use proto::worker::ExitCode;

use crate::support::{bin, collect, cpu_slot, greedy, model, user, Sup};

/// (case name, file maker, exit code, words the message must contain)
fn cases(dir: &Path) -> Vec<(&'static str, PathBuf, ExitCode, &'static str)> {
    let missing = dir.join("missing.gguf");
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let html = dir.join("html.gguf");
    std::fs::write(&html, b"<!DOCTYPE html><html>404</html>").unwrap();
    let old = dir.join("old.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(1u32.to_le_bytes());
    bytes.extend([0u8; 64]);
    std::fs::write(&old, bytes).unwrap();
    let truncated = dir.join("truncated.gguf");
    let real = std::fs::read(model()).unwrap();
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    vec![
        ("missing", missing, ExitCode::ModelMissing, "does not exist"),
        ("empty", empty, ExitCode::ModelEmpty, "empty (0 bytes)"),
        (
            "not gguf",
            html,
            ExitCode::ModelBadFormat,
            "not a GGUF file",
        ),
        (
            "old version",
            old,
            ExitCode::ModelBadVersion,
            "GGUF version 1",
        ),
        (
            "truncated",
            truncated,
            ExitCode::ModelTruncated,
            "truncated",
        ),
    ]
}

#[test]
fn each_broken_file_has_its_own_message_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut codes = Vec::new();
    for (name, path, code, words) in cases(dir.path()) {
        let out = Command::new(bin("worker-cpu"))
            .args(["generate", "--prompt", "hi", "--model"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code.code()), "{name}: {stderr}");
        assert!(stderr.contains(words), "{name}: {stderr}");
        codes.push(code.code());
    }
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), 5, "exit codes must be distinct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_marks_a_broken_model_unavailable_without_restarting() {
    let dir = tempfile::tempdir().unwrap();
    for (name, path, _, words) in cases(dir.path()) {
        let sup = Sup::start(&cpu_slot("primary", &path, "")).await;
        let slot = sup
            .wait_state("primary", SlotState::Unavailable, Duration::from_secs(30))
            .await;
        assert!(slot.reason.contains(words), "{name}: {}", slot.reason);
        assert_eq!(slot.restarts, 0, "{name}: {slot:?}");
        assert_eq!(slot.pid, None, "{name}");
        // It stays that way: no restart loop.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let later = sup.slot("primary").await;
        assert_eq!(
            (later.state, later.restarts),
            (SlotState::Unavailable, 0),
            "{name}"
        );
        // A request is refused with the reason, not left waiting.
        let mut client = sup.client().await;
        client.submit(user("hello"), greedy(8)).await.unwrap();
        let events = collect(&mut client, Duration::from_secs(5)).await;
        let SupervisorToClient::Error(e) = &events[0].1 else {
            panic!("{name}: {events:?}")
        };
        assert_eq!(e.kind, ErrorKind::NoWorker, "{name}");
        assert!(e.message.contains(words), "{name}: {}", e.message);
        sup.stop().await;
    }
}

/// Runs `supctl check-model` and returns its exit status and output.
fn check_model(path: &Path, board: Option<&str>) -> (Option<i32>, String) {
    // No config: check-model needs none.
    check_model_with(path, board, &path.with_extension("no-config.toml"))
}

fn check_model_with(path: &Path, board: Option<&str>, config: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("supctl"));
    cmd.arg("--config").arg(config);
    cmd.arg("check-model").arg(path);
    if let Some(board) = board {
        cmd.args(["--board", board]);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn check_model_says_truncated_for_a_header_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(model()).unwrap();
    // 24 bytes end right after the tensor and metadata counts; the others
    // cut inside a key, the vocabulary and the tensor table.
    for cut in [24, 30, 100_000, 1_769_600] {
        let path = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &real[..cut]).unwrap();
        let (code, text) = check_model(&path, None);
        assert!(text.contains("is truncated"), "cut at {cut}: {text}");
        assert!(!text.contains("corrupt"), "cut at {cut}: {text}");
        assert_eq!(code, Some(4), "cut at {cut}: {text}");
    }
}

#[test]
fn check_model_exit_status_tells_ok_suspect_broken_and_unexamined_apart() {
    let dir = tempfile::tempdir().unwrap();
    let sized = |name: &str, len: u64| {
        let path = dir.path().join(name);
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path
    };
    let (code, text) = check_model(&model(), None);
    assert_eq!(code, Some(0), "{text}");
    let right = sized("qwen_w8a8_rk3588.rkllm", 200 << 20);
    let (code, text) = check_model(&right, Some("rk3588"));
    assert_eq!(code, Some(0), "{text}");
    // Converted for another SoC, by its name: suspect, not fine, not broken.
    let other = sized("qwen_w8a8_rk3576.rkllm", 200 << 20);
    let (code, text) = check_model(&other, Some("rk3588"));
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("the file name says rk3576"), "{text}");
    let empty = sized("empty_rk3588.rkllm", 0);
    let (code, text) = check_model(&empty, Some("rk3588"));
    assert_eq!(code, Some(4), "{text}");
    let (code, text) = check_model(&dir.path().join("absent.gguf"), None);
    assert_eq!(code, Some(5), "{text}");
    // A bad argument is supctl's own failure, not a verdict on the file.
    let (code, text) = check_model(&right, Some("rk9999"));
    assert_eq!(code, Some(1), "{text}");
}

#[test]
fn check_model_shows_the_chat_template_in_use_and_where_it_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = check_model(&model(), None);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("template: embedded in the model file"),
        "{text}"
    );
    // The same model without its template (the key renamed, same length).
    let mut bytes = std::fs::read(model()).unwrap();
    let mut needle = 23u64.to_le_bytes().to_vec();
    needle.extend_from_slice(b"tokenizer.chat_template");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap();
    bytes[at + 8..at + needle.len()].copy_from_slice(b"rocksteady.test_no_tmpl");
    let stripped = dir.path().join("no-template.gguf");
    std::fs::write(&stripped, bytes).unwrap();
    let (code, text) = check_model(&stripped, None);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("template: chatml (default for architecture llama with <|im_start|> in its vocabulary; the model file has no template)"),
        "{text}"
    );
    // A CPU slot serving this file sets one: that is the one shown.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        cpu_slot("primary", &model(), "")
            + &cpu_slot("fallback", &stripped, "").replace(
                "[slots.fallback.profile]",
                "[slots.fallback.cpu]\nchat_template = \"llama3\"\n[slots.fallback.profile]",
            ),
    )
    .unwrap();
    let (code, text) = check_model_with(&stripped, None, &config);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("template: llama3 (set by chat_template)")
            && text.contains("slots.fallback.cpu.chat_template = \"llama3\""),
        "{text}"
    );
}
