//! Bad requests over raw HTTP: each a clear 4xx in OpenAI's error shape, and
//! the process keeps serving.

use tokio::io::AsyncReadExt;

use crate::support::{cpu_slot, raw_http_full, slow_slot, Board, KEY, KEY_NAME};
use test_kit::harness::bin;

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

    // A conversation above the supervisor's max_prompt_chars (16000).
    let long = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "word ".repeat(4000)
    );
    let (status, body) = board.http(&post(long.as_bytes(), "application/json")).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        error(&body)["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_only_for_listed_origins_and_idle_connections_are_closed() {
    let board = Board::start(
        "",
        &slow_slot("primary", 50),
        "cors_origins = [\"https://ui.example\"]\nidle_timeout_secs = 2",
        false,
    )
    .await;
    let models = |origin: &str| {
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n")
    };
    let (status, head, _) =
        raw_http_full(board.addr, models("https://ui.example").as_bytes()).await;
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: https://ui.example"),
        "{head}"
    );
    let (status, head, _) =
        raw_http_full(board.addr, models("https://evil.example").as_bytes()).await;
    assert_eq!(status, 200);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    // A browser's preflight carries no key: answered without one.
    let preflight = "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: https://ui.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n";
    let (status, head, _) = raw_http_full(board.addr, preflight.as_bytes()).await;
    assert_eq!(status, 204, "{head}");
    assert!(
        head.contains("access-control-allow-headers: authorization, content-type"),
        "{head}"
    );

    // A connection that says nothing is closed after the idle timeout.
    let mut silent = tokio::net::TcpStream::connect(board.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the idle connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));

    // An answer that takes longer than the idle timeout (60 tokens at 50 ms)
    // with no byte moving until it is done is not cut off.
    let long = br#"{"messages":[{"role":"user","content":"Tell a long story."}],"max_tokens":60,"temperature":0}"#;
    let (status, body) = board.http(&post(long, "application/json")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() > 40,
        "{v}"
    );
}

#[test]
fn no_keys_on_a_non_loopback_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[openai]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let out = std::process::Command::new(bin("rocksteady-openai"))
        .arg("--config")
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no API keys configured"), "{stderr}");
    // With the credential it starts (checked with --check), and never prints the key.
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("openai-keys"), format!("{KEY} ops\n")).unwrap();
    let out = std::process::Command::new(bin("rocksteady-openai"))
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("1 API keys") && !all.contains(KEY), "{all}");
}

fn post_in(conversation: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let header = conversation.map_or_else(Vec::new, |c| {
        let mut h = b"X-Conversation: ".to_vec();
        h.extend_from_slice(c);
        h.extend_from_slice(b"\r\n");
        h
    });
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&header);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_conversation_reaches_the_workers_cache_and_a_bad_one_is_refused() {
    let board = Board::start(
        "",
        &cpu_slot("primary", "[slots.primary.cpu]\ncache_sequences = 2\n"),
        "",
        false,
    )
    .await;
    let first = br#"{"messages":[{"role":"user","content":"Name a colour."}],"max_tokens":8,"temperature":0}"#;
    let (status, body) = board.http(&post_in(Some(b"chat-1"), first)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    let second = serde_json::json!({
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": text},
            {"role": "user", "content": "Another one?"}
        ],
        "max_tokens": 8,
        "temperature": 0
    })
    .to_string();
    let (status, body) = board
        .http(&post_in(Some(b"chat-1"), second.as_bytes()))
        .await;
    assert_eq!(status, 200, "{body}");
    let cache = board.slot("primary").await.cache;
    assert_eq!((cache.hits, cache.misses), (1, 1), "{cache:?}");
    assert_eq!(cache.held[0].key, format!("openai:{KEY_NAME}:chat-1"));
    assert!(cache.reused_tokens > 0);

    let (status, body) = board.http(&post_in(Some(b"two words"), first)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error(&body)["param"], "X-Conversation");
}
