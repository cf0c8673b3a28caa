//! The benchmark result file: every figure of a run as JSON, so later runs
//! can compare against it (`--compare`) and charts can be redrawn.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::preflight::CheckItem;
use super::quality::Quality;

/// Version of the file layout; bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// One `supctl bench` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// File layout version ([`SCHEMA`]).
    pub schema: u32,
    /// Profile run.
    pub profile: String,
    /// Start time, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Wall time of the whole run (s).
    pub duration_s: f64,
    /// The machine.
    pub host: HostInfo,
    /// "live" (the running supervisor) or "private" (`--spawn`).
    pub mode: String,
    /// Version of the supervisor measured.
    pub supervisor_version: String,
    /// How the run was set up.
    pub settings: Settings,
    /// The preflight checklist.
    pub preflight: Vec<CheckItem>,
    /// One entry per backend and model measured.
    pub targets: Vec<TargetResult>,
    /// Backends or models of the profile that were not measured, and why.
    pub skipped: Vec<Skipped>,
    /// Relay overhead, one entry per CPU target measured for it.
    pub relay: Vec<RelayResult>,
    /// Anything that may have disturbed the figures.
    pub notes: Vec<String>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// Kernel release.
    pub kernel: String,
    /// CPU architecture.
    pub arch: String,
    /// Online CPUs.
    pub cpus: u32,
}

/// How the run was set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Measured requests per prompt.
    pub repetitions: u32,
    /// Unmeasured requests after each load.
    pub warmup: u32,
    /// Workers were restarted to time a cold load.
    pub cold_load: bool,
    /// Page caches were dropped before cold loads.
    pub drop_caches: bool,
    /// Governors were set to performance.
    pub tuned: bool,
    /// Regression threshold used for comparisons (%).
    pub regression_pct: f64,
}

/// A backend or model left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// "npu" or "cpu".
    pub backend: String,
    /// Model, when known.
    pub model: String,
    /// Why.
    pub reason: String,
}

/// Figures of one backend and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    /// "npu" or "cpu".
    pub backend: String,
    /// Model name as the worker reports it.
    pub model: String,
    /// Model file.
    pub model_path: String,
    /// Slot measured.
    pub slot: String,
    /// Model load to ready, as the worker measured it (ms).
    pub load_ms: Option<f64>,
    /// Restart command to ready, as seen from here (ms): process start included.
    pub restart_to_ready_ms: Option<f64>,
    /// The load was a fresh restart (not a worker loaded earlier).
    pub cold: bool,
    /// Page caches were dropped before that load.
    pub caches_dropped: bool,
    /// Context window of the slot (tokens).
    pub context_size: u32,
    /// The slot's serving settings, in words (threads, batch, KV cache).
    pub slot_settings: String,
    /// Figures per prompt.
    pub prompts: Vec<PromptResult>,
    /// The row of the summary table.
    pub summary: Summary,
}

/// Figures of one prompt on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptResult {
    /// Prompt name.
    pub name: String,
    /// SHA-256 of the prompt text sent (fillers included).
    pub prompt_hash: String,
    /// Characters sent.
    pub prompt_chars: usize,
    /// Tokens of the prompt after the chat template, as the worker counted.
    pub prompt_tokens: u32,
    /// Tokens asked for.
    pub max_new_tokens: u32,
    /// The known answer checked, if any.
    pub expect: Option<String>,
    /// Each measured request.
    pub runs: Vec<RunFigures>,
    /// Median time to first token (ms).
    pub ttft_ms: f64,
    /// Median decode rate (tokens/s).
    pub decode_tps: f64,
    /// Coefficient of variation of the decode rate over the repetitions.
    pub decode_tps_cv: f64,
    /// Median request time, submit to done (ms).
    pub e2e_ms: f64,
    /// Median tokens generated.
    pub generated_tokens: u32,
    /// Median gap between tokens over every repetition (ms).
    pub token_ms_p50: f64,
    /// 99th percentile of the gaps between tokens (ms).
    pub token_ms_p99: f64,
    /// The greedy output of the first repetition.
    pub output: String,
    /// SHA-256 of that output.
    pub output_hash: String,
    /// Every repetition produced the same text.
    pub outputs_consistent: bool,
    /// Known-answer check of the output.
    pub quality: Quality,
}

/// One measured request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFigures {
    /// Submit to first token, as the client saw it (ms).
    pub ttft_ms: f64,
    /// Tokens after the first over the time after the first, as the client saw them.
    pub decode_tps: f64,
    /// Submit to done (ms).
    pub e2e_ms: f64,
    /// Tokens generated (the supervisor's count).
    pub generated_tokens: u32,
    /// Token events received.
    pub token_events: u32,
    /// The worker's own time to first token (ms).
    pub worker_ttft_ms: f64,
    /// The worker's own decode rate (tokens/s).
    pub worker_decode_tps: f64,
    /// Peak RssAnon of the worker during the request (KiB).
    pub peak_rss_anon_kb: Option<u64>,
    /// The worker's VmHWM after the request (KiB).
    pub vm_hwm_kb: Option<u64>,
    /// Hottest zone during the request (degrees C).
    pub hottest_c: Option<f64>,
    /// Time spent waiting for the board to cool before it (ms).
    pub cooled_ms: f64,
}

/// The summary row of a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Prompt whose figures the row shows.
    pub headline_prompt: String,
    /// Its median time to first token (ms).
    pub ttft_ms: f64,
    /// Its median decode rate (tokens/s).
    pub decode_tps: f64,
    /// Its median request time (s).
    pub e2e_s: f64,
    /// Its decode-rate coefficient of variation.
    pub decode_tps_cv: f64,
    /// Its median gap between tokens (ms).
    pub token_ms_p50: f64,
    /// Its 99th-percentile gap between tokens (ms).
    pub token_ms_p99: f64,
    /// Peak RssAnon over every request (KiB).
    pub peak_rss_anon_kb: Option<u64>,
    /// Highest VmHWM seen (KiB).
    pub vm_hwm_kb: Option<u64>,
    /// Hottest zone over every request (degrees C).
    pub hottest_c: Option<f64>,
    /// Known-answer checks passed.
    pub quality_passed: u32,
    /// Known-answer checks made.
    pub quality_checked: u32,
    /// Decode rate over that of the slowest target.
    pub speedup: f64,
}

/// The relay overhead: the same generation in-process and through the stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayResult {
    /// Model.
    pub model: String,
    /// Prompt used.
    pub prompt: String,
    /// Tokens asked for.
    pub max_new_tokens: u32,
    /// Pairs of runs made.
    pub repetitions: u32,
    /// Median decode rate of `worker-cpu generate` (tokens/s).
    pub in_process_tps: f64,
    /// Median decode rate through supervisor and sockets (tokens/s).
    pub stack_tps: f64,
    /// Median over the pairs of stack tokens/s over in-process tokens/s
    /// (each pair ran back to back, so slow drifts of the machine cancel).
    pub ratio: f64,
    /// Best stack run over best in-process run: the least disturbed pair
    /// on a machine shared with other work.
    pub best_ratio: f64,
    /// Median over the in-process runs of the mean gap between tokens (ms).
    pub in_process_token_ms: f64,
    /// The same through the stack (ms).
    pub stack_token_ms: f64,
    /// What the stack adds per token: `stack_token_ms - in_process_token_ms`.
    pub added_token_ms: f64,
    /// Median over the stack runs of the rate the client saw over the rate
    /// the worker measured in the same request: the relay alone, immune to
    /// the machine's speed changing between runs.
    pub relay_only_ratio: f64,
    /// Decode rate of each in-process run (tokens/s).
    pub in_process_runs_tps: Vec<f64>,
    /// Decode rate of each stack run (tokens/s).
    pub stack_runs_tps: Vec<f64>,
    /// Both produced the same text.
    pub same_output: bool,
    /// Settings that differ between the two (they should not affect decoding).
    pub differences: Vec<String>,
}

impl BenchResult {
    /// Reads a result file.
    ///
    /// # Errors
    /// The file cannot be read or is not a result of this layout.
    pub fn load(path: &Path) -> Result<Self, super::BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| super::BenchError::Read {
            path: path.to_owned(),
            source,
        })?;
        let result: Self =
            serde_json::from_str(&text).map_err(|source| super::BenchError::NotAResult {
                path: path.to_owned(),
                source,
            })?;
        if result.schema != SCHEMA {
            return Err(super::BenchError::Schema {
                path: path.to_owned(),
                found: result.schema,
            });
        }
        Ok(result)
    }

    /// The target for `backend` and `model`, if measured.
    pub fn target(&self, backend: &str, model: &str) -> Option<&TargetResult> {
        self.targets
            .iter()
            .find(|t| t.backend == backend && t.model == model)
    }
}

/// The newest result of `profile` in `dir` other than `except`: what a run
/// compares its outputs with when no `--compare` file is given.
pub fn latest_in(dir: &Path, profile: &str, except: &Path) -> Option<(PathBuf, BenchResult)> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p != except)
        .filter_map(|p| BenchResult::load(&p).ok().map(|r| (p, r)))
        .filter(|(_, r)| r.profile == profile)
        .max_by_key(|(_, r)| r.started_unix_ms)
}
