//! The real worker binary over a socket with the fake runtime: streaming,
//! parameters reaching the runtime, cancel, limits, continuation, hang,
//! crash, and the end of the conversation.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use proto::chat::{Backend, ChatMessage, FinishReason, GenParams, Role};
use proto::worker::{
    BackendOptions, CancelGeneration, Generate, Ping, SupervisorToWorker, WorkerErrorKind,
    WorkerToSupervisor,
};

use crate::support::{
    ask, record_map, unescape, Fixture, Worker, FAKE_1_2, FAKE_1_3, MODEL_NAME, SCRIPT,
};

async fn ready_worker(fx: &Fixture, runtime: &str) -> Worker {
    let mut w = fx.spawn().await;
    match w.load(fx.load(runtime, "auto")).await {
        WorkerToSupervisor::Ready(_) => w,
        other => panic!("expected Ready, got {other:?}\nlog:\n{}", fx.log_text()),
    }
}

async fn streams_script(runtime: &str, abi: &str, callback_kind: &str, chunk: &str) {
    let fx = Fixture::new().env("FAKE_RKLLM_CHUNK", chunk);
    let mut w = fx.spawn().await;
    let pid = w.pid();
    let WorkerToSupervisor::Ready(ready) = w.load(fx.load(runtime, "auto")).await else {
        panic!("no Ready\n{}", fx.log_text())
    };
    assert_eq!(ready.backend, Backend::Npu);
    assert_eq!(ready.pid, pid);
    assert_eq!(ready.profile, "test");
    assert_eq!(ready.model.name, MODEL_NAME.trim_end_matches(".rkllm"));
    assert_eq!(ready.model.file_size, 2 << 20);
    assert_eq!(ready.model.context_size, 2048);
    // Logged by the runtime only at RKLLM_LOG_LEVEL >= 1, which the worker sets.
    assert_eq!(ready.model.train_context, 4096);
    assert!(ready.load_ms > 0.0);

    w.send(SupervisorToWorker::Generate(ask(7, "Say hello")))
        .await;
    let (pieces, end) = w.collect(7).await;
    assert_eq!(pieces.concat(), SCRIPT);
    assert!(pieces.len() > 5, "streamed in pieces: {pieces:?}");
    let WorkerToSupervisor::Done(done) = end else {
        panic!("expected Done, got {end:?}")
    };
    assert_eq!(done.request_id, 7);
    assert_eq!(done.finish, FinishReason::EndOfTurn);

    let rec = record_map(&fx.record());
    // The stream really did split characters across WAITING callbacks.
    assert!(
        rec["run_waiting_pieces"].parse::<u32>().unwrap() >= 2,
        "{rec:?}"
    );
    // The runtime's own figures reach the supervisor.
    assert_eq!(
        done.stats.generated_tokens.to_string(),
        rec["run_generate_tokens"]
    );
    assert_eq!(
        done.stats.prompt_tokens.to_string(),
        rec["run_prefill_tokens"]
    );
    assert!((done.stats.prefill_ms - 12.5).abs() < 1e-6);
    assert!(done.stats.decode_tps > 0.0);
    assert!(done.stats.ttft_ms > 0.0);

    // The layout the runtime saw is the one it was built for.
    assert_eq!(rec["abi"], abi);
    assert_eq!(rec["callback_kind"], callback_kind);
    assert_eq!(rec["model_path"], fx.model.to_string_lossy());
    assert_eq!(rec["max_context_len"], "2048");
    assert_eq!(rec["max_new_tokens"], "256");
    assert_eq!(rec["enabled_cpus_mask"], "240");
    assert_eq!(rec["enabled_cpus_num"], "4");
    assert_eq!(rec["base_domain_id"], "0");
    assert_eq!(rec["is_async"], "0");
    assert_eq!(rec["skip_special_token"], "1");
    // GenParams::default() is greedy: top_k 1.
    assert_eq!(rec["top_k"], "1");
    assert_eq!(rec["run_role"], "user");
    assert_eq!(rec["run_input_type"], "0");
    assert_eq!(rec["run_keep_history"], "0");
    assert_eq!(rec["run_mode"], "0");
    assert_eq!(rec["run_prompt"], "Say hello");
    assert_eq!(rec["chat_prefix"], "<|im_start|>user\\n");
    assert_eq!(rec["chat_postfix"], "<|im_end|>\\n<|im_start|>assistant\\n");
    if abi == "1.3" {
        assert_eq!(rec["ignore_eos_token"], "0");
        assert_eq!(rec["callback_extras_null"], "1");
        assert_eq!(rec["run_max_new_tokens"], "256");
        assert_eq!(rec["run_sampling_null"], "1");
    } else {
        assert_eq!(rec["img_pointers_null"], "1");
    }
}

#[tokio::test]
async fn streams_the_scripted_text_exactly_abi_1_2() {
    // 3-byte pieces: characters split across pieces and pieces ending
    // inside one character while starting with the end of another.
    streams_script(FAKE_1_2, "1.2", "function", "3").await;
}

#[tokio::test]
async fn streams_the_scripted_text_exactly_abi_1_3() {
    // 1-byte pieces: every multi-byte character arrives over several WAITING callbacks.
    streams_script(FAKE_1_3, "1.3", "struct", "1").await;
}

#[tokio::test]
async fn settings_reach_the_runtime() {
    for runtime in [FAKE_1_2, FAKE_1_3] {
        let fx = Fixture::new();
        let mut w = fx.spawn().await;
        let mut load = fx.load(runtime, "auto");
        load.profile.context_size = 1024;
        load.profile.max_new_tokens = 100;
        let BackendOptions::Npu(npu) = &mut load.backend else {
            unreachable!()
        };
        npu.enabled_cpus_mask = 0x0C;
        npu.base_domain_id = 2;
        npu.system_prompt = Some("Be terse.".into());
        assert!(matches!(w.load(load).await, WorkerToSupervisor::Ready(_)));
        w.send(SupervisorToWorker::Generate(ask(1, "hi"))).await;
        let (_, end) = w.collect(1).await;
        assert!(matches!(end, WorkerToSupervisor::Done(_)), "{end:?}");
        let rec = record_map(&fx.record());
        assert_eq!(rec["enabled_cpus_mask"], "12");
        assert_eq!(rec["enabled_cpus_num"], "2");
        assert_eq!(rec["base_domain_id"], "2");
        assert_eq!(rec["max_context_len"], "1024");
        assert_eq!(rec["max_new_tokens"], "100");
        // The profile's prompt batch (64) is llama.cpp's; RKLLM's n_batch is
        // the number of sequences and stays 1.
        assert_eq!(rec["n_batch"], "1");
        assert_eq!(
            unescape(&rec["chat_system"]),
            "<|im_start|>system\nBe terse.<|im_end|>\n"
        );
    }
}

#[tokio::test]
async fn history_and_system_message_are_rendered_into_the_prompt() {
    let fx = Fixture::new();
    let mut w = ready_worker(&fx, FAKE_1_3).await;
    let generate = Generate {
        request_id: 3,
        messages: vec![
            ChatMessage::new(Role::System, "You are a pirate."),
            ChatMessage::new(Role::User, "Hi"),
            ChatMessage::new(Role::Assistant, "Arr."),
            ChatMessage::new(Role::User, "Name?"),
        ],
        params: GenParams::default(),
        assistant_prefix: String::new(),
        conversation: None,
    };
    w.send(SupervisorToWorker::Generate(generate)).await;
    let (_, end) = w.collect(3).await;
    assert!(matches!(end, WorkerToSupervisor::Done(_)));
    let full = unescape(&fx.recorded("run_full_prompt").unwrap());
    assert_eq!(
        full,
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nArr.<|im_end|>\n\
         <|im_start|>user\nName?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[tokio::test]
async fn continuation_after_assistant_prefix() {
    for runtime in [FAKE_1_2, FAKE_1_3] {
        let fx = Fixture::new();
        let mut w = ready_worker(&fx, runtime).await;
        let cut = SCRIPT.char_indices().nth(30).unwrap().0;
        let (shown, rest) = SCRIPT.split_at(cut);
        let mut generate = ask(11, "Say hello");
        generate.assistant_prefix = shown.to_owned();
        w.send(SupervisorToWorker::Generate(generate)).await;
        let (pieces, end) = w.collect(11).await;
        assert!(matches!(end, WorkerToSupervisor::Done(_)), "{end:?}");
        // The answer continues after the text already shown, without repeating it.
        assert_eq!(pieces.concat(), rest);
        let full = unescape(&fx.recorded("run_full_prompt").unwrap());
        assert!(
            full.ends_with(&format!("<|im_start|>assistant\n{shown}")),
            "{full:?}"
        );
        assert_eq!(
            fx.recorded("run_continue_at").unwrap(),
            shown.len().to_string()
        );
    }
}

#[tokio::test]
async fn cancel_reaches_rkllm_abort() {
    let fx = Fixture::new().env("FAKE_RKLLM_DELAY_MS", "150");
    let mut w = ready_worker(&fx, FAKE_1_2).await;
    w.send(SupervisorToWorker::Generate(ask(5, "long"))).await;
    match w.recv().await {
        WorkerToSupervisor::Token(t) => assert_eq!(t.request_id, 5),
        other => panic!("expected a token, got {other:?}"),
    }
    w.send(SupervisorToWorker::Cancel(CancelGeneration {
        request_id: 5,
    }))
    .await;
    let (pieces, end) = w.collect(5).await;
    let WorkerToSupervisor::Done(done) = end else {
        panic!("expected Done, got {end:?}")
    };
    assert_eq!(done.finish, FinishReason::Cancelled);
    assert!(pieces.len() <= 1, "tokens after the cancel: {pieces:?}");
    assert!(fx
        .wait_recorded("abort", Duration::from_secs(5))
        .await
        .is_some());
    // The runtime saw the abort and stopped its run.
    assert!(fx
        .wait_recorded("run_aborted_after", Duration::from_secs(5))
        .await
        .is_some());
    // A Generate right after the Done runs as soon as the runtime is free.
    w.send(SupervisorToWorker::Generate(ask(6, "again"))).await;
    let (pieces, end) = w.collect(6).await;
    assert!(matches!(end, WorkerToSupervisor::Done(_)), "{end:?}");
    assert_eq!(pieces.concat(), SCRIPT);
}

#[tokio::test]
async fn request_cap_on_both_layouts() {
    for (runtime, aborts) in [(FAKE_1_2, true), (FAKE_1_3, false)] {
        let fx = Fixture::new();
        let mut w = ready_worker(&fx, runtime).await;
        let mut generate = ask(9, "count");
        generate.params.max_tokens = 5;
        w.send(SupervisorToWorker::Generate(generate)).await;
        let (pieces, end) = w.collect(9).await;
        let WorkerToSupervisor::Done(done) = end else {
            panic!("expected Done, got {end:?}")
        };
        assert_eq!(done.finish, FinishReason::MaxTokens);
        let text = pieces.concat();
        // Five 3-byte pieces, minus a character the cap cut in half.
        assert_eq!(text, &SCRIPT[..15]);
        if aborts {
            // 1.2.x has no per-run cap: the worker stops the run.
            assert!(fx
                .wait_recorded("abort", Duration::from_secs(5))
                .await
                .is_some());
        } else {
            assert_eq!(fx.recorded("run_max_new_tokens").as_deref(), Some("5"));
            assert_eq!(fx.recorded("run_generate_tokens").as_deref(), Some("5"));
            assert_eq!(done.stats.generated_tokens, 5);
        }
    }
}

#[tokio::test]
async fn hang_still_answers_heartbeats_but_sends_no_tokens() {
    let fx = Fixture::new().env("FAKE_RKLLM_MODE", "hang");
    let mut w = ready_worker(&fx, FAKE_1_3).await;
    w.send(SupervisorToWorker::Generate(ask(21, "hang"))).await;
    for seq in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.send(SupervisorToWorker::Ping(Ping { seq })).await;
        match w.recv().await {
            WorkerToSupervisor::Heartbeat(hb) => {
                assert_eq!(hb.seq, seq);
                assert_eq!(hb.busy_with, Some(21));
                assert_eq!(hb.tokens_total, 0);
            }
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }
    assert!(fx.recorded("run_hung_after").is_some());
    // A second request is refused while the first is stuck.
    w.send(SupervisorToWorker::Generate(ask(22, "next"))).await;
    match w.recv().await {
        WorkerToSupervisor::Error(e) => {
            assert_eq!(e.request_id, 22);
            assert_eq!(e.kind, WorkerErrorKind::Busy);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    // Shutdown ends the process although the run never returns.
    w.send(SupervisorToWorker::Shutdown).await;
    let status = w.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        fx.recorded("destroy").is_none(),
        "a stuck model is not torn down"
    );
}

#[tokio::test]
async fn crash_kills_the_process_with_a_signal() {
    let fx = Fixture::new().env("FAKE_RKLLM_MODE", "crash");
    let mut w = ready_worker(&fx, FAKE_1_2).await;
    w.send(SupervisorToWorker::Generate(ask(31, "crash"))).await;
    let mut pieces = Vec::new();
    loop {
        match w
            .try_recv(Duration::from_secs(20))
            .await
            .expect("timed out")
        {
            Some(WorkerToSupervisor::Token(t)) => pieces.push(t.text),
            None => break,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    let status = w.wait(Duration::from_secs(10)).await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(SCRIPT.starts_with(&pieces.concat()));
}

#[tokio::test]
async fn runtime_error_ends_the_request_with_an_error() {
    let fx = Fixture::new().env("FAKE_RKLLM_MODE", "run_error");
    let mut w = ready_worker(&fx, FAKE_1_3).await;
    w.send(SupervisorToWorker::Generate(ask(41, "x"))).await;
    let (pieces, end) = w.collect(41).await;
    let WorkerToSupervisor::Error(err) = end else {
        panic!("expected Error, got {end:?}")
    };
    assert_eq!(err.kind, WorkerErrorKind::Engine);
    assert!(err.message.contains("RKLLM_RUN_ERROR"), "{}", err.message);
    assert_eq!(pieces.concat(), &SCRIPT[..3]);
    // The worker stays usable.
    w.send(SupervisorToWorker::Ping(Ping { seq: 1 })).await;
    match w.recv().await {
        WorkerToSupervisor::Heartbeat(hb) => assert_eq!(hb.requests_total, 1),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
}

#[tokio::test]
async fn slow_first_token_keeps_heartbeats_flowing() {
    let fx = Fixture::new()
        .env("FAKE_RKLLM_MODE", "slow_first")
        .env("FAKE_RKLLM_FIRST_DELAY_MS", "1500");
    let mut w = ready_worker(&fx, FAKE_1_2).await;
    w.send(SupervisorToWorker::Generate(ask(51, "slow"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.send(SupervisorToWorker::Ping(Ping { seq: 9 })).await;
    match w.recv().await {
        WorkerToSupervisor::Heartbeat(hb) => assert_eq!(hb.busy_with, Some(51)),
        other => panic!("expected a heartbeat before the first token, got {other:?}"),
    }
    let (pieces, end) = w.collect(51).await;
    assert_eq!(pieces.concat(), SCRIPT);
    let WorkerToSupervisor::Done(done) = end else {
        panic!("expected Done")
    };
    assert!(done.stats.ttft_ms >= 1400.0, "ttft {}", done.stats.ttft_ms);
}

#[tokio::test]
async fn leak_mode_grows_anonymous_memory() {
    let fx = Fixture::new()
        .env("FAKE_RKLLM_MODE", "leak")
        .env("FAKE_RKLLM_LEAK_MB", "16")
        .env("FAKE_RKLLM_LEAK_CAP_MB", "256");
    let mut w = ready_worker(&fx, FAKE_1_3).await;
    let pid = w.pid();
    let rss_anon_kb = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss_anon_kb();
    let mut generate = ask(61, "leak");
    generate.params.max_tokens = 10_000;
    w.send(SupervisorToWorker::Generate(generate)).await;
    for _ in 0..12 {
        assert!(matches!(w.recv().await, WorkerToSupervisor::Token(_)));
    }
    let after = rss_anon_kb();
    assert!(
        after > before + 100 * 1024,
        "RssAnon {before} kB -> {after} kB"
    );
    w.send(SupervisorToWorker::Cancel(CancelGeneration {
        request_id: 61,
    }))
    .await;
    let (_, end) = w.collect(61).await;
    assert!(matches!(end, WorkerToSupervisor::Done(_)));
}

#[tokio::test]
async fn requests_are_checked_before_the_runtime_sees_them() {
    let fx = Fixture::new();
    let mut w = fx.spawn().await;
    // Before any Load.
    w.send(SupervisorToWorker::Generate(ask(1, "early"))).await;
    match w.recv().await {
        WorkerToSupervisor::Error(e) => assert_eq!(e.kind, WorkerErrorKind::NotLoaded),
        other => panic!("expected NotLoaded, got {other:?}"),
    }
    assert!(matches!(
        w.load(fx.load(FAKE_1_2, "auto")).await,
        WorkerToSupervisor::Ready(_)
    ));
    let bad = Generate {
        request_id: 2,
        messages: vec![ChatMessage::new(Role::Assistant, "no question")],
        params: GenParams::default(),
        assistant_prefix: String::new(),
        conversation: None,
    };
    w.send(SupervisorToWorker::Generate(bad)).await;
    match w.recv().await {
        WorkerToSupervisor::Error(e) => {
            assert_eq!(e.request_id, 2);
            assert_eq!(e.kind, WorkerErrorKind::BadRequest);
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
    assert!(fx.recorded("run_prompt").is_none());
    // Still serving.
    w.send(SupervisorToWorker::Generate(ask(3, "fine"))).await;
    let (pieces, _) = w.collect(3).await;
    assert_eq!(pieces.concat(), SCRIPT);
}

#[tokio::test]
async fn shutdown_and_eof_end_the_worker_cleanly() {
    let fx = Fixture::new();
    let mut w = ready_worker(&fx, FAKE_1_2).await;
    w.send(SupervisorToWorker::Shutdown).await;
    assert_eq!(w.wait(Duration::from_secs(10)).await.code(), Some(0));
    assert_eq!(fx.recorded("destroy").as_deref(), Some("1"));

    // EOF: the supervisor goes away mid-generation.
    let fx = Fixture::new().env("FAKE_RKLLM_DELAY_MS", "100");
    let mut w = ready_worker(&fx, FAKE_1_3).await;
    w.send(SupervisorToWorker::Generate(ask(2, "bye"))).await;
    assert!(matches!(w.recv().await, WorkerToSupervisor::Token(_)));
    let mut child = w.hang_up();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the worker outlived its supervisor's socket")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        fx.recorded("abort").as_deref(),
        Some("1"),
        "{}",
        fx.log_text()
    );
    assert_eq!(
        fx.recorded("destroy").as_deref(),
        Some("1"),
        "{}",
        fx.log_text()
    );
}

#[tokio::test]
async fn runtime_output_during_init_is_logged() {
    let fx = Fixture::new();
    let _w = ready_worker(&fx, FAKE_1_2).await;
    let log = fx.log_text();
    // stderr and stdout (printf, block-buffered into a pipe) both reach the log.
    assert!(
        log.contains("rkllm-toolkit version: 1.2.1, max_context_limit: 4096"),
        "{log}"
    );
    assert!(log.contains("fake runtime 1.2.1 initialising"), "{log}");
}

#[tokio::test]
async fn reload_destroys_the_old_model_first() {
    let fx = Fixture::new().env("FAKE_RKLLM_DELAY_MS", "100");
    let mut w = ready_worker(&fx, FAKE_1_2).await;
    w.send(SupervisorToWorker::Generate(ask(1, "long"))).await;
    assert!(matches!(w.recv().await, WorkerToSupervisor::Token(_)));
    // A new profile arrives mid-generation: the generation is cancelled,
    // the old model destroyed, then the new one loaded.
    let mut load = fx.load(FAKE_1_2, "auto");
    load.profile.name = "small".into();
    load.profile.context_size = 512;
    w.send(SupervisorToWorker::Load(load)).await;
    let ready = loop {
        match w.recv().await {
            WorkerToSupervisor::Token(_) => {}
            WorkerToSupervisor::Done(done) => assert_eq!(done.finish, FinishReason::Cancelled),
            WorkerToSupervisor::Ready(ready) => break ready,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(ready.profile, "small");
    assert_eq!(ready.model.context_size, 512);
    let keys: Vec<String> = fx.record().into_iter().map(|(k, _)| k).collect();
    let inits: Vec<usize> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| *k == "abi")
        .map(|(i, _)| i)
        .collect();
    let destroy = keys
        .iter()
        .position(|k| k == "destroy")
        .expect("old model destroyed");
    assert_eq!(inits.len(), 2);
    assert!(inits[0] < destroy && destroy < inits[1], "{keys:?}");
    assert_eq!(fx.recorded("max_context_len").as_deref(), Some("512"));
    // And the new model serves.
    w.send(SupervisorToWorker::Generate(ask(2, "hi"))).await;
    let (pieces, _) = w.collect(2).await;
    assert_eq!(pieces.concat(), SCRIPT);
}

#[tokio::test]
async fn heartbeats_are_answered_while_the_model_loads() {
    let fx = Fixture::new().env("FAKE_RKLLM_INIT_DELAY_MS", "1500");
    let mut w = fx.spawn().await;
    w.send(SupervisorToWorker::Load(fx.load(FAKE_1_3, "auto")))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.send(SupervisorToWorker::Ping(Ping { seq: 4 })).await;
    match w.recv().await {
        WorkerToSupervisor::Heartbeat(hb) => {
            assert_eq!(hb.seq, 4);
            assert_eq!(hb.busy_with, None);
        }
        other => panic!("expected a heartbeat during the load, got {other:?}"),
    }
    // A request during the load is refused, not queued behind it.
    w.send(SupervisorToWorker::Generate(ask(1, "early"))).await;
    match w.recv().await {
        WorkerToSupervisor::Error(e) => assert_eq!(e.kind, WorkerErrorKind::NotLoaded),
        other => panic!("expected NotLoaded, got {other:?}"),
    }
    match w.recv().await {
        WorkerToSupervisor::Ready(ready) => assert!(ready.load_ms >= 1400.0, "{}", ready.load_ms),
        other => panic!("expected Ready, got {other:?}"),
    }
}
