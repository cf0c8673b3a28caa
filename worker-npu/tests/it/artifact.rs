//! The `.rkllm` artifact check on real files: what it refuses, what it warns
//! about, and the verdict it gives.

use std::fs::{self, File};

use model_check::rkllm::{check, inspect, Platform, RkllmError, Verdict, Warning};
use proto::worker::ExitCode;

fn sized(dir: &std::path::Path, name: &str, len: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    File::create(&path).unwrap().set_len(len).unwrap();
    path
}

#[test]
fn a_plausible_file_passes_with_its_hints() {
    let dir = tempfile::tempdir().unwrap();
    let path = sized(dir.path(), "Qwen2.5-1.5B_W8A8_RK3588.rkllm", 200 << 20);
    let info = check(&path, Some(Platform::Rk3588)).unwrap();
    assert_eq!(info.file_size, 200 << 20);
    assert_eq!(info.hints.platform, Some(Platform::Rk3588));
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    let report = inspect(&path, Some(Platform::Rk3588));
    assert_eq!(report.verdict(), Verdict::Fine);
    let text = report.to_string();
    assert!(text.contains("platform: rk3588"), "{text}");
    assert!(text.contains("quant:    w8a8"), "{text}");
}

#[test]
fn a_file_for_another_soc_is_suspect() {
    let dir = tempfile::tempdir().unwrap();
    let path = sized(dir.path(), "model-w4a16-rk3576.rkllm", 200 << 20);
    let report = inspect(&path, Some(Platform::Rk3588));
    assert_eq!(report.verdict(), Verdict::Suspect);
    let info = report.outcome.as_ref().unwrap();
    assert!(info.warnings.contains(&Warning::PlatformHint {
        named: Platform::Rk3576,
        board: Platform::Rk3588
    }));
    assert!(report.to_string().contains("target_platform=rk3588"));
}

#[test]
fn broken_files_are_artifact_problems_with_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let empty = sized(dir.path(), "e_rk3588.rkllm", 0);
    let small = sized(dir.path(), "s.rkllm", 4096);
    let html = dir.path().join("h.rkllm");
    fs::write(&html, b"<!DOCTYPE html><html><body>Not found</body></html>").unwrap();
    let gguf = dir.path().join("g.rkllm");
    fs::write(&gguf, b"GGUF\x03\0\0\0rest").unwrap();
    let cases = [
        (empty, ExitCode::ModelEmpty),
        (small, ExitCode::ModelTruncated),
        (html, ExitCode::ModelBadFormat),
        (gguf, ExitCode::ModelBadFormat),
    ];
    for (path, code) in cases {
        let report = inspect(&path, Some(Platform::Rk3588));
        assert_eq!(
            report.verdict(),
            Verdict::ArtifactProblem,
            "{}",
            path.display()
        );
        assert_eq!(report.outcome.as_ref().unwrap_err().exit_code(), code);
        assert!(
            report
                .to_string()
                .contains("re-download it or re-convert it for rk3588"),
            "{report}"
        );
    }
}

#[test]
fn path_problems_are_not_artifact_problems() {
    let dir = tempfile::tempdir().unwrap();
    let missing = inspect(&dir.path().join("nope.rkllm"), None);
    assert_eq!(missing.verdict(), Verdict::Unavailable);
    assert!(matches!(missing.outcome, Err(RkllmError::Missing { .. })));
    let not_a_file = inspect(dir.path(), None);
    assert_eq!(not_a_file.verdict(), Verdict::Unavailable);
    assert_eq!(
        not_a_file.outcome.unwrap_err().exit_code(),
        ExitCode::ModelUnreadable
    );
}
