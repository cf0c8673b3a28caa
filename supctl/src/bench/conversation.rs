//! The `conversation` profile of `supctl bench`: a 10-turn chat chain (each
//! turn appends a user message and the previous answer) on the config's CPU
//! slot, time to first token per turn with KV-cache reuse on (the chain's
//! conversation key) and off (no key: a cold prefill), and the cold prefill
//! of `worker-cpu generate` on the same conversation as the baseline without
//! any stack. Printed as a Markdown table and drawn as an SVG line chart.
//!
//! It runs on a private supervisor started in-process (as `--spawn` does)
//! with the CPU slot alone, so no other traffic shares the worker's cache,
//! after one unmeasured request. The chain runs `--repetitions` times (3 by
//! default), each with its own key; a turn's figures are the medians.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use proto::admin::SlotState;
use proto::chat::{Backend, ChatMessage, GenParams, Role};
use proto::client::SupervisorToClient;
use serde::Serialize;
use supervisor::config::{Config, SlotConfig};

use super::relay;
use super::runner::{slot_status, start_private};
use super::svg::escape;
use super::{BenchConfig, BenchError, BenchOptions};
use crate::client::ChatClient;

/// The profile's name.
pub const CONVERSATION: &str = "conversation";

/// Turns of the chain.
pub const TURNS: usize = 10;

/// Tokens each answer may have (answers become part of the next prompts).
const ANSWER_TOKENS: u32 = 48;

const SYSTEM: &str = "You are a helpful assistant. Answer in two or three sentences.";

/// The user's side of the chain.
const QUESTIONS: [&str; TURNS] = [
    "I want to plan a small vegetable garden. Where should I start?",
    "Which vegetables are easiest for a beginner?",
    "How often should I water tomatoes?",
    "What about pests? Which ones should I watch for?",
    "Is compost worth making myself?",
    "How big should a first raised bed be?",
    "What should I plant next to the tomatoes?",
    "When is the best time to harvest carrots?",
    "How do I keep the soil healthy over winter?",
    "Summarise the plan we made in one sentence.",
];

/// One turn's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    /// 1-based turn number.
    pub turn: usize,
    /// Prompt tokens after the chat template.
    pub prompt_tokens: u32,
    /// Of those, reused from the KV cache (reuse on).
    pub reused_tokens: u32,
    /// Submit to first token, reuse on (ms, as the client saw it).
    pub ttft_reuse_ms: f64,
    /// Submit to first token, reuse off (ms).
    pub ttft_cold_ms: f64,
    /// `worker-cpu generate`'s own time to first token for the same
    /// conversation, cold, without supervisor and sockets (ms).
    pub ttft_generate_ms: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationResult {
    /// Model file.
    pub model: String,
    /// Context window of the slot.
    pub context_size: u32,
    /// Threads of the slot (0 = all cores).
    pub threads: u32,
    /// The turns.
    pub turns: Vec<Turn>,
}

impl ConversationResult {
    /// Last turn's TTFT over the first turn's, with reuse on and off.
    pub fn growth(&self) -> Option<(f64, f64)> {
        let (first, last) = (self.turns.first()?, self.turns.last()?);
        Some((
            last.ttft_reuse_ms / first.ttft_reuse_ms,
            last.ttft_cold_ms / first.ttft_cold_ms,
        ))
    }
}

/// Runs the profile and writes the table to `out`, the chart and the JSON
/// figures to files (the `--svg` and `--output` paths, else the bench
/// directory).
///
/// # Errors
/// No CPU slot, the private supervisor or a request failing, files that
/// cannot be written.
pub async fn run(
    config: &Config,
    bench: &BenchConfig,
    opts: &BenchOptions,
    out: &mut dyn Write,
) -> Result<ConversationResult, BenchError> {
    let slot = [Some(&config.slots.primary), config.slots.fallback.as_ref()]
        .into_iter()
        .flatten()
        .find(|s| s.backend == Backend::Cpu)
        .ok_or_else(|| BenchError::NothingToMeasure {
            reasons: "the conversation profile needs a CPU slot (llama.cpp keeps the KV cache between turns)".into(),
        })?
        .clone();
    let started = SystemTime::now();
    let stamp = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (json_path, svg_path) = super::runner::output_paths(
        config,
        bench,
        opts,
        &format!("bench-{CONVERSATION}-{stamp}"),
    )?;

    let (sup, sockets) = start_private(config, &slot).await?;
    let repetitions = opts.repetitions.unwrap_or(3);
    let measured = measure(&slot, &sockets.client, &sockets.admin, stamp, repetitions).await;
    sup.stop().await;
    let (mut turns, chains) = measured?;
    // The baseline after the stack is gone: it must not compete for cores.
    baseline(&slot, &chains, &mut turns).await;
    let result = ConversationResult {
        model: slot
            .model
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        context_size: slot.profile.context_size,
        threads: slot.profile.threads,
        turns,
    };
    write_file(&svg_path, &chart(&result))?;
    let json = serde_json::to_string_pretty(&result).unwrap_or_default();
    write_file(&json_path, &json)?;
    let _ = out.write_all(table(&result).as_bytes());
    let _ = writeln!(
        out,
        "\nresult: {}\nchart:  {}",
        json_path.display(),
        svg_path.display()
    );
    let _ = out.flush();
    Ok(result)
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write {
        path: path.to_owned(),
        source,
    })
}

fn greedy() -> GenParams {
    GenParams {
        max_tokens: ANSWER_TOKENS,
        temperature: 0.0,
        ..GenParams::default()
    }
}

/// The chain through the private supervisor: each turn with the
/// conversation key, then the same messages without one.
async fn measure(
    slot: &SlotConfig,
    client_socket: &Path,
    admin: &Path,
    stamp: u64,
    repetitions: u32,
) -> Result<(Vec<Turn>, Vec<Vec<ChatMessage>>), BenchError> {
    let limit = Duration::from_secs(300);
    let since = Instant::now();
    loop {
        let s = slot_status(admin, "primary").await?;
        match s.state {
            SlotState::Ready => break,
            SlotState::Unavailable | SlotState::Failed => {
                return Err(BenchError::SlotDown {
                    slot: "primary".into(),
                    state: s.state.as_str().into(),
                    reason: s.reason,
                })
            }
            _ if since.elapsed() > limit => {
                return Err(BenchError::Timeout {
                    what: "loading the CPU worker".into(),
                    seconds: limit.as_secs_f64(),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    if slot.cpu.cache_sequences == 0 {
        eprintln!("note: cache_sequences is 0 in the CPU slot: reuse on prefills cold too");
    }
    let mut client = ChatClient::connect(client_socket).await?;
    // One unmeasured request first: the first decode after a load pays for
    // page faults and thread start-up, which is not what turn 1 measures.
    let warm_up = [ChatMessage::new(Role::User, "Hello.")];
    ask(&mut client, &warm_up, None, limit).await?;
    // Each chain has its own key; the figures of a turn are the medians over
    // the chains (a shared 2-core machine is noisy). The chains' answers are
    // the same (greedy), so each turn's prompt is too.
    let mut runs: Vec<Vec<Turn>> = Vec::new();
    let mut chains = Vec::with_capacity(TURNS);
    for run in 0..repetitions.max(1) {
        let key = format!("bench-{CONVERSATION}-{stamp}-{run}");
        let mut messages = vec![ChatMessage::new(Role::System, SYSTEM)];
        let mut turns = Vec::with_capacity(TURNS);
        for (i, question) in QUESTIONS.iter().enumerate() {
            messages.push(ChatMessage::new(Role::User, *question));
            if run == 0 {
                chains.push(messages.clone());
            }
            let warm = ask(&mut client, &messages, Some(&key), limit).await?;
            let cold = ask(&mut client, &messages, None, limit).await?;
            turns.push(Turn {
                turn: i + 1,
                prompt_tokens: warm.prompt_tokens,
                reused_tokens: warm.reused,
                ttft_reuse_ms: warm.ttft_ms,
                ttft_cold_ms: cold.ttft_ms,
                ttft_generate_ms: None,
            });
            messages.push(ChatMessage::new(Role::Assistant, warm.text));
        }
        runs.push(turns);
    }
    let turns = (0..TURNS)
        .map(|i| {
            let of = |f: fn(&Turn) -> f64| median(runs.iter().map(|r| f(&r[i])).collect());
            Turn {
                ttft_reuse_ms: of(|t| t.ttft_reuse_ms),
                ttft_cold_ms: of(|t| t.ttft_cold_ms),
                ..runs[0][i].clone()
            }
        })
        .collect();
    Ok((turns, chains))
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

struct Answer {
    text: String,
    ttft_ms: f64,
    prompt_tokens: u32,
    reused: u32,
}

async fn ask(
    client: &mut ChatClient,
    messages: &[ChatMessage],
    key: Option<&str>,
    limit: Duration,
) -> Result<Answer, BenchError> {
    let submitted = Instant::now();
    let deadline = tokio::time::Instant::from_std(submitted + limit);
    let id = client
        .submit_in(
            messages.to_vec(),
            greedy(),
            String::new(),
            key.map(str::to_owned),
        )
        .await?;
    let mut ttft_ms = None;
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, client.next_event()).await else {
            let _ = client.cancel(id).await;
            return Err(BenchError::Timeout {
                what: "a conversation turn".into(),
                seconds: limit.as_secs_f64(),
            });
        };
        let event = event?;
        if event.request_id() != id {
            continue;
        }
        match event {
            SupervisorToClient::Token(_) => {
                ttft_ms.get_or_insert(submitted.elapsed().as_secs_f64() * 1000.0);
            }
            SupervisorToClient::Done(done) => {
                return Ok(Answer {
                    text: done.text,
                    ttft_ms: ttft_ms.unwrap_or(done.stats.ttft_ms),
                    prompt_tokens: done.stats.prompt_tokens,
                    reused: done.stats.cached_tokens,
                })
            }
            SupervisorToClient::Error(e) => {
                return Err(BenchError::Request {
                    kind: format!("{:?}", e.kind),
                    message: e.message,
                })
            }
            _ => {}
        }
    }
}

/// Fills in `worker-cpu generate`'s cold time to first token for each
/// turn's conversation (`chains[i]`: the chain as measured, answers
/// included); a turn it cannot run stays without (a dash in the table).
async fn baseline(slot: &SlotConfig, chains: &[Vec<ChatMessage>], turns: &mut [Turn]) {
    if !relay::runnable(&slot.worker_binary()) {
        return;
    }
    let Ok(dir) = tempfile::Builder::new()
        .prefix("rocksteady-bench-chat-")
        .tempdir()
    else {
        return;
    };
    for (turn, chain) in turns.iter_mut().zip(chains) {
        let path = chat_path(dir.path(), turn.turn);
        if std::fs::write(&path, chat_file(chain)).is_err() {
            continue;
        }
        match relay::in_process(
            slot,
            relay::Prompt::ChatFile(&path),
            ANSWER_TOKENS,
            Duration::from_secs(300),
        )
        .await
        {
            Ok(figures) => turn.ttft_generate_ms = Some(figures.ttft_ms),
            Err(err) => eprintln!(
                "note: worker-cpu generate failed on turn {}: {err}",
                turn.turn
            ),
        }
    }
}

/// The conversations of each turn for the baseline: a JSON file per turn.
pub fn chat_file(messages: &[ChatMessage]) -> String {
    let lines: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
        .collect();
    serde_json::Value::Array(lines).to_string()
}

/// The Markdown table and the growth line.
pub fn table(r: &ConversationResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## conversation: {} (context {}, threads {})\n",
        r.model,
        r.context_size,
        if r.threads == 0 {
            "all".to_owned()
        } else {
            r.threads.to_string()
        }
    );
    let _ = writeln!(
        s,
        "| turn | prompt tokens | reused | TTFT reuse on (ms) | TTFT reuse off (ms) | worker-cpu generate, cold (ms) |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    for t in &r.turns {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {} |",
            t.turn,
            t.prompt_tokens,
            t.reused_tokens,
            t.ttft_reuse_ms,
            t.ttft_cold_ms,
            t.ttft_generate_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
        );
    }
    if let Some((on, off)) = r.growth() {
        let _ = writeln!(
            s,
            "\nturn {} / turn 1 time to first token: {on:.2}x with reuse, {off:.2}x without (goal: within 1.3x with reuse)",
            r.turns.len()
        );
    }
    s
}

/// The chart: time to first token per turn, one line per way of running.
#[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one drawing, x/y as in geometry
pub fn chart(r: &ConversationResult) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 200.0;
    const TOP: f64 = 50.0;
    const BOTTOM: f64 = 50.0;
    let series: [(&str, &str, Vec<Option<f64>>); 3] = [
        (
            "reuse on",
            "#1b7f3b",
            r.turns.iter().map(|t| Some(t.ttft_reuse_ms)).collect(),
        ),
        (
            "reuse off",
            "#b03a2e",
            r.turns.iter().map(|t| Some(t.ttft_cold_ms)).collect(),
        ),
        (
            "worker-cpu generate",
            "#5d6d7e",
            r.turns.iter().map(|t| t.ttft_generate_ms).collect(),
        ),
    ];
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::max);
    let n = r.turns.len().max(2);
    #[allow(clippy::cast_precision_loss)] // ten turns
    let x = |i: usize| LEFT + (W - LEFT - RIGHT) * i as f64 / (n - 1) as f64;
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v / max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        escape(&format!(
            "Time to first token per turn of a {}-turn chain · {}",
            r.turns.len(),
            r.model
        ))
    );
    // Axes and a few gridlines.
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0} ms</text>"##,
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
    for (i, t) in r.turns.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(i),
            H - BOTTOM + 18.0,
            t.turn
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">turn</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0
    );
    for (k, (name, colour, values)) in series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect();
        if points.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        #[allow(clippy::cast_precision_loss)]
        let ly = TOP + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 15.0,
            W - RIGHT + 40.0,
            W - RIGHT + 46.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The conversation file of `turn` in `dir`.
pub fn chat_path(dir: &Path, turn: usize) -> PathBuf {
    dir.join(format!("turn-{turn:02}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> ConversationResult {
        ConversationResult {
            model: "m.gguf".into(),
            context_size: 2048,
            threads: 0,
            turns: (1..=3)
                .map(|t| Turn {
                    turn: t,
                    prompt_tokens: 40 * u32::try_from(t).unwrap(),
                    reused_tokens: if t == 1 { 0 } else { 35 },
                    ttft_reuse_ms: 100.0,
                    #[allow(clippy::cast_precision_loss)]
                    ttft_cold_ms: 100.0 * t as f64,
                    ttft_generate_ms: (t != 2).then_some(90.0),
                })
                .collect(),
        }
    }

    #[test]
    fn the_table_has_a_row_per_turn_and_the_growth() {
        let text = table(&result());
        assert!(text.contains("| 2 | 80 | 35 | 100 | 200 | - |"), "{text}");
        assert!(
            text.contains("turn 3 / turn 1 time to first token: 1.00x with reuse, 3.00x without"),
            "{text}"
        );
    }

    #[test]
    fn the_chart_draws_three_lines_and_skips_missing_points() {
        let svg = chart(&result());
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("reuse off"));
        let generate = svg
            .lines()
            .find(|l| l.contains("#5d6d7e") && l.contains("polyline"))
            .unwrap();
        assert_eq!(generate.matches(',').count(), 2, "{generate}");
    }

    #[test]
    fn medians_take_the_middle() {
        assert!((median(vec![3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(vec![4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn chat_files_use_the_worker_cpu_format() {
        let text = chat_file(&[ChatMessage::new(Role::User, "hi \"there\"")]);
        assert_eq!(text, r#"[{"content":"hi \"there\"","role":"user"}]"#);
    }
}
