//! Bad requests over raw HTTP: each a clear 4xx in OpenAI's error shape, and
//! the process keeps serving.

use crate::support::{cpu_slot, Board, KEY};

fn post(body: &[u8], content_type: &str) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn error(body: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    v["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_and_the_process_keeps_serving() {
    let board = Board::start("", &cpu_slot("primary", ""), "", false).await;
    let ok = br#"{"messages":[{"role":"user","content":"Say hi."}],"max_tokens":3}"#;

    let (status, body) = board
        .http(&post(b"{\"messages\": [", "application/json"))
        .await;
    assert_eq!(status, 400, "{body}");
    let e = error(&body);
    assert!(
        e["message"].as_str().unwrap().contains("not valid JSON"),
        "{e}"
    );

    let huge = vec![b'x'; 10 * 1024 * 1024];
    let (status, body) = board.http(&post(&huge, "application/json")).await;
    assert_eq!(status, 413, "{body}");
    error(&body);

    let (status, body) = board
        .http(&post(br#"{"model":"auto"}"#, "application/json"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error(&body)["param"], "messages");

    let (status, body) = board
        .http(&post(
            br#"{"messages":[{"role":"user","content":7}]}"#,
            "application/json",
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error(&body)["param"], "messages[0].content", "{body}");

    let (status, body) = board.http(&post(ok, "text/plain")).await;
    assert_eq!(status, 415, "{body}");
    error(&body);

    let no_key = String::from_utf8(post(ok, "application/json"))
        .unwrap()
        .replace(&format!("Authorization: Bearer {KEY}\r\n"), "");
    let (status, body) = board.http(no_key.as_bytes()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error(&body)["code"], "invalid_api_key");

    let (status, body) = board
        .http(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 405, "{body}");
    error(&body);

    let (status, body) = board
        .http(format!("GET /v2/nothing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert_eq!(status, 404, "{body}");
    error(&body);

    // Still serving: a good request after all that.
    let (status, body) = board
        .http(&post(ok, "application/json; charset=utf-8"))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 3);

    let (status, body) = board
        .http(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 200, "{body}");
}
