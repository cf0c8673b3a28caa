//! One test per row of the behaviour table in the crate docs.

use std::time::{Duration, Instant};

use proto::chat::FinishReason;
use proto::worker::{
    CancelGeneration, ExitCode, Ping, SupervisorToWorker, WorkerErrorKind, WorkerToSupervisor,
};

use crate::puppet::{ask, load, Script, Sup};

const TEXT: &str = "one two three four five six seven eight nine ten";

fn slow(cadence_ms: u64) -> Script {
    Script {
        cadence: Duration::from_millis(cadence_ms),
        ..Script::default()
    }
}

#[tokio::test]
async fn a_frame_that_does_not_decode_is_skipped() {
    let mut sup = Sup::ready(Script::default()).await;
    // A well-framed payload that is no SupervisorToWorker (variant 200).
    sup.writer.send(&200u32).await.unwrap();
    sup.send(SupervisorToWorker::Ping(Ping { seq: 3 })).await;
    let WorkerToSupervisor::Heartbeat(hb) = sup.recv().await else {
        panic!("the conversation did not go on")
    };
    assert_eq!(hb.seq, 3);
    sup.send(ask(1)).await;
    let (pieces, _) = sup.collect(1).await;
    assert_eq!(pieces.concat(), TEXT);
}

#[tokio::test]
async fn sigterm_stops_the_generation_and_drops_the_model_before_exiting() {
    let mut sup = Sup::ready(slow(50)).await;
    sup.send(ask(1)).await;
    assert!(matches!(sup.recv().await, WorkerToSupervisor::Token(_)));
    sup.sigterm();
    let log = sup.log.clone();
    let exit = sup.exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code, 0);
    let log = log.lock().unwrap().clone();
    let stop = log.iter().position(|e| e == "stop hook Shutdown");
    let dropped = log.iter().position(|e| e == "drop model normal");
    let engine = log.iter().position(|e| e == "drop engine");
    assert!(
        stop.is_some() && stop < dropped && dropped < engine,
        "stopped, then the model and the engine dropped: {log:?}"
    );
}

#[tokio::test]
async fn sigterm_during_a_load_exits_at_once() {
    let mut sup = Sup::start(Script {
        load: Duration::from_secs(4),
        ..Script::default()
    });
    sup.send(SupervisorToWorker::Load(load("normal"))).await;
    sup.wait_log("load normal").await;
    let t0 = Instant::now();
    sup.sigterm();
    assert_eq!(sup.exit(Duration::from_secs(2)).await.code, 0);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn eof_is_a_shutdown() {
    let mut sup = Sup::ready(slow(50)).await;
    sup.send(ask(1)).await;
    assert!(matches!(sup.recv().await, WorkerToSupervisor::Token(_)));
    let Sup {
        reader,
        writer,
        log,
        worker,
        ..
    } = sup;
    drop((reader, writer));
    let exit = tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .expect("the worker outlived its supervisor's socket")
        .unwrap();
    assert_eq!(exit.code, 0);
    let log = log.lock().unwrap().clone();
    assert!(log.contains(&"stop hook Shutdown".to_owned()), "{log:?}");
    assert!(log.contains(&"drop model normal".to_owned()), "{log:?}");
}

#[tokio::test]
async fn shutdown_message_is_a_shutdown_and_a_stuck_engine_does_not_hold_the_exit() {
    let mut sup = Sup::ready(Script {
        stuck_after: Some(2),
        ..Script::default()
    })
    .await;
    sup.send(ask(1)).await;
    sup.wait_log("stuck").await;
    let t0 = Instant::now();
    sup.send(SupervisorToWorker::Shutdown).await;
    let log = sup.log.clone();
    assert_eq!(sup.exit(Duration::from_secs(10)).await.code, 0);
    let waited = t0.elapsed();
    assert!(
        waited + Duration::from_millis(100) >= worker_kit::run::SHUTDOWN_GRACE,
        "{waited:?}"
    );
    let log = log.lock().unwrap().clone();
    assert!(
        !log.iter().any(|e| e.starts_with("drop model")),
        "a stuck model is not torn down: {log:?}"
    );
}

#[tokio::test]
async fn reload_during_a_generation_cancels_it_and_loads_after_the_old_model_is_gone() {
    let mut sup = Sup::ready(slow(50)).await;
    sup.send(ask(1)).await;
    assert!(matches!(sup.recv().await, WorkerToSupervisor::Token(_)));
    sup.send(SupervisorToWorker::Load(load("small"))).await;
    // Before the new model is ready, requests are refused.
    sup.send(ask(2)).await;
    let mut refused = false;
    let ready = loop {
        match sup.recv().await {
            WorkerToSupervisor::Token(t) => panic!("token after the reload: {t:?}"),
            WorkerToSupervisor::Done(d) => {
                assert_eq!((d.request_id, d.finish), (1, FinishReason::Cancelled));
            }
            WorkerToSupervisor::Error(e) => {
                assert_eq!((e.request_id, e.kind), (2, WorkerErrorKind::NotLoaded));
                refused = true;
            }
            WorkerToSupervisor::Ready(r) => break r,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(refused);
    assert_eq!(ready.profile, "small");
    let log = sup.log();
    let dropped = log.iter().position(|e| e == "drop model normal").unwrap();
    let loaded = log.iter().position(|e| e == "load small").unwrap();
    assert!(dropped < loaded, "{log:?}");
    sup.send(ask(3)).await;
    let (pieces, _) = sup.collect(3).await;
    assert_eq!(pieces.concat(), TEXT);
}

#[tokio::test]
async fn cancel_answers_at_once_and_drops_what_the_engine_still_decodes() {
    // The engine takes 300 ms to notice the stop and keeps decoding meanwhile.
    let mut sup = Sup::ready(Script {
        cadence: Duration::from_millis(30),
        stop_lag: Duration::from_millis(300),
        ..Script::default()
    })
    .await;
    sup.send(ask(1)).await;
    assert!(matches!(sup.recv().await, WorkerToSupervisor::Token(_)));
    let t0 = Instant::now();
    sup.send(SupervisorToWorker::Cancel(CancelGeneration {
        request_id: 1,
    }))
    .await;
    let (late, end) = sup.collect(1).await;
    let WorkerToSupervisor::Done(done) = end else {
        panic!("{end:?}")
    };
    assert_eq!(done.finish, FinishReason::Cancelled);
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert!(late.len() <= 1, "{late:?}");
    sup.wait_log("stop hook Cancel").await;
    // A cancel for another id changes nothing; the next request runs once
    // the engine is free, and nothing of the cancelled one leaks into it.
    sup.send(SupervisorToWorker::Cancel(CancelGeneration {
        request_id: 9,
    }))
    .await;
    sup.send(ask(2)).await;
    let (pieces, end) = sup.collect(2).await;
    assert!(matches!(end, WorkerToSupervisor::Done(_)), "{end:?}");
    assert_eq!(pieces.concat(), TEXT);
    sup.send(SupervisorToWorker::Ping(Ping { seq: 1 })).await;
    let WorkerToSupervisor::Heartbeat(hb) = sup.recv().await else {
        panic!()
    };
    assert_eq!(hb.requests_total, 2);
}

#[tokio::test]
async fn pings_are_answered_during_a_load_and_a_generation() {
    let mut sup = Sup::start(Script {
        load: Duration::from_millis(800),
        cadence: Duration::from_millis(100),
        ..Script::default()
    });
    sup.send(SupervisorToWorker::Load(load("normal"))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    sup.send(SupervisorToWorker::Ping(Ping { seq: 1 })).await;
    let WorkerToSupervisor::Heartbeat(hb) = sup.recv().await else {
        panic!("no heartbeat during the load")
    };
    assert!(t0.elapsed() < Duration::from_millis(400));
    assert_eq!((hb.seq, hb.busy_with), (1, None));
    sup.send(ask(1)).await;
    let WorkerToSupervisor::Error(e) = sup.recv().await else {
        panic!("a request during the load is refused, not queued")
    };
    assert_eq!(e.kind, WorkerErrorKind::NotLoaded);
    let WorkerToSupervisor::Ready(ready) = sup.recv().await else {
        panic!()
    };
    assert!(ready.load_ms >= 700.0, "{}", ready.load_ms);
    sup.send(ask(2)).await;
    sup.send(SupervisorToWorker::Ping(Ping { seq: 2 })).await;
    loop {
        match sup.recv().await {
            WorkerToSupervisor::Heartbeat(hb) => {
                assert_eq!(hb.busy_with, Some(2));
                break;
            }
            WorkerToSupervisor::Token(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_second_request_is_refused_busy() {
    let mut sup = Sup::ready(slow(30)).await;
    sup.send(ask(1)).await;
    sup.send(ask(2)).await;
    loop {
        match sup.recv().await {
            WorkerToSupervisor::Error(e) => {
                assert_eq!((e.request_id, e.kind), (2, WorkerErrorKind::Busy));
                break;
            }
            WorkerToSupervisor::Token(t) => assert_eq!(t.request_id, 1),
            other => panic!("{other:?}"),
        }
    }
    let (_, end) = sup.collect(1).await;
    assert!(matches!(end, WorkerToSupervisor::Done(_)));
}

#[tokio::test]
async fn the_token_cap_ends_with_max_tokens_and_figures() {
    let mut sup = Sup::ready(Script::default()).await;
    let SupervisorToWorker::Generate(mut g) = ask(1) else {
        unreachable!()
    };
    g.params.max_tokens = 3;
    sup.send(SupervisorToWorker::Generate(g)).await;
    let (pieces, end) = sup.collect(1).await;
    assert_eq!(pieces.concat(), "one two three ");
    let WorkerToSupervisor::Done(done) = end else {
        panic!("{end:?}")
    };
    assert_eq!(done.finish, FinishReason::MaxTokens);
    assert_eq!(done.stats.generated_tokens, 3);
    assert!(done.stats.decode_tps > 0.0);
    sup.wait_log("stop hook Limit").await;
    // A full answer: the engine's own figures and end of turn.
    sup.send(ask(2)).await;
    let (_, end) = sup.collect(2).await;
    let WorkerToSupervisor::Done(done) = end else {
        panic!("{end:?}")
    };
    assert_eq!(done.finish, FinishReason::EndOfTurn);
    assert_eq!(done.stats.generated_tokens, 10);
    assert_eq!(done.stats.prompt_tokens, 7);
    assert!((done.stats.prefill_ms - 1.5).abs() < 1e-9);
    assert!(done.stats.ttft_ms > 0.0);
}

#[tokio::test]
async fn split_characters_reach_the_supervisor_whole_with_their_token_count() {
    let euro = "€".as_bytes();
    let mut sup = Sup::ready(Script {
        pieces: vec![
            b"5 ".to_vec(),
            euro[..1].to_vec(),
            euro[1..].to_vec(),
            b"!".to_vec(),
        ],
        ..Script::default()
    })
    .await;
    sup.send(ask(1)).await;
    let mut frames = Vec::new();
    loop {
        match sup.recv().await {
            WorkerToSupervisor::Token(t) => frames.push((t.text, t.tokens)),
            WorkerToSupervisor::Done(d) => {
                assert_eq!(d.stats.generated_tokens, 4);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        frames,
        vec![("5 ".into(), 1), ("€".into(), 2), ("!".into(), 1)]
    );
}

#[tokio::test]
async fn an_engine_error_ends_the_request_and_the_worker_keeps_serving() {
    let mut sup = Sup::ready(Script {
        error_after: Some(2),
        ..Script::default()
    })
    .await;
    sup.send(ask(1)).await;
    let (pieces, end) = sup.collect(1).await;
    assert_eq!(pieces.concat(), "one two ");
    let WorkerToSupervisor::Error(e) = end else {
        panic!("{end:?}")
    };
    assert_eq!(e.kind, WorkerErrorKind::Engine);
    sup.send(SupervisorToWorker::Ping(Ping { seq: 1 })).await;
    let WorkerToSupervisor::Heartbeat(hb) = sup.recv().await else {
        panic!()
    };
    assert_eq!((hb.requests_total, hb.tokens_total), (1, 2));
}

#[tokio::test]
async fn a_failed_load_is_reported_and_becomes_the_exit_code() {
    let mut sup = Sup::start(Script {
        load_fails: Some(ExitCode::ModelTruncated),
        ..Script::default()
    });
    let WorkerToSupervisor::LoadFailed(failed) = sup.load("normal").await else {
        panic!()
    };
    assert_eq!(failed.exit_code, 70);
    assert_eq!(sup.exit(Duration::from_secs(5)).await.code, 70);
}

#[tokio::test]
async fn generate_before_any_load_or_without_messages_is_refused() {
    let mut sup = Sup::start(Script::default());
    sup.send(ask(1)).await;
    let WorkerToSupervisor::Error(e) = sup.recv().await else {
        panic!()
    };
    assert_eq!(e.kind, WorkerErrorKind::NotLoaded);
    assert!(matches!(
        sup.load("normal").await,
        WorkerToSupervisor::Ready(_)
    ));
    let SupervisorToWorker::Generate(mut g) = ask(2) else {
        unreachable!()
    };
    g.messages.clear();
    sup.send(SupervisorToWorker::Generate(g)).await;
    let WorkerToSupervisor::Error(e) = sup.recv().await else {
        panic!()
    };
    assert_eq!(e.kind, WorkerErrorKind::BadRequest);
    assert!(!sup.log().iter().any(|e| e.starts_with("generate")));
}
