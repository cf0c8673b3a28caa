//! `worker-cpu`: started by the supervisor with `--socket PATH --cpus LIST`;
//! also `worker-cpu generate ...` to run one generation without a supervisor.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use proto::chat::{ChatMessage, GenParams, GenStats, Role};
use proto::cpus::CpuSet;
use proto::worker::{BackendOptions, CpuOptions, KvCacheType, Load, Profile};
use worker_cpu::engine::LlamaEngine;
use worker_cpu::standalone;

#[derive(Parser)]
#[command(version, about = "rocksteady CPU worker (llama.cpp)")]
struct Cli {
    /// Supervisor socket to connect to (the supervisor passes this).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Pin every thread to these CPUs ("4-7", "0-3,6"); the supervisor
    /// passes the slot's set. With `threads` 0, one thread per CPU.
    #[arg(long, global = true)]
    cpus: Option<CpuSet>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a model and generate one answer, printing it as it is decoded.
    Generate {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// The user's message.
        #[arg(long, required_unless_present = "chat", conflicts_with = "chat")]
        prompt: Option<String>,
        /// A JSON file with the whole conversation instead, ending with the
        /// user's turn: `[{"role": "system"|"user"|"assistant", "content": "..."}, ...]`.
        #[arg(long)]
        chat: Option<PathBuf>,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        /// Context window.
        #[arg(long, default_value_t = 2048)]
        context_size: u32,
        /// Threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: u32,
        /// Print the figures as one JSON object on stderr instead of the
        /// summary line, with the arrival time of every piece (`token_ms`,
        /// ms after the first): the in-process side of `supctl bench`.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn,llama_cpp_2=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // llama.cpp's own chatter goes through tracing (at its levels), not raw stderr.
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let cli = Cli::parse();
    // Before any thread starts: every later one inherits the mask.
    if let Some(cpus) = &cli.cpus {
        worker_kit::affinity::pin(cpus).context("pinning to --cpus")?;
    }
    match (cli.command, cli.socket) {
        (Some(Cmd::Generate { model, prompt, chat, max_tokens, context_size, threads, json }), _) => {
            let messages = match (prompt, chat) {
                (_, Some(path)) => read_chat(&path)?,
                (Some(prompt), None) => vec![ChatMessage::new(Role::User, prompt)],
                (None, None) => anyhow::bail!("give --prompt or --chat"),
            };
            let load = Load {
                model_path: model.to_string_lossy().into_owned(),
                profile: Profile {
                    name: "standalone".into(),
                    context_size,
                    batch_size: 512,
                    threads,
                    kv_cache_type: KvCacheType::F16,
                    flash_attention: false,
                    max_new_tokens: max_tokens,
                },
                backend: BackendOptions::Cpu(CpuOptions { use_mmap: true, chat_template: None, cache_sequences: 0 }),
            };
            let params = GenParams { max_tokens, ..GenParams::default() };
            let mut out = std::io::stdout();
            let mut first: Option<Instant> = None;
            let mut token_ms = Vec::new();
            let result = standalone::generate_chat(load, messages, params, &mut |piece| {
                let now = Instant::now();
                let first = *first.get_or_insert(now);
                token_ms.push(now.duration_since(first).as_secs_f64() * 1000.0);
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            });
            println!();
            match result {
                Ok((_, load_ms, s)) if json => {
                    eprintln!("{}", figures_json(load_ms, &s, &token_ms));
                    Ok(())
                }
                Ok((_, load_ms, s)) => {
                    eprintln!(
                        "load {load_ms:.0} ms, prompt {} tokens, generated {} tokens, ttft {:.0} ms, decode {:.1} tok/s",
                        s.prompt_tokens, s.generated_tokens, s.ttft_ms, s.decode_tps
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(e.exit_code());
                }
            }
        }
        (None, Some(socket)) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let software = concat!("worker-cpu ", env!("CARGO_PKG_VERSION"));
            let exit = runtime.block_on(worker_kit::run(&socket, software, LlamaEngine::default()));
            // The engine thread has stopped and dropped the model, or is stuck
            // inside llama.cpp: either way, no exit handlers (ggml's static
            // destructors must not run under a thread still inside it).
            worker_kit::exit(exit)
        }
        (None, None) => anyhow::bail!("nothing to do: pass --socket PATH (as the supervisor does) or a subcommand; see --help"),
    }
}

/// One message of a `--chat` file.
#[derive(serde::Deserialize)]
struct ChatLine {
    role: String,
    content: String,
}

/// Reads a `--chat` file.
fn read_chat(path: &std::path::Path) -> anyhow::Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the conversation {}", path.display()))?;
    let lines: Vec<ChatLine> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON list of {{role, content}}", path.display()))?;
    lines
        .into_iter()
        .map(|l| {
            let role = match l.role.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => anyhow::bail!(
                    "{}: unknown role {other:?} (system, user, assistant)",
                    path.display()
                ),
            };
            Ok(ChatMessage::new(role, l.content))
        })
        .collect()
}

/// The figures of a standalone generation as one JSON object (numbers only,
/// so it is written without a JSON library).
fn figures_json(load_ms: f64, s: &GenStats, token_ms: &[f64]) -> String {
    let num = |v: f64| {
        if v.is_finite() {
            format!("{v}")
        } else {
            "null".to_owned()
        }
    };
    let mut out = format!(
        "{{\"load_ms\":{},\"prompt_tokens\":{},\"generated_tokens\":{},\"ttft_ms\":{},\"prefill_ms\":{},\"decode_ms\":{},\"decode_tps\":{},\"token_ms\":[",
        num(load_ms),
        s.prompt_tokens,
        s.generated_tokens,
        num(s.ttft_ms),
        num(s.prefill_ms),
        num(s.decode_ms),
        num(s.decode_tps)
    );
    for (i, t) in token_ms.iter().enumerate() {
        let _ = write!(out, "{}{}", if i == 0 { "" } else { "," }, num(*t));
    }
    out.push_str("]}");
    out
}
