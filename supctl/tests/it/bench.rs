//! `supctl bench` on the real supervisor, worker and model: the result file,
//! the chart, comparisons with a doctored earlier result, and the preflight
//! checks on a fake board.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use supctl::bench::preflight::{self, CheckStatus, PreflightInput};
use supctl::bench::quality::{self, Quality};
use supctl::bench::result::{BenchResult, RelayResult, TargetResult};
use supctl::bench::{self, BenchConfig, BenchOptions, Progress};

use crate::support::{bin, cpu_slot, model, Sup};

/// A `[bench]` section with one small profile named "tiny".
fn tiny_profile(extra_prompts: &str, repetitions: u32, relay: bool) -> String {
    format!(
        "[bench]\ndefault_profile = \"tiny\"\n[bench.profiles.tiny]\nbackends = [\"cpu\"]\nrepetitions = {repetitions}\nwarmup = 0\nrelay = {relay}\nrelay_repetitions = 2\nrequest_timeout_s = 120\n\
         [[bench.profiles.tiny.prompts]]\nname = \"arithmetic\"\ntext = \"What is 2+2?\"\nmax_new_tokens = 12\nexpect = \"4\"\n{extra_prompts}"
    )
}

/// Writes the config `supctl` reads: the running supervisor's directories
/// plus `body`.
fn config_file(sup: &Sup, body: &str) -> PathBuf {
    let s = &sup.config.supervisor;
    let path = sup.dir.path().join("supctl.toml");
    std::fs::write(
        &path,
        format!(
            "[supervisor]\nruntime_dir = \"{}\"\nstate_dir = \"{}\"\n{body}",
            s.runtime_dir.display(),
            s.state_dir.display()
        ),
    )
    .unwrap();
    path
}

fn supctl(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("supctl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supctl_bench_writes_consistent_figures_and_a_chart() {
    let body = format!(
        "{}{}",
        cpu_slot("primary", &model(), ""),
        tiny_profile(
            "[[bench.profiles.tiny.prompts]]\nname = \"long\"\ntext = \"Summarize the notes above in one sentence.\"\nmax_new_tokens = 6\nfill_context = 0.15\n",
            2,
            true,
        )
    );
    let sup = Sup::start(&body).await;
    let config = config_file(&sup, &body);
    let out_dir = sup.dir.path().join("results");
    let json_path = out_dir.join("result.json");
    let output = {
        let (config, json) = (config.clone(), json_path.clone());
        tokio::task::spawn_blocking(move || {
            supctl(&config, &["bench", "--output", json.to_str().unwrap()])
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    // Every field: the typed layout has no defaults, so a missing one fails here.
    let text = std::fs::read_to_string(&json_path).unwrap();
    let r: BenchResult = serde_json::from_str(&text).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "schema",
        "profile",
        "started_unix_ms",
        "duration_s",
        "host",
        "mode",
        "supervisor_version",
        "settings",
        "preflight",
        "targets",
        "skipped",
        "relay",
        "notes",
    ] {
        assert!(raw.get(key).is_some(), "{key} missing");
    }
    assert_eq!(r.profile, "tiny");
    assert_eq!(r.mode, "live");
    assert!(r
        .preflight
        .iter()
        .any(|i| i.name == "supervisor" && i.status == CheckStatus::Pass));
    assert_eq!(r.targets.len(), 1, "{:?}", r.skipped);
    let t = &r.targets[0];
    assert_eq!(t.backend, "cpu");
    assert!(t.cold);
    let load = t.load_ms.unwrap();
    assert!(
        load > 0.0 && t.restart_to_ready_ms.unwrap() >= load,
        "{t:?}"
    );

    assert_prompt_figures(t);
    assert_relay(&r.relay);

    // The Markdown report.
    assert!(stdout.contains("## Preflight"), "{stdout}");
    assert!(
        stdout.contains("| backend | model | load s | TTFT ms | decode tok/s"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("| cpu | {} |", t.model)),
        "{stdout}"
    );
    assert!(stdout.contains("Relay ratio on"), "{stdout}");

    assert_chart(&json_path.with_extension("svg"), t);

    // Routing is automatic again afterwards.
    assert_eq!(sup.status().await.routing, proto::admin::Routing::Auto);
    sup.stop().await;
}

/// Every run's figures are positive and consistent with each other.
fn assert_prompt_figures(t: &TargetResult) {
    assert_eq!(t.prompts.len(), 2);
    for p in &t.prompts {
        assert_eq!(p.runs.len(), 2);
        assert_eq!(p.output_hash, quality::hash(&p.output));
        assert!(p.prompt_tokens > 0);
        for run in &p.runs {
            assert!(run.ttft_ms > 0.0 && run.e2e_ms >= run.ttft_ms, "{run:?}");
            assert!(
                run.decode_tps > 0.0 && run.worker_decode_tps > 0.0,
                "{run:?}"
            );
            assert_eq!(run.generated_tokens, run.token_events, "{run:?}");
            assert!(run.generated_tokens >= 2 && run.generated_tokens <= p.max_new_tokens);
            let anon = run.peak_rss_anon_kb.unwrap();
            assert!(anon > 0 && run.vm_hwm_kb.unwrap() >= anon, "{run:?}");
        }
        assert!(
            p.token_ms_p50 > 0.0 && p.token_ms_p99 >= p.token_ms_p50,
            "{p:?}"
        );
        assert!(p.e2e_ms >= p.ttft_ms && p.decode_tps > 0.0);
        assert!(p.outputs_consistent, "greedy outputs differ: {p:?}");
    }
    let arithmetic = &t.prompts[0];
    assert_eq!(arithmetic.quality, Quality::Pass, "{:?}", arithmetic.output);
    assert!(arithmetic.output.contains('4'));
    let long = &t.prompts[1];
    assert_eq!(long.quality, Quality::Unchecked);
    // Filled to about 15% of the 1024-token context, well beyond the question alone.
    assert!(
        long.prompt_tokens > 3 * arithmetic.prompt_tokens && long.prompt_tokens <= 180,
        "{} prompt tokens",
        long.prompt_tokens
    );
    let s = &t.summary;
    assert_eq!(s.headline_prompt, "arithmetic");
    assert!((s.speedup - 1.0).abs() < 1e-9);
    assert_eq!((s.quality_passed, s.quality_checked), (1, 1));
    assert!(s.decode_tps > 0.0 && s.e2e_s * 1000.0 >= s.ttft_ms);
}

/// Both sides of the relay measurement produced figures.
fn assert_relay(relays: &[RelayResult]) {
    assert_eq!(relays.len(), 1);
    let relay = &relays[0];
    assert!(
        relay.in_process_tps > 0.0 && relay.stack_tps > 0.0,
        "{relay:?}"
    );
    assert_eq!(relay.in_process_runs_tps.len(), 2);
    assert_eq!(relay.stack_runs_tps.len(), 2);
    let pairs: Vec<f64> = relay
        .in_process_runs_tps
        .iter()
        .zip(&relay.stack_runs_tps)
        .map(|(i, s)| s / i)
        .collect();
    assert!(
        (relay.ratio - f64::midpoint(pairs[0], pairs[1])).abs() < 1e-9,
        "{relay:?}"
    );
    assert!(relay.best_ratio > 0.0 && relay.relay_only_ratio > 0.0);
    assert!(relay.in_process_token_ms > 0.0 && relay.stack_token_ms > 0.0);
}

/// The chart is well-formed XML and names the row.
fn assert_chart(path: &Path, t: &TargetResult) {
    let svg = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    let label = bench::svg::row_label(&t.backend, &t.model);
    assert!(texts.contains(&label.as_str()), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("×1.00")), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_flags_drift_and_regression_against_a_doctored_result() {
    let body = format!(
        "{}{}",
        cpu_slot("primary", &model(), ""),
        tiny_profile("", 1, false)
    );
    let sup = Sup::start(&body).await;
    let config = config_file(&sup, &body);
    let bench_config = BenchConfig::from_toml(&sup.text, sup.dir.path()).unwrap();
    let first = sup.dir.path().join("results/first.json");
    let opts = BenchOptions {
        output: Some(first.clone()),
        warm: true,
        ..BenchOptions::default()
    };
    let mut report = Vec::new();
    let outcome = bench::run(
        &sup.config,
        &bench_config,
        &opts,
        &Progress::hidden(),
        &mut report,
    )
    .await
    .unwrap();
    assert!(outcome.comparison.is_none(), "nothing to compare with yet");
    assert_eq!(outcome.json_path, first);

    // An earlier run that was far faster and answered differently.
    let mut doctored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    let target = &mut doctored["targets"][0];
    assert!(target["summary"]["decode_tps"].as_f64().unwrap() > 0.0);
    target["summary"]["decode_tps"] = 1e6.into();
    target["prompts"][0]["output_hash"] = quality::hash("The answer is 5.").into();
    doctored["started_unix_ms"] = 0.into();
    let later = sup.dir.path().join("later");
    std::fs::create_dir_all(&later).unwrap();
    let previous = later.join("previous.json");
    std::fs::write(&previous, doctored.to_string()).unwrap();

    // A second run beside it compares with it without being told.
    let second = later.join("second.json");
    let opts = BenchOptions {
        output: Some(second.clone()),
        warm: true,
        ..BenchOptions::default()
    };
    let mut report = Vec::new();
    let outcome = bench::run(
        &sup.config,
        &bench_config,
        &opts,
        &Progress::hidden(),
        &mut report,
    )
    .await
    .unwrap();
    let c = outcome.comparison.as_ref().unwrap();
    assert_eq!(c.previous, previous.display().to_string());
    assert!(outcome.flagged());
    assert!(
        c.drift
            .iter()
            .any(|d| d.contains("arithmetic") && d.contains("output changed")),
        "{c:?}"
    );
    assert!(
        c.regressions.iter().any(|r| r.contains("decode tok/s")),
        "{c:?}"
    );
    let report = String::from_utf8(report).unwrap();
    assert!(
        report.contains("**REGRESSION**") && report.contains("Quality drift"),
        "{report}"
    );

    supctl_compares_files(&config, &previous, &first, &second).await;
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_compares_models_on_private_supervisors() {
    let dir = tempfile::tempdir().unwrap();
    // The same weights under another name: a second model to compare.
    let copy = dir.path().join("copy.gguf");
    std::os::unix::fs::symlink(model(), &copy).unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[supervisor]\nruntime_dir = \"{0}/run\"\nstate_dir = \"{0}/state\"\n[http]\nlisten = \"\"\n{1}{2}",
            dir.path().display(),
            cpu_slot("primary", &model(), ""),
            tiny_profile("", 1, false).replace(
                "backends = [\"cpu\"]",
                "backends = [\"cpu\"]\nmodels = [\"copy.gguf\"]"
            ),
        ),
    )
    .unwrap();
    let json = dir.path().join("spawn.json");
    let out = {
        let (cfg, json) = (cfg.clone(), json.clone());
        tokio::task::spawn_blocking(move || {
            supctl(
                &cfg,
                &["bench", "--spawn", "--output", json.to_str().unwrap()],
            )
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = BenchResult::load(&json).unwrap();
    assert_eq!(r.mode, "private");
    let paths: Vec<&str> = r.targets.iter().map(|t| t.model_path.as_str()).collect();
    assert_eq!(
        paths,
        [model().display().to_string(), copy.display().to_string()],
        "{:?}",
        r.skipped
    );
    // Same weights, greedy: the same answer, and each was loaded on its own.
    let hashes: Vec<&str> = r
        .targets
        .iter()
        .map(|t| t.prompts[0].output_hash.as_str())
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    assert!(r
        .targets
        .iter()
        .all(|t| t.cold && t.load_ms.is_some_and(|ms| ms > 0.0)));
    assert!(r.targets.iter().all(|t| t.summary.quality_passed == 1));
    // The private supervisors stopped their workers before supctl ended.
    // (Only this build's workers: other checkouts' tests may run beside us.)
    let ours = bin("worker-cpu").display().to_string();
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with(&ours) && c.contains("rocksteady-bench-"))
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn preflight_on_a_fake_board_reads_refuses_and_waits() {
    let board = tempfile::tempdir().unwrap();
    let sysfs = board.path().join("sys");
    write(
        &sysfs,
        "devices/system/cpu/cpufreq/policy0/scaling_governor",
        "schedutil\n",
    );
    write(
        &sysfs,
        "devices/system/cpu/cpufreq/policy4/scaling_governor",
        "performance\n",
    );
    std::fs::create_dir_all(sysfs.join("devices/system/cpu/cpufreq/policy6")).unwrap();
    write(&sysfs, "class/thermal/thermal_zone0/type", "soc-thermal\n");
    write(&sysfs, "class/thermal/thermal_zone0/temp", "45000\n");
    write(&sysfs, "class/thermal/thermal_zone1/type", "npu-thermal\n");
    write(&sysfs, "class/thermal/thermal_zone1/temp", "95500\n");
    let proc_root = board.path().join("proc"); // no meminfo
    let debugfs = board.path().join("debug"); // no rknpu
    let input = PreflightInput {
        proc_root: proc_root.clone(),
        sysfs_root: sysfs.clone(),
        debugfs_root: debugfs.clone(),
        need_mib: 300,
        max_start_c: 85.0,
        cool_to_c: 50.0,
        drop_caches: false,
        is_root: false,
        npu: true,
    };
    let items = preflight::run_checks(&input);
    let item = |name: &str| {
        items
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no {name} in {items:?}"))
    };
    assert_eq!(item("governor policy0").status, CheckStatus::Warn);
    assert!(item("governor policy0").value.contains("schedutil"));
    assert_eq!(item("governor policy4").status, CheckStatus::Pass);
    assert_eq!(item("governor policy6").status, CheckStatus::NotAvailable);
    assert_eq!(item("thermal soc-thermal").status, CheckStatus::Pass);
    assert_eq!(item("thermal npu-thermal").status, CheckStatus::Fail);
    assert!(item("thermal npu-thermal").value.contains("95.5"));
    for name in ["MemAvailable", "npu driver", "npu load"] {
        assert_eq!(item(name).status, CheckStatus::NotAvailable, "{name}");
        assert!(item(name).value.starts_with("n/a"), "{name}");
    }
    assert_eq!(
        preflight::refusal(&items).unwrap().name,
        "thermal npu-thermal"
    );

    // supctl refuses before loading anything, and says why.
    let cfg = board.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[supervisor]\nruntime_dir = \"{0}/run\"\nstate_dir = \"{0}/state\"\n{1}[telemetry]\nproc_root = \"{2}\"\nsysfs_root = \"{3}\"\ndebugfs_root = \"{4}\"\n[bench]\ncool_to_c = 50\n",
            board.path().display(),
            cpu_slot("primary", &model(), ""),
            proc_root.display(),
            sysfs.display(),
            debugfs.display()
        ),
    )
    .unwrap();
    let out = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || supctl(&cfg, &["bench", "--spawn", "--no-relay"]))
            .await
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("refusing to start") && stderr.contains("npu-thermal"),
        "{stderr}"
    );
    assert!(stdout.contains("FAIL **thermal npu-thermal**"), "{stdout}");
    assert!(stdout.contains("schedutil"), "{stdout}");
    assert!(!board.path().join("run").exists(), "nothing was started");

    // Between runs: waits for the cooling limit, gives up at the time limit.
    write(&sysfs, "class/thermal/thermal_zone1/temp", "60000\n");
    let wait = preflight::wait_until_cool(&sysfs, 50.0, Duration::from_millis(300)).await;
    assert!(
        wait.timed_out && wait.waited >= Duration::from_millis(300),
        "{wait:?}"
    );
    assert_eq!(wait.hottest_c, Some(60.0));
    write(&sysfs, "class/thermal/thermal_zone1/temp", "42000\n");
    let wait = preflight::wait_until_cool(&sysfs, 50.0, Duration::from_secs(5)).await;
    assert!(
        !wait.timed_out && wait.waited < Duration::from_secs(1),
        "{wait:?}"
    );
}

/// supctl compares result files without running anything.
async fn supctl_compares_files(config: &Path, previous: &Path, first: &Path, second: &Path) {
    // supctl compares files without running: flagged against the doctored
    // one (exit 2), clean against the untouched first run.
    let (cfg, prev, sec, fst) = (
        config.to_owned(),
        previous.to_owned(),
        second.to_owned(),
        first.to_owned(),
    );
    let (flagged, clean) = tokio::task::spawn_blocking(move || {
        let a = supctl(
            &cfg,
            &[
                "bench",
                "--compare",
                prev.to_str().unwrap(),
                "--from",
                sec.to_str().unwrap(),
                "--threshold",
                "10",
            ],
        );
        let b = supctl(
            &cfg,
            &[
                "bench",
                "--compare",
                fst.to_str().unwrap(),
                "--from",
                fst.to_str().unwrap(),
            ],
        );
        (a, b)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&flagged.stdout);
    assert_eq!(flagged.status.code(), Some(2), "{text}");
    assert!(
        text.contains("REGRESSION") && text.contains("output changed"),
        "{text}"
    );
    let text = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{text}");
    assert!(
        text.contains("No regression") && text.contains("No quality drift"),
        "{text}"
    );
}
