//! The prompt-cache file of the configured system prompt (RKLLM 1.2.1 and
//! later): the runtime saves the KV of one prompt to a file
//! (`RKLLMPromptCacheParam` on a run) and loads it back
//! (`rkllm_load_prompt_cache`), after which a run whose prompt starts with
//! the saved one does not prefill that part again.
//!
//! The worker saves it once, from a run of the slot's template around an
//! empty user turn (the system prompt and the user turn's opening, which
//! every request without a system message of its own starts with), and
//! loads it at every later start. The file name carries a fingerprint of
//! everything the KV depends on (the model file, the runtime, the context
//! size, the template), so a changed system prompt, model or runtime gets a
//! file of its own instead of a wrong cache; old files of the model are
//! removed, a few kept for profile switches. A file the runtime refuses is
//! saved again; a directory that cannot be written leaves the worker
//! serving without the cache. Nothing here is needed for an answer.
//!
//! The naming and the clean-up are pure; [`prepare`] carries them out.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use proto::worker::PromptCacheFile;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::chat::RenderedPrompt;
use crate::engine::Engine;

/// The suffix of prompt-cache files.
pub const SUFFIX: &str = ".prompt-cache";
/// The suffix of the file beside one that records its token count.
const TOKENS_SUFFIX: &str = ".prompt-cache.tokens";
/// Files of one model kept besides the one in use (one per profile the
/// slot switches between, and a previous system prompt to go back to).
pub const KEEP: usize = 3;

/// Why the worker serves without a prompt cache.
#[derive(Debug, Error)]
pub enum PromptCacheError {
    /// The runtime lacks the functions.
    #[error("the NPU runtime does not export rkllm_load_prompt_cache")]
    Unsupported,
    /// The directory cannot be made or written.
    #[error("cannot use the prompt-cache directory {}: {source}", .dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The run that saves the file failed or left no file.
    #[error("the NPU runtime did not save a prompt cache to {}: {reason}", .path.display())]
    NotSaved {
        /// The file asked for.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The runtime refused a file it had just saved.
    #[error("the NPU runtime refused the prompt cache it saved to {}: {reason}", .path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// What it said.
        reason: String,
    },
}

/// Everything the saved KV depends on.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The model file.
    pub model: &'a Path,
    /// Its size in bytes.
    pub model_size: u64,
    /// Its modification time, in seconds since the epoch (0 when unknown).
    pub model_mtime: u64,
    /// The runtime: its layout and version.
    pub runtime: &'a str,
    /// The context size the model was initialised with.
    pub context: u32,
    /// The prompt the file is saved from: the template around an empty
    /// user turn (which holds the system text in families without a
    /// system role).
    pub prompt: &'a RenderedPrompt,
}

/// The file name for `id`: the model's file stem and a fingerprint.
pub fn file_name(id: &Identity<'_>) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields, so that no two identities hash the same text.
    for field in [
        id.model.as_os_str().as_encoded_bytes(),
        &id.model_size.to_le_bytes(),
        &id.model_mtime.to_le_bytes(),
        id.runtime.as_bytes(),
        &id.context.to_le_bytes(),
        id.prompt.template.system_prompt.as_bytes(),
        id.prompt.template.prompt_prefix.as_bytes(),
        id.prompt.input.as_bytes(),
        id.prompt.template.prompt_postfix.as_bytes(),
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    let digest = h.finalize();
    let hex = digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
    format!("{}.{hex}{SUFFIX}", stem(id.model))
}

/// The model file's stem, as file names start.
fn stem(model: &Path) -> String {
    model
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
}

/// Of the files in the directory (`name`, modification time), those to
/// remove: the same model's other prompt-cache files beyond the `KEEP` most
/// recent, their token notes, and unfinished saves of the model. `current`
/// is the file in use.
pub fn stale(entries: &[(String, SystemTime)], model: &Path, current: &str) -> Vec<String> {
    let stem = stem(model);
    let ours = |name: &str| {
        name.strip_prefix(&stem)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| {
                // `<hash>.prompt-cache`: a hex fingerprint, nothing else.
                rest.strip_suffix(SUFFIX)
                    .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
            })
    };
    let mut files: Vec<&(String, SystemTime)> = entries
        .iter()
        .filter(|(n, _)| n != current && ours(n))
        .collect();
    files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out: Vec<String> = Vec::new();
    for (name, _) in files.into_iter().skip(KEEP) {
        out.push(name.clone());
        out.push(format!("{}{TOKENS_SUFFIX}", name.trim_end_matches(SUFFIX)));
    }
    let tmp_prefix = format!(".{stem}.");
    out.extend(
        entries
            .iter()
            .filter(|(n, _)| {
                n.starts_with(&tmp_prefix) && Path::new(n).extension().is_some_and(|e| e == "tmp")
            })
            .map(|(n, _)| n.clone()),
    );
    out
}

/// Loads the prompt-cache file for `id` in `dir`, saving it first when
/// there is none (or the runtime refuses the one there). Removes stale
/// files of the model.
///
/// # Errors
/// [`PromptCacheError`]: the worker then serves without the cache.
pub fn prepare(
    engine: &Engine,
    dir: &Path,
    id: &Identity<'_>,
) -> Result<PromptCacheFile, PromptCacheError> {
    if !engine.has_prompt_cache() {
        return Err(PromptCacheError::Unsupported);
    }
    let directory = |source| PromptCacheError::Directory {
        dir: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(directory)?;
    let name = file_name(id);
    let path = dir.join(&name);
    let tokens_path = dir.join(format!("{}{TOKENS_SUFFIX}", name.trim_end_matches(SUFFIX)));
    remove_stale(dir, id.model, &name);

    if path.is_file() {
        match engine.load_prompt_cache(&path) {
            Ok(()) => {
                let tokens = fs::read_to_string(&tokens_path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                return Ok(PromptCacheFile {
                    path: path.to_string_lossy().into_owned(),
                    tokens,
                    built: false,
                });
            }
            Err(reason) => {
                tracing::warn!(
                    file = %path.display(),
                    %reason,
                    "the NPU runtime refused the prompt-cache file; saving it again"
                );
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(&tokens_path);
            }
        }
    }

    // Saved under a temporary name and renamed: a worker killed while the
    // runtime writes leaves no half file under the name the next one loads.
    let tmp = dir.join(format!(".{}.{}.tmp", name, std::process::id()));
    let saved = engine.save_prompt_cache(id.prompt, &tmp);
    let not_saved = |reason: String| PromptCacheError::NotSaved {
        path: path.clone(),
        reason,
    };
    let tokens = match saved {
        Ok(tokens) => tokens,
        Err(reason) => {
            let _ = fs::remove_file(&tmp);
            return Err(not_saved(reason));
        }
    };
    match fs::metadata(&tmp) {
        Ok(m) if m.len() > 0 => {}
        Ok(_) => {
            let _ = fs::remove_file(&tmp);
            return Err(not_saved("the file it wrote is empty".into()));
        }
        Err(e) => return Err(not_saved(format!("no file was written ({e})"))),
    }
    fs::rename(&tmp, &path).map_err(directory)?;
    if let Some(t) = tokens {
        let _ = fs::write(&tokens_path, format!("{t}\n"));
    }
    engine
        .load_prompt_cache(&path)
        .map_err(|reason| PromptCacheError::Refused {
            path: path.clone(),
            reason,
        })?;
    Ok(PromptCacheFile {
        path: path.to_string_lossy().into_owned(),
        tokens,
        built: true,
    })
}

/// Removes what [`stale`] names; a file that cannot be removed is left.
fn remove_stale(dir: &Path, model: &Path, current: &str) {
    let Ok(read) = fs::read_dir(dir) else {
        return;
    };
    let entries: Vec<(String, SystemTime)> = read
        .filter_map(Result::ok)
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), modified))
        })
        .collect();
    for name in stale(&entries, model, current) {
        match fs::remove_file(dir.join(&name)) {
            Ok(()) => tracing::info!(file = %name, "removed an old prompt-cache file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %name, %e, "cannot remove an old prompt-cache file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::chat::ChatTemplate;

    fn prompt(system: &str, prefix: &str, input: &str) -> RenderedPrompt {
        RenderedPrompt {
            template: ChatTemplate {
                system_prompt: system.into(),
                prompt_prefix: prefix.into(),
                prompt_postfix: "</u><a>".into(),
            },
            input: input.into(),
        }
    }

    fn id<'a>(model: &'a Path, p: &'a RenderedPrompt) -> Identity<'a> {
        Identity {
            model,
            model_size: 1 << 30,
            model_mtime: 1_700_000_000,
            runtime: "1.3 (1.3.0)",
            context: 4096,
            prompt: p,
        }
    }

    #[test]
    fn the_name_changes_with_everything_the_kv_depends_on() {
        let model = Path::new("/m/Qwen2.5-1.5B_w8a8_rk3588.rkllm");
        let t = prompt("<sys>", "<u>", "");
        let base = file_name(&id(model, &t));
        assert!(base.starts_with("Qwen2.5-1.5B_w8a8_rk3588."), "{base}");
        assert!(base.ends_with(SUFFIX), "{base}");
        assert_eq!(base, file_name(&id(model, &t)), "stable");
        let other = prompt("<other sys>", "<u>", "");
        // A family without a system role carries the system text in the input.
        let in_input = prompt("", "<u>", "<sys>\n\n");
        let mut variants = vec![
            file_name(&id(model, &other)),
            file_name(&id(model, &in_input)),
            file_name(&id(Path::new("/n/Qwen2.5-1.5B_w8a8_rk3588.rkllm"), &t)),
        ];
        for change in 0..4 {
            let mut i = id(model, &t);
            match change {
                0 => i.model_size += 1,
                1 => i.model_mtime += 1,
                2 => i.runtime = "1.2 (1.2.3)",
                _ => i.context = 2048,
            }
            variants.push(file_name(&i));
        }
        for v in &variants {
            assert_ne!(v, &base);
        }
        // Fields cannot run into each other: "ab"+"c" is not "a"+"bc".
        let (t1, t2) = (prompt("ab", "c", ""), prompt("a", "bc", ""));
        assert_ne!(file_name(&id(model, &t1)), file_name(&id(model, &t2)));
    }

    #[test]
    fn old_files_of_the_model_go_beyond_the_few_kept_and_nothing_else() {
        let model = Path::new("/m/q.rkllm");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let entries: Vec<(String, SystemTime)> = vec![
            ("q.aaaa.prompt-cache".into(), at(1)),
            ("q.bbbb.prompt-cache".into(), at(2)),
            ("q.cccc.prompt-cache".into(), at(3)),
            ("q.dddd.prompt-cache".into(), at(4)),
            ("q.eeee.prompt-cache".into(), at(5)),
            ("q.ffff.prompt-cache".into(), at(0)), // the one in use, oldest
            // Another model's, one that only looks similar, and foreign files.
            ("r.0000.prompt-cache".into(), at(0)),
            ("q.x.y.prompt-cache".into(), at(0)),
            ("q.rkllm".into(), at(0)),
            ("notes.txt".into(), at(0)),
            // An unfinished save of this model, and of another.
            (".q.ffff.prompt-cache.123.tmp".into(), at(9)),
            (".r.0000.prompt-cache.7.tmp".into(), at(9)),
        ];
        let mut gone = stale(&entries, model, "q.ffff.prompt-cache");
        gone.sort();
        assert_eq!(
            gone,
            vec![
                ".q.ffff.prompt-cache.123.tmp",
                "q.aaaa.prompt-cache",
                "q.aaaa.prompt-cache.tokens",
                "q.bbbb.prompt-cache",
                "q.bbbb.prompt-cache.tokens",
            ]
        );
        // Few enough files: nothing but the unfinished save.
        assert_eq!(
            stale(&entries[3..], model, "q.ffff.prompt-cache"),
            vec![".q.ffff.prompt-cache.123.tmp"]
        );
    }
}
