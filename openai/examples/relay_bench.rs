//! Relay cost of the OpenAI API: decode tokens/s seen by a client streaming
//! through the API against the same request straight on the supervisor's
//! client socket (what `supctl ask` does), same prompt, greedy, alternating.
//!
//! Starts its own supervisor (one CPU slot on the default model) and the
//! front door in-process. Prints figures; asserts nothing about speed.
//!
//! `cargo run -p openai-gateway --example relay_bench -- [REPETITIONS] [MAX_TOKENS]`
//! (build the workspace binaries first: it runs target/debug/worker-cpu).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use client::ChatClient;
use proto::chat::{ChatMessage, GenParams, Role};
use proto::client::SupervisorToClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const PROMPT: &str = "Write a long story about a lighthouse keeper.";

/// One measured answer: tokens and seconds from the first to the last token.
struct Run {
    tokens: u32,
    decode_s: f64,
}

impl Run {
    fn tps(&self) -> f64 {
        f64::from(self.tokens.saturating_sub(1)) / self.decode_s.max(1e-9)
    }
}

fn params(max_tokens: u32) -> GenParams {
    GenParams {
        max_tokens,
        temperature: 0.0,
        top_k: 40,
        top_p: 1.0,
        repeat_penalty: 1.1,
        seed: 42,
    }
}

async fn direct(socket: &Path, max_tokens: u32) -> anyhow::Result<Run> {
    let mut client = ChatClient::connect(socket).await?;
    client
        .submit(
            vec![ChatMessage::new(Role::User, PROMPT)],
            params(max_tokens),
        )
        .await?;
    let (mut first, mut last) = (None, None);
    loop {
        match client.next_event().await? {
            SupervisorToClient::Token(_) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
            }
            SupervisorToClient::Done(done) => {
                let (Some(first), Some(last)) = (first, last) else {
                    bail!("no tokens")
                };
                return Ok(Run {
                    tokens: done.stats.generated_tokens,
                    decode_s: (last - first).as_secs_f64(),
                });
            }
            SupervisorToClient::Error(e) => bail!("request failed: {}", e.message),
            _ => {}
        }
    }
}

async fn through_api(addr: SocketAddr, max_tokens: u32) -> anyhow::Result<Run> {
    let body = serde_json::json!({
        "model": "auto", "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    // HTTP/1.0: the response is close-delimited, so SSE lines arrive as sent.
    let request = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let (mut first, mut last, mut tokens) = (None, None, None);
    while let Some(line) = lines.next_line().await? {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).context("a chunk is not JSON")?;
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = Some(u32::try_from(n)?);
        }
        if v.get("error").is_some() {
            bail!("stream failed: {v}");
        }
    }
    let (Some(first), Some(last), Some(tokens)) = (first, last, tokens) else {
        bail!("incomplete stream")
    };
    Ok(Run {
        tokens,
        decode_s: (last - first).as_secs_f64(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let reps: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let max_tokens: u32 = args.next().map_or(Ok(128), |a| a.parse())?;
    // The shared test harness starts the supervisor in-process on a private
    // runtime directory (and says what to build or fetch when something is missing).
    let model = test_kit::harness::model();
    let sup =
        test_kit::harness::Sup::start(&test_kit::harness::cpu_slot("primary", &model, "")).await;
    let socket = sup.client_socket();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = openai_gateway::Config::default();
    config.client_socket.clone_from(&socket);
    config.max_tokens_limit = config.max_tokens_limit.max(max_tokens);
    let api = tokio::spawn(openai_gateway::run(
        config,
        openai_gateway::Keys::default(),
        listener,
        shutdown.clone(),
    ));
    // Warm-up (also waits for the worker to load).
    let deadline = Instant::now() + Duration::from_secs(120);
    while direct(&socket, 8).await.is_err() {
        if Instant::now() > deadline {
            bail!("the supervisor never answered");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    through_api(addr, 8).await?;

    let (mut d, mut a) = (Vec::new(), Vec::new());
    println!("rep  direct tok/s  api tok/s  (tokens)");
    for rep in 1..=reps {
        let x = direct(&socket, max_tokens).await?;
        let y = through_api(addr, max_tokens).await?;
        println!(
            "{rep:>3}  {:>12.1}  {:>9.1}  ({} / {})",
            x.tps(),
            y.tps(),
            x.tokens,
            y.tokens
        );
        d.push(x.tps());
        a.push(y.tps());
    }
    let (md, ma) = (median(d), median(a));
    println!("median decode tok/s: direct (supctl ask path) {md:.1}, OpenAI API stream {ma:.1}");
    println!("ratio api/direct: {:.3} (target >= 0.97)", ma / md);
    shutdown.cancel();
    let _ = api.await;
    sup.stop().await;
    Ok(())
}
