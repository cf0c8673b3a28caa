//! supctl as an operator runs it: against a running (or absent) supervisor,
//! with a broken config.

use std::process::Command;
use std::time::Duration;

use proto::admin::SlotState;

use crate::support::{bin, cpu_slot, fake_slot, model, Sup};

#[test]
fn supctl_says_when_no_supervisor_runs() {
    let dir = tempfile::tempdir().unwrap();
    for args in [vec!["status"], vec!["ask", "hello"]] {
        let out = Command::new(bin("supctl"))
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("no supervisor at") && stderr.contains("is it running?"),
            "{stderr}"
        );
    }
}

#[test]
fn supctl_says_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("supctl"))
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let os_error = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
    let cause = "No such file or directory";
    assert!(!out.status.success());
    assert_eq!(stderr.matches(cause).count(), 1, "{os_error}: {stderr}");
}

#[test]
fn supctl_with_a_broken_config_says_so_instead_of_guessing_the_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[supervisor]\nqueue_capacity = 0\n[slots.primary]\nbackend = \"cpu\"\nmodel = \"m\"\n",
            "supervisor.queue_capacity",
        ),
        ("[supervisor\n", "TOML"),
    ];
    for (text, expect) in cases {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(bin("supctl"))
            .arg("--config")
            .arg(&path)
            .arg("status")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{expect}: {stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(!stderr.contains("no supervisor at"), "{stderr}");
    }
    // A missing config file is an error too, not the default directory.
    let out = Command::new(bin("supctl"))
        .arg("--config")
        .arg(dir.path().join("absent.toml"))
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent.toml"), "{stderr}");
    assert!(!stderr.contains("no supervisor at"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supctl_ask_streams_and_status_shows_the_worker() {
    let sup = Sup::start(&cpu_slot("primary", &model(), "")).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    let run_dir = sup.config.supervisor.runtime_dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("supctl"))
            .arg("--runtime-dir")
            .arg(&run_dir)
            .args(["ask", "What is 2+2?", "--max-tokens", "24"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains('4'), "{stdout}");
    assert!(
        stderr.contains("cpu · ") && stderr.contains("tokens/s"),
        "summary missing: {stderr}"
    );

    let run_dir = sup.config.supervisor.runtime_dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("supctl"))
            .arg("--runtime-dir")
            .arg(&run_dir)
            .args(["status", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["slots"][0]["state"], "Ready");
    assert_eq!(json["slots"][0]["requests_served"], 1);
    // The template the worker reported when it loaded: SmolLM2 embeds one
    // that llama.cpp renders as ChatML.
    let template = json["slots"][0]["chat_template"]
        .as_str()
        .unwrap_or_default();
    assert!(template.contains("chatml"), "{template:?}");
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supctl_validate_runs_the_matrix() {
    let slot = cpu_slot(
        "primary",
        &model(),
        "memory_hard_mib = 2048\n[slots.primary.fallback_profile]\nname = \"small\"\ncontext_size = 512\nbatch_size = 128\nthreads = 1\nkv_cache_type = \"q8_0\"\nmax_new_tokens = 64\n",
    );
    let body = format!("[policy]\nprofile_switch_after_s = 0.5\nprofile_hold_s = 1.0\nmemory_interval_s = 0.2\n{slot}");
    let sup = Sup::start(&body).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    let config = sup.dir.path().join("config.toml");
    std::fs::write(&config, &sup.text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("supctl"))
            .arg("--config")
            .arg(&config)
            .args(["validate", "--cv-limit", "0.5"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{stdout}{stderr}");
    assert!(
        rows[0].starts_with("PASS")
            && rows[0].contains("memory at peak context")
            && rows[0].contains("ceiling 2048 MiB"),
        "{stdout}"
    );
    assert!(
        rows[1].contains("decode latency stable") && rows[1].contains("CV"),
        "{stdout}"
    );
    assert!(
        rows[2].starts_with("PASS") && rows[2].contains("switched to profile \"small\""),
        "{stdout}"
    );
    // The ceilings are back as configured.
    let slot = sup.slot("primary").await;
    assert!(!slot.memory_pressure || slot.profile == "small");
    sup.stop().await;
}

/// `supctl validate` must not pass its fallback-profile row when the switch
/// killed the worker: here the worker crashes on the reload (while a marker
/// file exists) and comes back already on the fallback profile, which used to
/// look like a clean switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supctl_validate_fails_the_fallback_row_when_the_switch_restarts_the_worker() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("crash-on-reload");
    let slot = fake_slot(
        "primary",
        // A little anonymous memory (validate simulates pressure with a 1 MiB
        // soft ceiling), and a crash on the reload while the marker exists.
        &format!(
            "token-ms=20,grow-mib-per-s=1,crash-on-load-while={}",
            marker.display()
        ),
        "memory_hard_mib = 2048\n[slots.primary.fallback_profile]\nname = \"small\"\ncontext_size = 512\nbatch_size = 128\nthreads = 1\nkv_cache_type = \"q8_0\"\nmax_new_tokens = 64\n",
    );
    let body = format!("[policy]\nprofile_switch_after_s = 0.5\nprofile_hold_s = 60.0\nmemory_interval_s = 0.2\nbackoff_initial_s = 0.2\nbackoff_max_s = 0.5\n{slot}");
    let sup = Sup::start(&body).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    std::fs::write(&marker, "").unwrap();
    let config = sup.dir.path().join("config.toml");
    std::fs::write(&config, &sup.text).unwrap();
    let validate = tokio::task::spawn_blocking(move || {
        Command::new(bin("supctl"))
            .arg("--config")
            .arg(&config)
            .args(["validate", "--cv-limit", "0.5"])
            .output()
            .unwrap()
    });
    // The reload crashes the worker; once that counted, let it come back.
    sup.wait_slot("primary", Duration::from_secs(180), |s| s.restarts >= 1)
        .await;
    std::fs::remove_file(&marker).unwrap();
    let out = validate.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{stdout}{stderr}");
    assert!(
        rows[2].starts_with("FAIL")
            && rows[2].contains("fallback profile under pressure")
            && rows[2].contains("stopped during the switch"),
        "{stdout}"
    );
    assert!(
        !out.status.success(),
        "validate must exit non-zero on a FAIL row"
    );
    sup.stop().await;
}
