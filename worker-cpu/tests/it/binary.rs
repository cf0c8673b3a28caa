//! Checks of the built `worker-cpu` binary itself.

/// The production worker carries no fault injection: none of the switches
/// the tests once used (worker-cpu's `ROCKSTEADY_WORKER_FAULTS`) or use now
/// (test-kit's fake worker) is in the binary installed on the board.
#[test]
fn the_binary_has_no_fault_switch() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_worker-cpu")).unwrap();
    for needle in [
        "ROCKSTEADY_WORKER_FAULTS",
        "ROCKSTEADY_FAKE_WORKER",
        "fault injection",
        "token-delay-ms",
        "grow-mib-per-s",
        "crash-on-load",
    ] {
        assert!(
            memchr::memmem::find(&binary, needle.as_bytes()).is_none(),
            "worker-cpu contains {needle:?}"
        );
    }
}

/// A bad `--cpus` is refused before anything starts, with a message that
/// says what is wrong with it.
#[test]
fn a_bad_cpu_list_is_refused_with_its_reason() {
    for (list, words) in [
        ("7-4", "backwards"),
        ("four", "not a CPU number"),
        ("", "names no CPU"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker-cpu"))
            .args(["--cpus", list, "--socket", "/nonexistent/worker.sock"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{list:?}: {stderr}");
        assert!(
            stderr.contains("--cpus") && stderr.contains(words),
            "{list:?}: {stderr}"
        );
    }
}

/// `generate --cpus` pins the standalone run as the supervisor's `--cpus`
/// pins a served one: its log line names the set.
#[test]
fn generate_runs_on_the_cpus_it_is_given() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker-cpu"))
        .args([
            "generate",
            "--cpus",
            "0",
            "--max-tokens",
            "2",
            "--prompt",
            "Hi.",
        ])
        .arg("--model")
        .arg(&model)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("threads pinned to CPUs 0"), "{stderr}");
}
