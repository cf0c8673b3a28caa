//! The prompt-cache file of the system prompt: saved by the runtime at the
//! first load, loaded at every later one, saved again when the runtime
//! refuses it or the template changes, and never in the way of an answer.
//! The fake runtime models the cache (a run after the load prefills only
//! what follows the saved prompt), so what the runtime reused is checked,
//! not only which functions were called.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::chat::{ChatMessage, Role};
use proto::worker::{
    BackendOptions, CacheReport, Generate, Load, PromptCacheFile, SupervisorToWorker,
    WorkerToSupervisor,
};

use crate::support::{ask, unescape, Fixture, Worker, FAKE_1_2, FAKE_1_3};

fn with_cache(mut load: Load, dir: &Path, system_prompt: Option<&str>) -> Load {
    let BackendOptions::Npu(npu) = &mut load.backend else {
        unreachable!()
    };
    npu.prompt_cache_dir = Some(dir.to_string_lossy().into_owned());
    npu.system_prompt = system_prompt.map(str::to_owned);
    load
}

async fn start(fx: &Fixture, load: Load) -> Worker {
    let mut w = fx.spawn().await;
    let answer = w.load(load).await;
    assert!(matches!(answer, WorkerToSupervisor::Ready(_)), "{answer:?}");
    w
}

async fn stop(mut w: Worker) {
    w.send(SupervisorToWorker::Shutdown).await;
    assert!(w.wait(Duration::from_secs(20)).await.success());
}

/// Runs `g`; returns the answer, the cache report of its Done, and what the
/// runtime recorded for the run.
async fn turn(fx: &Fixture, w: &mut Worker, g: Generate) -> (String, CacheReport, Run) {
    let id = g.request_id;
    w.send(SupervisorToWorker::Generate(g)).await;
    let (pieces, end) = w.collect(id).await;
    let WorkerToSupervisor::Done(done) = end else {
        panic!("{end:?}")
    };
    (pieces.concat(), done.cache, Run::last(fx))
}

/// What the fake runtime recorded about the last run.
struct Run {
    full_prompt: String,
    prompt_cache_chars: usize,
    history_chars: usize,
}

impl Run {
    fn last(fx: &Fixture) -> Self {
        let num = |k: &str| fx.recorded(k).unwrap().parse::<usize>().unwrap();
        Self {
            full_prompt: unescape(&fx.recorded("run_full_prompt").unwrap()),
            prompt_cache_chars: num("run_prompt_cache_chars"),
            history_chars: num("run_history_chars"),
        }
    }
}

/// The record since the last process started (its first line is the pid).
fn since_start(fx: &Fixture) -> Vec<(String, String)> {
    let all = fx.record();
    let from = all.iter().rposition(|(k, _)| k == "pid").unwrap_or(0);
    all[from..].to_vec()
}

fn count(lines: &[(String, String)], key: &str) -> usize {
    lines.iter().filter(|(k, _)| k == key).count()
}

/// The `.prompt-cache` files in `dir`, by name.
fn cache_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".prompt-cache"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn used(cache: &CacheReport) -> &PromptCacheFile {
    cache.prompt_cache.as_ref().expect("a prompt cache in use")
}

#[tokio::test]
async fn the_system_prompt_is_saved_once_and_loaded_at_every_later_start() {
    for runtime in [FAKE_1_2, FAKE_1_3] {
        let fx = Fixture::new();
        let dir = fx.dir.path().join("state/prompt-cache");
        let load = with_cache(fx.load(runtime, "auto"), &dir, None);

        // First start: the runtime saves the file, the worker loads it.
        let mut w = start(&fx, load.clone()).await;
        let first = since_start(&fx);
        assert_eq!(count(&first, "prompt_cache_save"), 1, "{first:?}");
        let files = cache_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let path = dir.join(&files[0]);
        assert!(files[0].starts_with("Qwen2.5-0.5B-Instruct_w8a8_rk3588."));
        assert_eq!(
            fx.recorded("prompt_cache_load").map(PathBuf::from),
            Some(path.clone())
        );
        let (answer, cache, run) = turn(&fx, &mut w, ask(1, "What is the capital?")).await;
        assert!(!answer.is_empty());
        let file = used(&cache);
        assert_eq!(PathBuf::from(&file.path), path);
        assert!(file.built);
        // 1.3.0 reports the saving run's figures (it ends at its own cap);
        // 1.2.x is aborted after one token and reports none.
        assert_eq!(file.tokens.is_some(), runtime == FAKE_1_3, "{file:?}");
        // The runtime prefilled only what follows the system prompt and the
        // user turn's opening: everything before the question was reused.
        let question_at = run.full_prompt.find("What is the capital?").unwrap();
        assert!(question_at > 0);
        assert_eq!(run.prompt_cache_chars, question_at, "{}", run.full_prompt);
        assert!(run.full_prompt.starts_with("<|im_start|>system\n"));
        stop(w).await;

        // Every later start loads the file without saving it again.
        let mut w = start(&fx, load.clone()).await;
        let again = since_start(&fx);
        assert_eq!(count(&again, "prompt_cache_save"), 0, "{again:?}");
        assert_eq!(count(&again, "prompt_cache_refused"), 0, "{again:?}");
        assert_eq!(count(&again, "prompt_cache_load"), 1, "{again:?}");
        let (_, cache, run) = turn(&fx, &mut w, ask(2, "And the largest city?")).await;
        let again_file = used(&cache);
        assert_eq!(again_file.path, file.path);
        assert!(!again_file.built);
        assert_eq!(again_file.tokens, file.tokens, "the token count is kept");
        assert_eq!(
            run.prompt_cache_chars,
            run.full_prompt.find("And the largest city?").unwrap()
        );

        // A conversation continued in the runtime's history has its start
        // there already; the prompt cache is not what it reuses.
        let mut chat = vec![ChatMessage::new(Role::User, "One")];
        let keyed = |id, messages| Generate {
            conversation: Some("c".into()),
            messages,
            ..ask(id, "")
        };
        let (a1, _, _) = turn(&fx, &mut w, keyed(3, chat.clone())).await;
        chat.push(ChatMessage::new(Role::Assistant, a1));
        chat.push(ChatMessage::new(Role::User, "Two"));
        let (_, cache, run) = turn(&fx, &mut w, keyed(4, chat)).await;
        assert!(run.history_chars > 0);
        assert_eq!(run.prompt_cache_chars, 0);
        assert_eq!(cache.hits, 1);
        assert!(cache.prompt_cache.is_some());
        stop(w).await;
    }
}

#[tokio::test]
async fn a_new_system_prompt_gets_its_own_file_and_a_refused_file_is_saved_again() {
    let fx = Fixture::new();
    let dir = fx.dir.path().join("prompt-cache");
    let w = start(&fx, with_cache(fx.load(FAKE_1_3, "auto"), &dir, None)).await;
    stop(w).await;
    let default_file = cache_files(&dir);
    assert_eq!(default_file.len(), 1);

    // Another system prompt: a file of its own; the old one stays for a
    // switch back.
    let terse = with_cache(fx.load(FAKE_1_3, "auto"), &dir, Some("Answer tersely."));
    let mut w = start(&fx, terse.clone()).await;
    assert_eq!(count(&since_start(&fx), "prompt_cache_save"), 1);
    let files = cache_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let (_, cache, run) = turn(&fx, &mut w, ask(1, "Why?")).await;
    assert!(run.full_prompt.contains("Answer tersely."));
    assert_eq!(
        run.prompt_cache_chars,
        run.full_prompt.find("Why?").unwrap()
    );
    let terse_path = used(&cache).path.clone();
    assert!(!default_file
        .iter()
        .any(|f| terse_path.ends_with(f.as_str())));
    stop(w).await;

    // A file the runtime does not accept (here: damaged) is saved again,
    // and the request is served as if nothing happened.
    std::fs::write(&terse_path, b"not a prompt cache").unwrap();
    let mut w = start(&fx, terse.clone()).await;
    let lines = since_start(&fx);
    assert_eq!(count(&lines, "prompt_cache_refused"), 1, "{lines:?}");
    assert_eq!(count(&lines, "prompt_cache_save"), 1, "{lines:?}");
    let (answer, cache, run) = turn(&fx, &mut w, ask(2, "Why not?")).await;
    assert!(!answer.is_empty());
    assert!(used(&cache).built);
    assert_eq!(
        run.prompt_cache_chars,
        run.full_prompt.find("Why not?").unwrap()
    );
    assert!(
        fx.log_text()
            .contains("refused the prompt-cache file; saving it again"),
        "{}",
        fx.log_text()
    );
    stop(w).await;
}

#[tokio::test]
async fn without_a_usable_prompt_cache_the_worker_serves_as_before() {
    // A directory that cannot be made (its parent is a file), and a runtime
    // that writes nothing when asked to save: both serve without a cache,
    // with a warning that says why.
    let fx = Fixture::new();
    let blocked = fx.model.join("prompt-cache");
    let mut w = start(&fx, with_cache(fx.load(FAKE_1_2, "auto"), &blocked, None)).await;
    let (answer, cache, run) = turn(&fx, &mut w, ask(1, "Hello?")).await;
    assert!(!answer.is_empty());
    assert_eq!(cache.prompt_cache, None);
    assert_eq!(run.prompt_cache_chars, 0);
    assert!(
        fx.log_text()
            .contains("cannot use the prompt-cache directory"),
        "{}",
        fx.log_text()
    );
    stop(w).await;

    let fx = Fixture::new().env("FAKE_RKLLM_PROMPT_CACHE", "no_save");
    let dir = fx.dir.path().join("prompt-cache");
    let mut w = start(&fx, with_cache(fx.load(FAKE_1_3, "auto"), &dir, None)).await;
    let (answer, cache, _) = turn(&fx, &mut w, ask(1, "Hello?")).await;
    assert!(!answer.is_empty());
    assert_eq!(cache.prompt_cache, None);
    assert_eq!(cache_files(&dir), Vec::<String>::new());
    assert!(
        fx.log_text().contains("did not save a prompt cache"),
        "{}",
        fx.log_text()
    );
    stop(w).await;
}
