//! A result against an earlier one: the change of every headline figure,
//! regressions beyond the threshold, and outputs that changed for the same
//! prompt ("quality drift": a silent change of outputs at unchanged speed).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::quality::Quality;
use super::result::{BenchResult, TargetResult};
use super::text::{cell, excerpt};

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// The change of one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// "cpu SmolLM2-135M-Instruct" (or "relay SmolLM2-135M-Instruct").
    pub target: String,
    /// The figure, e.g. "decode tok/s".
    pub figure: String,
    /// Earlier value.
    pub before: f64,
    /// This run's value.
    pub after: f64,
    /// Change in percent (positive = the number grew).
    pub change_pct: f64,
    /// Worse by more than the threshold.
    pub regression: bool,
}

/// Everything a comparison found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The earlier result's file.
    pub previous: String,
    /// Regression threshold (%).
    pub threshold_pct: f64,
    /// Figure by figure.
    pub deltas: Vec<Delta>,
    /// Figures worse than the threshold, and known answers lost, in words.
    pub regressions: Vec<String>,
    /// Outputs that changed for an unchanged prompt, in words.
    pub drift: Vec<String>,
    /// Targets or prompts only one of the two results has.
    pub unmatched: Vec<String>,
}

impl Comparison {
    /// A regression or drift was found.
    pub fn flagged(&self) -> bool {
        !self.regressions.is_empty() || !self.drift.is_empty()
    }
}

fn change_pct(before: f64, after: f64) -> f64 {
    if before == 0.0 {
        0.0
    } else {
        (after - before) / before.abs() * 100.0
    }
}

fn worse_pct(before: f64, after: f64, better: Better) -> f64 {
    match better {
        Better::Higher => -change_pct(before, after),
        Better::Lower => change_pct(before, after),
    }
}

#[allow(clippy::cast_precision_loss)] // KiB figures are far below 2^52
fn mib(kb: Option<u64>) -> Option<f64> {
    kb.map(|kb| kb as f64 / 1024.0)
}

impl Comparison {
    /// Records one figure; a regression when it is worse by more than the threshold.
    fn figure(
        &mut self,
        target: &str,
        name: &str,
        before: Option<f64>,
        after: Option<f64>,
        better: Better,
    ) {
        let (Some(before), Some(after)) = (before, after) else {
            return;
        };
        if !(before.is_finite() && after.is_finite()) || before <= 0.0 {
            return;
        }
        let worse = worse_pct(before, after, better);
        let regression = worse > self.threshold_pct;
        if regression {
            self.regressions.push(format!(
                "{target}: {name} {before:.2} -> {after:.2} ({worse:.1}% worse)"
            ));
        }
        self.deltas.push(Delta {
            target: target.to_owned(),
            figure: name.to_owned(),
            before,
            after,
            change_pct: change_pct(before, after),
            regression,
        });
    }

    /// Headline figures, load time and memory of one target.
    fn target_figures(&mut self, label: &str, old: &TargetResult, new: &TargetResult) {
        let (a, b) = (&new.summary, &old.summary);
        if a.headline_prompt == b.headline_prompt {
            for (name, before, after, better) in [
                ("decode tok/s", b.decode_tps, a.decode_tps, Better::Higher),
                ("TTFT ms", b.ttft_ms, a.ttft_ms, Better::Lower),
                ("end-to-end s", b.e2e_s, a.e2e_s, Better::Lower),
            ] {
                self.figure(label, name, Some(before), Some(after), better);
            }
        } else {
            self.unmatched.push(format!(
                "{label}: headline prompt changed ({} -> {})",
                b.headline_prompt, a.headline_prompt
            ));
        }
        if new.cold && old.cold {
            self.figure(label, "load ms", old.load_ms, new.load_ms, Better::Lower);
        }
        self.figure(
            label,
            "peak RssAnon MiB",
            mib(b.peak_rss_anon_kb),
            mib(a.peak_rss_anon_kb),
            Better::Lower,
        );
    }

    /// Outputs and known answers of one target's prompts.
    fn prompt_outputs(&mut self, label: &str, old: &TargetResult, new: &TargetResult) {
        for prompt in &new.prompts {
            let Some(before) = old.prompts.iter().find(|q| q.name == prompt.name) else {
                self.unmatched.push(format!(
                    "{label} / {}: not in the earlier result",
                    prompt.name
                ));
                continue;
            };
            if before.prompt_hash != prompt.prompt_hash
                || before.max_new_tokens != prompt.max_new_tokens
            {
                self.unmatched.push(format!(
                    "{label} / {}: the prompt changed, outputs not compared",
                    prompt.name
                ));
                continue;
            }
            if before.output_hash != prompt.output_hash {
                self.drift.push(format!(
                    "{label} / {}: output changed (hash {} -> {}); now: {:?}",
                    prompt.name,
                    short(&before.output_hash),
                    short(&prompt.output_hash),
                    excerpt(&prompt.output, 80),
                ));
            }
            if before.quality == Quality::Pass && prompt.quality == Quality::Fail {
                self.regressions.push(format!(
                    "{label} / {}: the known answer {:?} is no longer given",
                    prompt.name,
                    prompt.expect.as_deref().unwrap_or_default()
                ));
            }
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Compares `current` with `previous`, flagging figures more than
/// `threshold_pct` worse and outputs whose hash changed.
pub fn compare(
    previous: &BenchResult,
    previous_path: &str,
    current: &BenchResult,
    threshold_pct: f64,
) -> Comparison {
    let mut c = Comparison {
        previous: previous_path.to_owned(),
        threshold_pct,
        deltas: Vec::new(),
        regressions: Vec::new(),
        drift: Vec::new(),
        unmatched: Vec::new(),
    };
    for t in &current.targets {
        let label = format!("{} {}", t.backend, t.model);
        let Some(p) = previous.target(&t.backend, &t.model) else {
            c.unmatched
                .push(format!("{label}: not in the earlier result"));
            continue;
        };
        if p.slot_settings != t.slot_settings {
            c.unmatched.push(format!(
                "{label}: slot settings changed ({} -> {}); figures compared anyway",
                p.slot_settings, t.slot_settings
            ));
        }
        c.target_figures(&label, p, t);
        c.prompt_outputs(&label, p, t);
    }
    for r in &current.relay {
        if let Some(p) = previous.relay.iter().find(|p| p.model == r.model) {
            c.figure(
                &format!("relay {}", r.model),
                "stack/in-process ratio",
                Some(p.ratio),
                Some(r.ratio),
                Better::Higher,
            );
        }
    }
    for p in &previous.targets {
        if current.target(&p.backend, &p.model).is_none() {
            c.unmatched
                .push(format!("{} {}: not measured this time", p.backend, p.model));
        }
    }
    c
}

/// The comparison as a Markdown section.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Comparison with `{}`\n", c.previous);
    if c.deltas.is_empty() {
        let _ = writeln!(out, "No figure in common.\n");
    } else {
        let _ = writeln!(out, "| target | figure | before | after | change | |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|");
        for d in &c.deltas {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {:+.1}% | {} |",
                cell(&d.target),
                d.figure,
                d.before,
                d.after,
                d.change_pct,
                if d.regression { "**REGRESSION**" } else { "" }
            );
        }
        let _ = writeln!(out);
    }
    if c.regressions.is_empty() {
        let _ = writeln!(out, "No regression beyond {:.0}%.", c.threshold_pct);
    } else {
        let _ = writeln!(out, "**Regressions** (beyond {:.0}%):", c.threshold_pct);
        for r in &c.regressions {
            let _ = writeln!(out, "- {r}");
        }
    }
    let _ = writeln!(out);
    if c.drift.is_empty() {
        let _ = writeln!(out, "No quality drift: every compared output is unchanged.");
    } else {
        let _ = writeln!(
            out,
            "**Quality drift** (output changed for the same prompt):"
        );
        for d in &c.drift {
            let _ = writeln!(out, "- {d}");
        }
    }
    if !c.unmatched.is_empty() {
        let _ = writeln!(out, "\nNot compared:");
        for u in &c.unmatched {
            let _ = writeln!(out, "- {u}");
        }
    }
    out
}
