//! Every way a load can fail gives its own exit code and an operator-
//! actionable reason, both in LoadFailed and in the process's exit status.

use std::fs::File;
use std::io::Write;
use std::time::Duration;

use proto::worker::{BackendOptions, ExitCode, Load, WorkerToSupervisor};

use crate::support::{Fixture, FAKE_1_2, FAKE_1_3, FAKE_UNKNOWN};

/// Loads, expects LoadFailed with `code`, then the process exiting with it.
/// Returns the message.
async fn fails_with(fx: &Fixture, load: Load, code: i32) -> String {
    let mut w = fx.spawn().await;
    let message = match w.load(load).await {
        WorkerToSupervisor::LoadFailed(failed) => {
            assert_eq!(failed.exit_code, code, "{}", failed.message);
            failed.message
        }
        other => panic!(
            "expected LoadFailed({code}), got {other:?}\nlog:\n{}",
            fx.log_text()
        ),
    };
    let status = w.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(code), "{status:?}");
    message
}

async fn mode_fails_with(mode: &str, code: ExitCode) -> (Fixture, String) {
    let fx = Fixture::new().env("FAKE_RKLLM_MODE", mode);
    let load = fx.load(FAKE_1_2, "auto");
    let message = fails_with(&fx, load, code.code()).await;
    (fx, message)
}

#[tokio::test]
async fn invalid_model_reported_on_stderr_fails_although_init_returned_zero() {
    let (fx, message) = mode_fails_with("invalid_model", ExitCode::ModelInvalid).await;
    assert!(
        message.contains("E rkllm: invalid rkllm model!"),
        "{message}"
    );
    assert!(message.contains("re-download"), "{message}");
    assert!(
        message.contains(&fx.model.display().to_string()),
        "{message}"
    );
    // rkllm_init was called and returned 0: only its log said it failed.
    assert_eq!(fx.recorded("init_returned").as_deref(), Some("0"));
    assert!(
        fx.recorded("destroy").is_none(),
        "a failed init is not torn down"
    );
    // The runtime's line went through the worker's log.
    let log = fx.log_text();
    assert!(
        log.lines().any(|l| l.contains("rkllm")
            && l.contains("WARN")
            && l.contains("invalid rkllm model")),
        "{log}"
    );
}

#[tokio::test]
async fn platform_mismatch() {
    let (_, message) = mode_fails_with("platform_mismatch", ExitCode::PlatformMismatch).await;
    assert!(
        message.contains("target_platform does not match"),
        "{message}"
    );
    assert!(message.contains("re-convert"), "{message}");
}

#[tokio::test]
async fn npu_memory_exhausted() {
    let (_, message) = mode_fails_with("npu_oom", ExitCode::AcceleratorMemory).await;
    assert!(message.contains("failed to malloc npu memory"), "{message}");
    assert!(message.contains("base_domain_id"), "{message}");
}

#[tokio::test]
async fn unsupported_soc() {
    let (_, message) = mode_fails_with("unknown_platform", ExitCode::UnsupportedPlatform).await;
    assert!(message.contains("Platform error"), "{message}");
    assert!(message.contains("RK3588"), "{message}");
}

#[tokio::test]
async fn unrecognised_init_error_may_be_retried() {
    let fx = Fixture::new().env("FAKE_RKLLM_MODE", "init_error");
    let load = fx.load(FAKE_1_3, "auto");
    let message = fails_with(&fx, load, 1).await;
    assert!(
        message.contains("something the worker has never seen"),
        "{message}"
    );
}

#[tokio::test]
async fn context_above_the_models_limit() {
    let fx = Fixture::new().env("FAKE_RKLLM_CONTEXT_LIMIT", "1024");
    let load = fx.load(FAKE_1_3, "auto");
    let message = fails_with(&fx, load, ExitCode::ContextTooLong.code()).await;
    assert!(message.contains("context_size 2048"), "{message}");
    assert!(message.contains("at most 1024"), "{message}");
    // Caught from the init log, before a first run could crash on it.
    assert!(fx.recorded("run_prompt").is_none());
}

#[tokio::test]
async fn runtime_not_installed() {
    let fx = Fixture::new();
    let missing = fx.dir.path().join("nowhere/librkllmrt.so");
    let load = fx.load(&missing.to_string_lossy(), "auto");
    let message = fails_with(&fx, load, ExitCode::RuntimeMissing.code()).await;
    assert!(
        message.contains(&format!(
            "NPU runtime not installed at {}",
            missing.display()
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_broken_model_file_is_reported_before_a_missing_runtime() {
    // Both wrong: the file is what must be fetched again whatever else is
    // fixed, so it decides the exit code; the message names both.
    let fx = Fixture::new();
    File::create(&fx.model).unwrap().set_len(0).unwrap();
    let missing = fx.dir.path().join("nowhere/librkllmrt.so");
    let load = fx.load(&missing.to_string_lossy(), "auto");
    let message = fails_with(&fx, load, ExitCode::ModelEmpty.code()).await;
    let file_at = message.find("0 bytes").expect(&message);
    let runtime_at = message
        .find(&format!("not installed at {}", missing.display()))
        .expect(&message);
    assert!(file_at < runtime_at, "{message}");
}

#[tokio::test]
async fn unknown_runtime_version_is_refused_under_auto() {
    let fx = Fixture::new();
    let load = fx.load(FAKE_UNKNOWN, "auto");
    let message = fails_with(&fx, load, ExitCode::RuntimeUnsupported.code()).await;
    assert!(message.contains("1.1.4"), "{message}");
    assert!(message.contains("1.3.0"), "{message}");
    assert!(
        fx.recorded("abi").is_none(),
        "rkllm_init must not be called"
    );
}

#[tokio::test]
async fn explicit_abi_setting_is_used_without_version_check() {
    // The operator vouches for the layout: a release auto would refuse loads.
    let fx = Fixture::new();
    let mut w = fx.spawn().await;
    assert!(matches!(
        w.load(fx.load(FAKE_UNKNOWN, "1.2")).await,
        WorkerToSupervisor::Ready(_)
    ));
    assert_eq!(fx.recorded("abi").as_deref(), Some("1.2"));
}

#[tokio::test]
async fn a_file_that_is_not_a_library() {
    let fx = Fixture::new();
    let fake = fx.dir.path().join("librkllmrt.so");
    std::fs::write(&fake, b"RKLLM SDK (version: 1.2.1)\n").unwrap();
    let load = fx.load(&fake.to_string_lossy(), "auto");
    let message = fails_with(&fx, load, ExitCode::RuntimeUnsupported.code()).await;
    assert!(message.contains("cannot load the NPU runtime"), "{message}");
}

#[tokio::test]
async fn unknown_abi_setting() {
    let fx = Fixture::new();
    let load = fx.load(FAKE_1_2, "2.0");
    let message = fails_with(&fx, load, ExitCode::BadSettings.code()).await;
    assert!(message.contains("\"2.0\""), "{message}");
}

#[tokio::test]
async fn model_file_problems() {
    // Missing.
    let fx = Fixture::new();
    let mut load = fx.load(FAKE_1_2, "auto");
    load.model_path = fx
        .dir
        .path()
        .join("absent.rkllm")
        .to_string_lossy()
        .into_owned();
    let message = fails_with(&fx, load, ExitCode::ModelMissing.code()).await;
    assert!(message.contains("does not exist"), "{message}");

    // 0 bytes.
    let fx = Fixture::new();
    File::create(&fx.model).unwrap().set_len(0).unwrap();
    let load = fx.load(FAKE_1_2, "auto");
    let message = fails_with(&fx, load, ExitCode::ModelEmpty.code()).await;
    assert!(message.contains("0 bytes"), "{message}");
    assert!(message.contains("re-convert it for rk3588"), "{message}");

    // A directory where the file should be.
    let fx = Fixture::new();
    let mut load = fx.load(FAKE_1_2, "auto");
    let dir = fx.dir.path().join("model.rkllm");
    std::fs::create_dir(&dir).unwrap();
    load.model_path = dir.to_string_lossy().into_owned();
    fails_with(&fx, load, ExitCode::ModelUnreadable.code()).await;

    // Cut off far below any model.
    let fx = Fixture::new();
    File::create(&fx.model).unwrap().set_len(100_000).unwrap();
    let load = fx.load(FAKE_1_2, "auto");
    let message = fails_with(&fx, load, ExitCode::ModelTruncated.code()).await;
    assert!(message.contains("incomplete"), "{message}");

    // A Git LFS pointer saved as the model.
    let fx = Fixture::new();
    let mut f = File::create(&fx.model).unwrap();
    f.write_all(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
        .unwrap();
    let load = fx.load(FAKE_1_2, "auto");
    let message = fails_with(&fx, load, ExitCode::ModelBadFormat.code()).await;
    assert!(message.contains("git lfs pull"), "{message}");
    assert!(
        fx.recorded("abi").is_none(),
        "the runtime never saw the file"
    );
}

#[tokio::test]
async fn load_for_another_backend_is_refused() {
    let fx = Fixture::new();
    let mut load = fx.load(FAKE_1_2, "auto");
    load.backend = BackendOptions::Cpu(proto::worker::CpuOptions::default());
    let message = fails_with(&fx, load, ExitCode::BadSettings.code()).await;
    assert!(message.contains("another backend"), "{message}");
}
