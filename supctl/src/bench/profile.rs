//! The `[bench]` config section: benchmark profiles (what to run) and the
//! limits a run keeps to, plus the built-in `edge` profile.
//!
//! supctl reads this section itself from the installation's one config file,
//! the way the gateway reads `[gateway]`: the daemon passes it over, and
//! here every other top-level section is ignored while an unknown key inside
//! `[bench]` is an error naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto::chat::Backend;
use serde::Deserialize;

use supervisor::config::{self, invalid, positive as seconds, ConfigError};

/// Name of the profile built into the binary.
pub const EDGE: &str = "edge";

/// `[bench]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchConfig {
    /// Profile `supctl bench` runs without `--profile`.
    pub default_profile: String,
    /// Directory of result files and charts (default: `<state_dir>/bench`).
    pub output_dir: Option<PathBuf>,
    /// A figure this many percent worse than the previous result is a regression.
    pub regression_pct: f64,
    /// Refuse to start while any thermal zone is above this (degrees C).
    pub max_start_c: f64,
    /// Before each measured request, wait until every zone is at or below this.
    pub cool_to_c: f64,
    /// Longest wait for `cool_to_c` before measuring anyway (noted in the result).
    pub cool_timeout_s: f64,
    /// MemAvailable needed on top of the largest model file (MiB).
    pub memory_margin_mib: u64,
    /// Named profiles; one named `edge` replaces the built-in one.
    pub profiles: BTreeMap<String, BenchProfile>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            default_profile: EDGE.into(),
            output_dir: None,
            regression_pct: 10.0,
            max_start_c: 85.0,
            cool_to_c: 70.0,
            cool_timeout_s: 300.0,
            memory_margin_mib: 256,
            profiles: BTreeMap::new(),
        }
    }
}

/// `[bench.profiles.<name>]`: a named set of runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchProfile {
    /// Backends to measure, in this order ("npu", "cpu").
    pub backends: Vec<String>,
    /// Further model files to compare (`--spawn` only): `.gguf` runs on the
    /// CPU backend, `.rkllm` on the NPU, each with its backend's slot settings.
    pub models: Vec<PathBuf>,
    /// Measured requests per prompt.
    pub repetitions: u32,
    /// Unmeasured requests after each load, before the measured ones.
    pub warmup: u32,
    /// Tokens to generate for prompts that do not say.
    pub max_new_tokens: u32,
    /// Limit for one request, queueing included (s).
    pub request_timeout_s: f64,
    /// Limit from a restart to the worker being ready (s).
    pub load_timeout_s: f64,
    /// Restart each worker before measuring it (cold load time).
    pub cold_load: bool,
    /// Measure the relay overhead on CPU targets.
    pub relay: bool,
    /// Pairs of runs (in-process, stack) for the relay overhead.
    pub relay_repetitions: u32,
    /// Prompt whose figures stand for the row in the summary table
    /// (default: the one with the most tokens to generate).
    pub headline: Option<String>,
    /// The prompts, run in this order.
    pub prompts: Vec<PromptSpec>,
}

impl Default for BenchProfile {
    fn default() -> Self {
        Self {
            backends: vec!["npu".into(), "cpu".into()],
            models: Vec::new(),
            repetitions: 3,
            warmup: 1,
            max_new_tokens: 64,
            request_timeout_s: 300.0,
            load_timeout_s: 300.0,
            cold_load: true,
            relay: true,
            relay_repetitions: 5,
            headline: None,
            prompts: Vec::new(),
        }
    }
}

/// One prompt of a profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// Short name for tables and comparisons.
    pub name: String,
    /// The user's message (after the filler text when `fill_context` is set).
    pub text: String,
    /// Tokens to generate (default: the profile's).
    #[serde(default)]
    pub max_new_tokens: Option<u32>,
    /// A word or number the answer must contain for the quality check.
    #[serde(default)]
    pub expect: Option<String>,
    /// Put filler text before `text` until the prompt fills this fraction
    /// of the slot's context window (the long-prompt case).
    #[serde(default)]
    pub fill_context: Option<f64>,
}

impl PromptSpec {
    /// Tokens to generate for this prompt under `profile`.
    pub fn max_tokens(&self, profile: &BenchProfile) -> u32 {
        self.max_new_tokens.unwrap_or(profile.max_new_tokens)
    }
}

/// The built-in `edge` profile: a known-answer question first, a longer
/// generation, and a prompt filled to near the context limit.
pub fn edge() -> BenchProfile {
    BenchProfile {
        prompts: vec![
            PromptSpec {
                name: "arithmetic".into(),
                text: "What is 2+2?".into(),
                max_new_tokens: Some(32),
                expect: Some("4".into()),
                fill_context: None,
            },
            PromptSpec {
                name: "capital".into(),
                text: "What is the capital of France?".into(),
                max_new_tokens: Some(32),
                expect: Some("Paris".into()),
                fill_context: None,
            },
            PromptSpec {
                name: "story".into(),
                text:
                    "Write a short story about a lighthouse keeper who finds a message in a bottle."
                        .into(),
                max_new_tokens: Some(320),
                expect: None,
                fill_context: None,
            },
            PromptSpec {
                name: "long-prompt".into(),
                text: "Summarize the notes above in one sentence.".into(),
                max_new_tokens: Some(48),
                expect: None,
                fill_context: Some(0.85),
            },
        ],
        ..BenchProfile::default()
    }
}

/// The whole file as `supctl bench` sees it: other sections are ignored.
#[derive(Deserialize)]
struct BenchFile {
    #[serde(default)]
    bench: BenchConfig,
}

impl BenchConfig {
    /// Reads the `[bench]` section of the config file at `path` (defaults
    /// when absent); relative paths are taken from the file's directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the key at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, base) = config::read_file(path)?;
        Self::from_toml(&text, &base)
    }

    /// Parses and checks the `[bench]` section of a whole config file's
    /// text; relative paths are taken from `base`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key at fault.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut bench = config::deserialize::<BenchFile>(text)?.bench;
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = &mut bench.output_dir {
            fix(dir);
        }
        for model in bench.profiles.values_mut().flat_map(|p| &mut p.models) {
            fix(model);
        }
        bench.validate()?;
        Ok(bench)
    }

    /// The profile called `name`: one from the config, else the built-in `edge`.
    pub fn profile(&self, name: &str) -> Option<BenchProfile> {
        match self.profiles.get(name) {
            Some(p) => Some(p.clone()),
            None if name == EDGE => Some(edge()),
            None => None,
        }
    }

    /// Every profile name that can be run.
    pub fn profile_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.profiles.keys().cloned().collect();
        if !self.profiles.contains_key(EDGE) {
            names.push(EDGE.into());
        }
        names.sort();
        names
    }

    /// Checks every value; the error names the key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.profile(&self.default_profile).is_none() {
            return Err(invalid(
                "bench.default_profile",
                format!(
                    "no profile named {:?} (known: {})",
                    self.default_profile,
                    self.profile_names().join(", ")
                ),
            ));
        }
        if !(self.regression_pct.is_finite() && self.regression_pct > 0.0) {
            return Err(invalid(
                "bench.regression_pct",
                "must be a positive percentage",
            ));
        }
        for (key, v) in [
            ("max_start_c", self.max_start_c),
            ("cool_to_c", self.cool_to_c),
        ] {
            if !v.is_finite() {
                return Err(invalid(
                    format!("bench.{key}"),
                    "must be a number of degrees",
                ));
            }
        }
        if self.cool_to_c > self.max_start_c {
            return Err(invalid(
                "bench.cool_to_c",
                "must not be above bench.max_start_c",
            ));
        }
        seconds("bench.cool_timeout_s", self.cool_timeout_s)?;
        for (name, profile) in &self.profiles {
            profile.validate(&format!("bench.profiles.{name}"))?;
        }
        Ok(())
    }
}

impl BenchProfile {
    /// The backends as parsed values (validated).
    pub fn backend_list(&self) -> Vec<Backend> {
        self.backends
            .iter()
            .filter_map(|b| b.parse().ok())
            .collect()
    }

    /// Index of the headline prompt.
    pub fn headline_index(&self) -> usize {
        if let Some(name) = &self.headline {
            if let Some(i) = self.prompts.iter().position(|p| &p.name == name) {
                return i;
            }
        }
        // The first of the longest generations: its decode rate is the least
        // disturbed by the first token.
        let mut best = 0;
        for (i, p) in self.prompts.iter().enumerate() {
            if p.max_tokens(self) > self.prompts[best].max_tokens(self) {
                best = i;
            }
        }
        best
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.backends.is_empty() {
            return Err(invalid(
                format!("{key}.backends"),
                "must name at least one backend",
            ));
        }
        for b in &self.backends {
            b.parse::<Backend>()
                .map_err(|e| invalid(format!("{key}.backends"), e))?;
        }
        for (i, m) in self.models.iter().enumerate() {
            if model_backend(m).is_none() {
                return Err(invalid(
                    format!("{key}.models[{i}]"),
                    format!(
                        "{} is neither a .gguf (cpu) nor a .rkllm (npu) file",
                        m.display()
                    ),
                ));
            }
        }
        if self.repetitions == 0 {
            return Err(invalid(format!("{key}.repetitions"), "must be at least 1"));
        }
        if self.relay_repetitions == 0 {
            return Err(invalid(
                format!("{key}.relay_repetitions"),
                "must be at least 1",
            ));
        }
        if self.max_new_tokens == 0 {
            return Err(invalid(
                format!("{key}.max_new_tokens"),
                "must be at least 1",
            ));
        }
        seconds(&format!("{key}.request_timeout_s"), self.request_timeout_s)?;
        seconds(&format!("{key}.load_timeout_s"), self.load_timeout_s)?;
        if self.prompts.is_empty() {
            return Err(invalid(
                format!("{key}.prompts"),
                "must list at least one prompt",
            ));
        }
        for (i, p) in self.prompts.iter().enumerate() {
            let pk = format!("{key}.prompts[{i}]");
            if p.name.trim().is_empty() {
                return Err(invalid(format!("{pk}.name"), "must not be empty"));
            }
            if self.prompts[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    format!("{pk}.name"),
                    format!("{:?} is used by an earlier prompt", p.name),
                ));
            }
            if p.text.trim().is_empty() {
                return Err(invalid(format!("{pk}.text"), "must not be empty"));
            }
            if p.max_new_tokens == Some(0) {
                return Err(invalid(
                    format!("{pk}.max_new_tokens"),
                    "must be at least 1",
                ));
            }
            if p.expect.as_ref().is_some_and(|e| e.trim().is_empty()) {
                return Err(invalid(
                    format!("{pk}.expect"),
                    "must not be empty (leave it out for no check)",
                ));
            }
            if let Some(f) = p.fill_context {
                if !(f > 0.0 && f <= 0.95) {
                    return Err(invalid(
                        format!("{pk}.fill_context"),
                        format!("must be above 0 and at most 0.95, not {f}"),
                    ));
                }
            }
        }
        if let Some(h) = &self.headline {
            if !self.prompts.iter().any(|p| &p.name == h) {
                return Err(invalid(
                    format!("{key}.headline"),
                    format!("no prompt named {h:?} in this profile"),
                ));
            }
        }
        Ok(())
    }
}

/// The backend a model file runs on, from its extension.
pub fn model_backend(path: &std::path::Path) -> Option<Backend> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "gguf" => Some(Backend::Cpu),
        "rkllm" => Some(Backend::Npu),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const SLOT: &str = "[slots.primary]\nbackend = \"cpu\"\nmodel = \"m.gguf\"\n";

    fn load(bench: &str) -> Result<BenchConfig, String> {
        BenchConfig::from_toml(&format!("{SLOT}{bench}"), Path::new("/etc/rocksteady"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn no_section_gives_the_built_in_edge_profile() {
        let c = load("").unwrap();
        let edge = c.profile(EDGE).unwrap();
        assert_eq!(edge.prompts[0].text, "What is 2+2?");
        assert_eq!(edge.prompts[0].expect.as_deref(), Some("4"));
        assert!(edge.prompts.iter().any(|p| p.fill_context.is_some()));
        assert!(edge.prompts.iter().any(|p| p.max_tokens(&edge) >= 200));
        assert_eq!(edge.prompts[edge.headline_index()].name, "story");
        assert!(c.profile("nope").is_none());
    }

    #[test]
    fn profiles_parse_and_replace_the_built_in_one() {
        let c = load(
            "[bench]\nregression_pct = 5\n[bench.profiles.edge]\nbackends = [\"cpu\"]\nrepetitions = 1\n\
             [[bench.profiles.edge.prompts]]\nname = \"a\"\ntext = \"hi\"\nmax_new_tokens = 4\n",
        )
        .unwrap();
        let p = c.profile(EDGE).unwrap();
        assert_eq!(p.backend_list(), [Backend::Cpu]);
        assert_eq!(p.prompts.len(), 1);
        assert!((c.regression_pct - 5.0).abs() < f64::EPSILON);
    }

    #[test]
    fn bad_values_name_the_key() {
        let prompt = "[[bench.profiles.q.prompts]]\nname = \"a\"\ntext = \"hi\"\n";
        let cases = [
            ("[bench]\nspeed = 1\n", "speed"),
            (
                "[bench]\ndefault_profile = \"x\"\n",
                "bench.default_profile",
            ),
            (
                "[bench]\ncool_to_c = 90\nmax_start_c = 80\n",
                "bench.cool_to_c",
            ),
            (
                &format!("[bench.profiles.q]\nrepetitions = 0\n{prompt}"),
                "bench.profiles.q.repetitions",
            ),
            (
                &format!("[bench.profiles.q]\nbackends = [\"gpu\"]\n{prompt}"),
                "bench.profiles.q.backends",
            ),
            ("[bench.profiles.q]\n", "bench.profiles.q.prompts"),
            (
                &format!("{prompt}fill_context = 1.5\n"),
                "bench.profiles.q.prompts[0].fill_context",
            ),
            (
                &format!("{prompt}{prompt}"),
                "bench.profiles.q.prompts[1].name",
            ),
            (
                &format!("[bench.profiles.q]\nmodels = [\"a.bin\"]\n{prompt}"),
                "bench.profiles.q.models[0]",
            ),
            (
                &format!("[bench.profiles.q]\nheadline = \"b\"\n{prompt}"),
                "bench.profiles.q.headline",
            ),
            (&format!("{prompt}colour = 1\n"), "colour"),
        ];
        for (text, key) in cases {
            let e = load(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn other_programs_sections_are_passed_over() {
        // Sections and keys supctl knows nothing of, even ones the daemon
        // would refuse, are not supctl's business.
        let c = BenchConfig::from_toml(
            "[gateway]\nanything = 1\n[slots.primary]\nbackend = \"tpu\"\n[bench]\nregression_pct = 7\n",
            Path::new("/"),
        )
        .unwrap();
        assert!((c.regression_pct - 7.0).abs() < f64::EPSILON);
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_directory() {
        let c = load(
            "[bench]\noutput_dir = \"results\"\n[bench.profiles.q]\nmodels = [\"m/a.gguf\", \"/abs/b.gguf\"]\n\
             [[bench.profiles.q.prompts]]\nname = \"a\"\ntext = \"hi\"\n",
        )
        .unwrap();
        assert_eq!(
            c.output_dir.as_deref(),
            Some(Path::new("/etc/rocksteady/results"))
        );
        assert_eq!(
            c.profiles["q"].models,
            [
                PathBuf::from("/etc/rocksteady/m/a.gguf"),
                PathBuf::from("/abs/b.gguf")
            ]
        );
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let e = BenchConfig::load(Path::new("/nonexistent/rocksteady.toml")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/rocksteady.toml"),
            "{e}"
        );
    }

    #[test]
    fn the_example_config_s_section_parses() {
        let text = include_str!("../../../deploy/config.example.toml");
        let c = BenchConfig::from_toml(text, Path::new("/etc/rocksteady")).unwrap();
        assert!(c.profile("quick").is_some());
        assert_eq!(c.default_profile, EDGE);
    }
}
