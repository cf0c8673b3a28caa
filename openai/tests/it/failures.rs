//! Failures with real workers: kill -9 mid-stream, a full queue, a client
//! that leaves mid-stream.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::admin::SlotState;

use crate::support::{cpu_slot, metric, slow_slot, Board, KEY_NAME, POLICY};

async fn front_metrics(board: &Board) -> String {
    let (status, text) = board
        .http(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 200);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_kill_9_of_its_worker() {
    let body = format!(
        "{POLICY}{}{}",
        slow_slot("primary", 40),
        cpu_slot("fallback", "")
    );
    let board = Board::start("", &body, "", false).await;
    let mut script = board.python("failover.py", &[]);
    script.wait_line("KILL", Duration::from_secs(120)).await;
    let serving = board.slot("primary").await;
    assert_eq!(serving.state, SlotState::Busy, "{serving:?}");
    kill(
        Pid::from_raw(i32::try_from(serving.pid.unwrap()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let result = script.finish(Duration::from_secs(180)).await;
    let text = result["text"].as_str().unwrap();
    let prefix = result["prefix"].as_str().unwrap();
    assert!(text.starts_with(prefix), "{result}");
    assert!(
        text.len() > prefix.len(),
        "nothing after the failover: {result}"
    );
    assert_eq!(
        text.matches(prefix).count(),
        1,
        "the text before the kill repeats: {result}"
    );
    let metrics = front_metrics(&board).await;
    assert_eq!(
        metric(&metrics, &["rocksteady_openai_failovers_total", KEY_NAME]),
        1,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_with_retry_after_and_the_client_retry_succeeds() {
    let board = Board::start(
        "queue_capacity = 1",
        &format!("{POLICY}{}", slow_slot("primary", 30)),
        "key_max_concurrent = 8\nbusy_retry_after_secs = 1",
        false,
    )
    .await;
    let result = board
        .python("queue_full.py", &[])
        .finish(Duration::from_secs(300))
        .await;
    assert_eq!(result["status"], 429, "{result}");
    assert_eq!(result["retry_after"], "1", "{result}");
    // The refusal was the supervisor's queue, not the key's limit.
    assert!(
        result["message"].as_str().unwrap().contains("busy"),
        "{result}"
    );
    assert!(result["retries_taken"].as_u64().unwrap() >= 1, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_cancels_the_request() {
    let board = Board::start(
        "",
        &format!("{POLICY}{}", slow_slot("primary", 50)),
        "",
        true,
    )
    .await;
    let mut script = board.python("disconnect.py", &[]);
    script.wait_line("CLOSED", Duration::from_secs(120)).await;
    // 400 tokens at 50 ms each would run 20 s: the slot is free long before.
    board
        .wait_slot("primary", Duration::from_secs(5), |s| {
            s.state == SlotState::Ready
        })
        .await;
    assert_eq!(board.status().await.in_flight, 0);
    script.finish(Duration::from_secs(30)).await;
    let (status, sup_metrics) = board.sup_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &sup_metrics,
            &["rocksteady_requests_total", "outcome=\"cancelled\""]
        ),
        1,
        "{sup_metrics}"
    );
    // /health is the supervisor's, passed through.
    let (status, sup_health) = board.sup_get("/health").await;
    let (front_status, front_health) = board
        .http(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!((front_status, front_health), (status, sup_health));
    let metrics = front_metrics(&board).await;
    assert_eq!(
        metric(
            &metrics,
            &["rocksteady_openai_client_disconnects_total", KEY_NAME]
        ),
        1,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_concurrency_gets_429_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let board = Board::start(
        "",
        &format!("{POLICY}{}", slow_slot("primary", 50)),
        "key_max_concurrent = 1",
        false,
    )
    .await;
    let body = r#"{"messages":[{"role":"user","content":"Tell a long story."}],"max_tokens":200,"stream":true}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::support::KEY,
        body.len()
    );
    let mut first = tokio::net::TcpStream::connect(board.addr).await.unwrap();
    first.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (status, head, body) = crate::support::raw_http_full(board.addr, request.as_bytes()).await;
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("already has 1 requests running"), "{body}");
    drop(first);
    // The slot comes back once the first stream is gone.
    board
        .wait_slot("primary", Duration::from_secs(5), |s| {
            s.state == SlotState::Ready
        })
        .await;
    let metrics = front_metrics(&board).await;
    assert_eq!(
        metric(
            &metrics,
            &[
                "rocksteady_openai_requests_total",
                KEY_NAME,
                "status=\"429\""
            ]
        ),
        1,
        "{metrics}"
    );
}
