//! The benchmark result as Markdown: the preflight checklist, the summary
//! table (one row per backend and model, with the speedup over the slowest
//! row), figures per prompt, output samples and the relay overhead.

use std::fmt::Write as _;

use super::preflight::CheckItem;
use super::result::{BenchResult, RelayResult, TargetResult};
use super::text::{cell, excerpt};

/// Relay ratio the stack must keep on the default model (stack tokens/s
/// over in-process tokens/s).
pub const RELAY_RATIO_TARGET: f64 = 0.97;

#[allow(clippy::cast_precision_loss)] // KiB figures are far below 2^52
fn mib(kb: Option<u64>) -> String {
    kb.map_or_else(|| "n/a".into(), |kb| format!("{:.0}", kb as f64 / 1024.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

/// The preflight checklist.
pub fn preflight(items: &[CheckItem]) -> String {
    let mut out = String::from("## Preflight\n\n");
    for item in items {
        let _ = writeln!(out, "{item}");
    }
    out
}

/// The summary table, one row per target.
pub fn summary_table(targets: &[TargetResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| backend | model | load s | TTFT ms | decode tok/s | end-to-end s | peak RssAnon MiB | VmHWM MiB | CV | quality | speedup |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for t in targets {
        let s = &t.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {} | {} | {:.1}% | {} | ×{:.2} |",
            t.backend,
            cell(&t.model),
            opt(t.load_ms.map(|ms| ms / 1000.0), 2),
            s.ttft_ms,
            s.decode_tps,
            s.e2e_s,
            mib(s.peak_rss_anon_kb),
            mib(s.vm_hwm_kb),
            s.decode_tps_cv * 100.0,
            if s.quality_checked == 0 {
                "-".to_owned()
            } else {
                format!("{}/{}", s.quality_passed, s.quality_checked)
            },
            s.speedup,
        );
    }
    out
}

fn prompt_table(targets: &[TargetResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| backend | model | prompt | prompt tok | gen tok | TTFT ms | decode tok/s | CV | end-to-end s | token p50 ms | token p99 ms | quality | output hash |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for t in targets {
        for p in &t.prompts {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1}% | {:.2} | {:.1} | {:.1} | {} | `{}`{} |",
                t.backend,
                cell(&t.model),
                cell(&p.name),
                p.prompt_tokens,
                p.generated_tokens,
                p.ttft_ms,
                p.decode_tps,
                p.decode_tps_cv * 100.0,
                p.e2e_ms / 1000.0,
                p.token_ms_p50,
                p.token_ms_p99,
                p.quality.as_str(),
                &p.output_hash[..p.output_hash.len().min(12)],
                if p.outputs_consistent { "" } else { " (varied)" },
            );
        }
    }
    out
}

/// The relay-overhead section.
pub fn relay(relays: &[RelayResult]) -> String {
    let mut out = String::from("## Relay overhead\n\n");
    let _ = writeln!(
        out,
        "The same greedy generation decoded by llama.cpp in-process (`worker-cpu generate`, no supervisor, no sockets) and through supervisor, worker socket and client socket.\n"
    );
    let _ = writeln!(
        out,
        "| model | prompt | tokens | pairs | in-process tok/s | stack tok/s | ratio | best ratio | in-process ms/token | stack ms/token | added ms/token | same output |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in relays {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.3} | {:.3} | {:.2} | {:.2} | {:+.2} | {} |",
            cell(&r.model),
            cell(&r.prompt),
            r.max_new_tokens,
            r.repetitions,
            r.in_process_tps,
            r.stack_tps,
            r.ratio,
            r.best_ratio,
            r.in_process_token_ms,
            r.stack_token_ms,
            r.added_token_ms,
            if r.same_output { "yes" } else { "no" },
        );
    }
    let _ = writeln!(out);
    for r in relays {
        let _ = writeln!(
            out,
            "Relay ratio on {} (stack tok/s / in-process tok/s, median of {} back-to-back pairs): **{:.3}** (target ≥ {RELAY_RATIO_TARGET}: {}); best pair {:.3}; the stack adds {:+.2} ms per token. Within each stack request, the rate the client saw over the rate the worker measured: {:.3}.",
            r.model,
            r.repetitions,
            r.ratio,
            if r.ratio >= RELAY_RATIO_TARGET { "met" } else { "NOT met" },
            r.best_ratio,
            r.added_token_ms,
            r.relay_only_ratio
        );
        let runs = |v: &[f64]| {
            v.iter()
                .map(|t| format!("{t:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "- runs, tok/s: in-process {}; stack {}",
            runs(&r.in_process_runs_tps),
            runs(&r.stack_runs_tps)
        );
        for d in &r.differences {
            let _ = writeln!(out, "- setting differs: {d}");
        }
        let _ = writeln!(out);
    }
    out
}

/// The whole report after the preflight section.
pub fn results(r: &BenchResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Results: profile `{}`\n", r.profile);
    let _ = writeln!(
        out,
        "{} ({}, {} CPUs, kernel {}), supervisor {} ({} mode), {} repetition(s) per prompt, {} warm-up, {}.\n",
        r.host.hostname,
        r.host.arch,
        r.host.cpus,
        r.host.kernel,
        r.supervisor_version,
        r.mode,
        r.settings.repetitions,
        r.settings.warmup,
        if r.settings.cold_load { "cold loads" } else { "workers as loaded" },
    );
    if r.targets.is_empty() {
        let _ = writeln!(out, "Nothing was measured.\n");
    } else {
        out.push_str(&summary_table(&r.targets));
        let headline = r
            .targets
            .first()
            .map(|t| t.summary.headline_prompt.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nRows show the `{headline}` prompt's medians; load is model load to ready as the supervisor saw it; CV is the coefficient of variation of decode tok/s over the repetitions; quality counts known answers given; speedup is decode tok/s over the slowest row.\n"
        );
        for t in &r.targets {
            let _ = writeln!(
                out,
                "- {} {} (slot {}, {}): {}",
                t.backend, t.model, t.slot, t.model_path, t.slot_settings
            );
        }
        let _ = writeln!(out, "\n### Per prompt\n");
        out.push_str(&prompt_table(&r.targets));
        let _ = writeln!(out, "\n### Outputs (greedy, first repetition)\n");
        for t in &r.targets {
            for p in &t.prompts {
                let _ = writeln!(
                    out,
                    "- {} {} / {}: {:?}",
                    t.backend,
                    t.model,
                    p.name,
                    excerpt(&p.output, 100)
                );
            }
        }
        let _ = writeln!(out);
    }
    if !r.relay.is_empty() {
        out.push_str(&relay(&r.relay));
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "### Not measured\n");
        for s in &r.skipped {
            let what = if s.model.is_empty() {
                s.backend.clone()
            } else {
                format!("{} {}", s.backend, s.model)
            };
            let _ = writeln!(out, "- {what}: {}", s.reason);
        }
        let _ = writeln!(out);
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out, "### Notes\n");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
        let _ = writeln!(out);
    }
    out
}
