//! The in-process side of the relay-overhead measurement: `worker-cpu
//! generate --json` decodes a prompt with llama.cpp in its own process (no
//! supervisor, no sockets) and reports its figures and token times.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use super::BenchError;
use supervisor::config::SlotConfig;

/// What `worker-cpu generate --json` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct InProcess {
    /// Model load (ms).
    pub load_ms: f64,
    /// Prompt tokens after the chat template.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// The engine's time to first token (ms).
    pub ttft_ms: f64,
    /// The engine's decode rate (tokens/s).
    pub decode_tps: f64,
    /// When each piece reached the caller, in ms after the first.
    pub token_ms: Vec<f64>,
    /// The answer (read from stdout, not the JSON).
    #[serde(skip)]
    pub text: String,
}

/// What an in-process generation answers.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// One user message.
    Text(&'a str),
    /// A whole conversation in a JSON file (`worker-cpu generate --chat`).
    ChatFile(&'a Path),
}

/// Runs one in-process generation with the model and settings of the CPU
/// `slot`, greedy, `max_tokens` at most, within `limit`.
///
/// # Errors
/// The worker binary cannot be run, fails, or prints no figures.
pub async fn in_process(
    slot: &SlotConfig,
    prompt: Prompt<'_>,
    max_tokens: u32,
    limit: Duration,
) -> Result<InProcess, BenchError> {
    let worker = slot.worker_binary();
    let mut cmd = tokio::process::Command::new(&worker);
    cmd.arg("generate").arg("--model").arg(&slot.model);
    match prompt {
        Prompt::Text(text) => cmd.arg("--prompt").arg(text),
        Prompt::ChatFile(path) => cmd.arg("--chat").arg(path),
    };
    cmd.arg("--max-tokens")
        .arg(max_tokens.to_string())
        .arg("--context-size")
        .arg(slot.profile.context_size.to_string())
        .arg("--threads")
        .arg(slot.profile.threads.to_string())
        .arg("--json");
    // The same cores as the slot's worker, so the comparison is fair.
    if let Some(cpus) = supervisor::process::worker_cpus_arg(slot) {
        cmd.arg("--cpus").arg(cpus);
    }
    cmd.envs(&slot.worker_env)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| BenchError::InProcessStart {
        path: worker.clone(),
        source,
    })?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| BenchError::Timeout {
            what: "the in-process generation".into(),
            seconds: limit.as_secs_f64(),
        })?
        .map_err(|source| BenchError::InProcessStart {
            path: worker.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = || {
        let lines: Vec<&str> = stderr.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    if !output.status.success() {
        return Err(BenchError::InProcessFailed {
            status: output.status.to_string(),
            stderr_tail: tail(),
        });
    }
    let figures = stderr
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str::<InProcess>(l).ok());
    let Some(mut figures) = figures else {
        return Err(BenchError::InProcessOutput {
            stderr_tail: tail(),
        });
    };
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    // `generate` ends the answer with one newline of its own.
    if text.ends_with('\n') {
        text.pop();
    }
    figures.text = text;
    Ok(figures)
}

/// Settings of the CPU slot that `worker-cpu generate` does not take and
/// sets its own way (they change prompt processing, not the decode loop,
/// except the KV cache type and flash attention).
pub fn differences(slot: &SlotConfig) -> Vec<String> {
    let p = &slot.profile;
    let mut out = Vec::new();
    if p.batch_size != 512 {
        out.push(format!(
            "prompt batch {} in the slot, 512 in-process (prompt processing only)",
            p.batch_size
        ));
    }
    if p.kv_cache_type != "f16" {
        out.push(format!(
            "KV cache {} in the slot, f16 in-process",
            p.kv_cache_type
        ));
    }
    if p.flash_attention {
        out.push("flash attention on in the slot, off in-process".into());
    }
    if !slot.cpu.use_mmap {
        out.push("weights read into memory in the slot, mmap'd in-process".into());
    }
    out
}

/// Whether `path` names an executable file.
pub fn runnable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
