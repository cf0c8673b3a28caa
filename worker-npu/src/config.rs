//! The NPU worker's settings for one load, validated from the supervisor's
//! `Load` (model path, `Profile`, `NpuOptions`), and the per-request limits.

use std::path::PathBuf;

use proto::chat::GenParams;
use proto::worker::{BackendOptions, Load};
use thiserror::Error;

use crate::abi::{AbiSetting, BadAbiSetting};
use crate::chat::{Family, Overrides};
use crate::ffi::InitParams;

/// Where the runtime library is installed by default.
pub const DEFAULT_RUNTIME_PATH: &str = "/usr/lib/librkllmrt.so";

/// The RK3588's four Cortex-A76 cores (CPUs 4-7): the runtime's CPU work
/// belongs there, and the CPU worker should be given other cores.
pub const DEFAULT_CPU_MASK: u32 = 0xF0;

/// Settings that cannot work, caught before anything is loaded.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The Load is for another backend.
    #[error("this is the NPU worker, but the load carries settings for another backend")]
    WrongBackend,
    /// The `abi` setting is unknown.
    #[error(transparent)]
    Abi(#[from] BadAbiSetting),
    /// A number out of range.
    #[error("{what} is {value}, {expected}")]
    OutOfRange {
        /// The setting.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        expected: &'static str,
    },
    /// An empty path.
    #[error("{what} is empty")]
    EmptyPath {
        /// The setting.
        what: &'static str,
    },
}

/// Everything a load needs.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The `.rkllm` file.
    pub model_path: PathBuf,
    /// `librkllmrt.so`.
    pub runtime_path: PathBuf,
    /// Which layout.
    pub abi: AbiSetting,
    /// Profile name, for Ready and logs.
    pub profile: String,
    /// `rkllm_init` parameters.
    pub init: InitParams,
    /// Chat format of the model.
    pub family: Family,
    /// The operator's template settings.
    pub overrides: Overrides,
    /// Where the system prompt's prompt-cache file goes; `None` = none.
    pub prompt_cache_dir: Option<PathBuf>,
}

impl LoadSettings {
    /// Validates a `Load`.
    ///
    /// # Errors
    /// [`SettingsError`] naming the unusable setting.
    pub fn from_load(load: &Load) -> Result<Self, SettingsError> {
        let BackendOptions::Npu(npu) = &load.backend else {
            return Err(SettingsError::WrongBackend);
        };
        if load.model_path.trim().is_empty() {
            return Err(SettingsError::EmptyPath { what: "model_path" });
        }
        let runtime_path = if npu.runtime_path.trim().is_empty() {
            PathBuf::from(DEFAULT_RUNTIME_PATH)
        } else {
            PathBuf::from(&npu.runtime_path)
        };
        let abi: AbiSetting = npu.abi.parse()?;
        let context = load.profile.context_size;
        let max_context_len =
            i32::try_from(context)
                .ok()
                .filter(|c| *c >= 16)
                .ok_or(SettingsError::OutOfRange {
                    what: "context_size",
                    value: u64::from(context),
                    expected: "expected 16 to 2^31-1 tokens",
                })?;
        let max_new_tokens = i32::try_from(load.profile.max_new_tokens)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or(SettingsError::OutOfRange {
                what: "max_new_tokens",
                value: u64::from(load.profile.max_new_tokens),
                expected: "expected at least 1",
            })?;
        // 0 means "not set": the A76 cores.
        let mask = if npu.enabled_cpus_mask == 0 {
            DEFAULT_CPU_MASK
        } else {
            npu.enabled_cpus_mask
        };
        if mask > 0xFF {
            return Err(SettingsError::OutOfRange {
                what: "enabled_cpus_mask",
                value: u64::from(mask),
                expected: "expected bits for CPUs 0-7 only (0x01-0xFF)",
            });
        }
        let sampling = InitSampling::from(GenParams::default());
        let file_name = std::path::Path::new(&load.model_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            model_path: PathBuf::from(&load.model_path),
            runtime_path,
            abi,
            profile: load.profile.name.clone(),
            init: InitParams {
                model_path: PathBuf::from(&load.model_path),
                max_context_len,
                max_new_tokens,
                top_k: sampling.top_k,
                top_p: sampling.top_p,
                temperature: sampling.temperature,
                repeat_penalty: sampling.repeat_penalty,
                base_domain_id: npu.base_domain_id,
                enabled_cpus_mask: mask,
                // Not a prompt batch (unlike llama.cpp's): the number of
                // sequences decoded together. A worker runs one generation
                // at a time, and more sequences cost NPU memory for nothing.
                n_batch: 1,
                embed_flash: true,
            },
            family: Family::detect(&file_name),
            overrides: Overrides {
                system_prompt: npu.system_prompt.clone(),
                prompt_prefix: npu.prompt_prefix.clone(),
                prompt_postfix: npu.prompt_postfix.clone(),
            },
            prompt_cache_dir: npu
                .prompt_cache_dir
                .as_deref()
                .filter(|d| !d.trim().is_empty())
                .map(PathBuf::from),
        })
    }

    /// The context window in tokens.
    pub fn context_size(&self) -> u32 {
        self.init.max_context_len.unsigned_abs()
    }
}

/// Sampling as `rkllm_init` takes it. The runtime fixes sampling at init
/// (1.3.0's per-run sampling struct is not part of the interface this
/// worker binds), so the protocol's defaults are applied at load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitSampling {
    /// Top-k (1 = greedy).
    pub top_k: i32,
    /// Nucleus.
    pub top_p: f32,
    /// Temperature.
    pub temperature: f32,
    /// Repetition penalty.
    pub repeat_penalty: f32,
}

impl From<GenParams> for InitSampling {
    fn from(p: GenParams) -> Self {
        if p.temperature <= 0.0 {
            // Greedy: the runtime has no temperature-0 mode, top_k = 1 is the same thing.
            Self {
                top_k: 1,
                top_p: 1.0,
                temperature: 1.0,
                repeat_penalty: p.repeat_penalty,
            }
        } else {
            Self {
                top_k: i32::try_from(p.top_k).unwrap_or(i32::MAX),
                top_p: p.top_p,
                temperature: p.temperature,
                repeat_penalty: p.repeat_penalty,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::worker::{KvCacheType, NpuOptions, Profile};

    fn load(mask: u32, abi: &str, ctx: u32) -> Load {
        Load {
            model_path: "/m/Qwen2.5-1.5B_w8a8_rk3588.rkllm".into(),
            profile: Profile {
                name: "default".into(),
                context_size: ctx,
                batch_size: 512,
                threads: 0,
                kv_cache_type: KvCacheType::F16,
                flash_attention: false,
                max_new_tokens: 256,
            },
            backend: BackendOptions::Npu(NpuOptions {
                runtime_path: String::new(),
                abi: abi.into(),
                enabled_cpus_mask: mask,
                base_domain_id: 1,
                system_prompt: None,
                prompt_prefix: None,
                prompt_postfix: None,
                prompt_cache_dir: Some("/var/lib/rocksteady/prompt-cache".into()),
            }),
        }
    }

    #[test]
    fn settings_come_from_the_load() {
        let s = LoadSettings::from_load(&load(0x0F, "1.3", 2048)).unwrap();
        assert_eq!(s.init.enabled_cpus_mask, 0x0F);
        assert_eq!(s.init.max_context_len, 2048);
        assert_eq!(s.init.max_new_tokens, 256);
        assert_eq!(s.init.base_domain_id, 1);
        assert_eq!(
            s.init.n_batch, 1,
            "the profile's prompt batch is not RKLLM's n_batch"
        );
        assert_eq!(s.runtime_path, PathBuf::from(DEFAULT_RUNTIME_PATH));
        assert_eq!(s.family, Family::ChatMl);
        assert_eq!(s.abi, AbiSetting::Fixed(crate::abi::Abi::V1_3));
        assert_eq!(
            s.prompt_cache_dir,
            Some(PathBuf::from("/var/lib/rocksteady/prompt-cache"))
        );
    }

    #[test]
    fn unset_mask_means_the_big_cores() {
        let s = LoadSettings::from_load(&load(0, "auto", 2048)).unwrap();
        assert_eq!(s.init.enabled_cpus_mask, DEFAULT_CPU_MASK);
    }

    #[test]
    fn unusable_settings_are_refused() {
        assert!(matches!(
            LoadSettings::from_load(&load(0x1FF, "auto", 2048)),
            Err(SettingsError::OutOfRange {
                what: "enabled_cpus_mask",
                ..
            })
        ));
        assert!(matches!(
            LoadSettings::from_load(&load(0xF0, "2.0", 2048)),
            Err(SettingsError::Abi(_))
        ));
        assert!(matches!(
            LoadSettings::from_load(&load(0xF0, "auto", 0)),
            Err(SettingsError::OutOfRange {
                what: "context_size",
                ..
            })
        ));
    }

    #[test]
    fn greedy_becomes_top_k_one() {
        let s = InitSampling::from(GenParams::default());
        assert_eq!(s.top_k, 1);
        let s = InitSampling::from(GenParams {
            temperature: 0.7,
            top_k: 40,
            ..GenParams::default()
        });
        assert_eq!((s.top_k, s.temperature), (40, 0.7));
    }
}
