//! The one module that talks to `librkllmrt.so`: loads it at run time, keeps
//! the layout-specific function pointers, and wraps the model handle, the
//! blocking run and the result callback in safe types.
//!
//! Everything `unsafe` in this crate is here (the rest of the crate denies
//! `unsafe_code`). The rules the safe layer relies on:
//! - function pointers are used only while the [`Runtime`] that owns the
//!   loaded library is alive ([`Model`] holds an `Arc` of it);
//! - every struct handed to the runtime is the [`raw`] layout of the ABI the
//!   runtime was opened with (asserted by the layout tests);
//! - strings and structs the runtime might keep a pointer to (model path,
//!   1.3.0 callback table) live as long as the [`Model`];
//! - at most one run per model at a time (a lock inside [`Model`]);
//! - the result callback never unwinds into C: its body runs in
//!   `catch_unwind`, and it always returns 0 (continue).

// The FFI boundary of the crate; see the module docs for the rules each
// `unsafe` block below relies on.
#![allow(unsafe_code)]

pub mod raw;

use std::ffi::{c_int, c_void, CStr, CString};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;

use crate::abi::Abi;

/// Errors of the FFI layer.
#[derive(Debug, Error)]
pub enum FfiError {
    /// `dlopen` failed (wrong architecture, missing dependency, not a library).
    #[error("cannot load the NPU runtime {path}: {source}")]
    Open {
        /// The library.
        path: PathBuf,
        /// What the dynamic loader said.
        #[source]
        source: libloading::Error,
    },
    /// A function of the chosen interface is missing.
    #[error("the NPU runtime {path} lacks {symbol}, which the {abi} interface needs: is the abi setting right for this release?")]
    Symbol {
        /// The library.
        path: PathBuf,
        /// The function.
        symbol: &'static str,
        /// The interface looked for.
        abi: Abi,
        /// What the dynamic loader said.
        #[source]
        source: libloading::Error,
    },
    /// A string for the runtime contains a NUL byte.
    #[error("{what} contains a NUL byte and cannot be passed to the NPU runtime")]
    Nul {
        /// Which string.
        what: &'static str,
    },
    /// A runtime function reported failure.
    #[error("{function} failed with code {code}")]
    Call {
        /// The function.
        function: &'static str,
        /// Its return value.
        code: i32,
    },
    /// A run was asked for while another run of the same model is in progress.
    #[error("a generation is already running on this model")]
    Busy,
    /// An optional function the runtime does not export.
    #[error("the NPU runtime does not export {function}")]
    Unsupported {
        /// The function.
        function: &'static str,
    },
}

/// Functions with the same signature in every supported release.
#[derive(Clone, Copy)]
struct Common {
    abort: raw::common::Abort,
    destroy: raw::common::Destroy,
    set_chat_template: raw::common::SetChatTemplate,
    clear_kv_cache: raw::common::ClearKvCache,
    /// Every supported release exports it; a runtime without it only goes
    /// without the prompt cache. (Its `rkllm_release_prompt_cache` is not
    /// needed: the cache goes with the model, and the worker keeps it for
    /// the model's life.)
    load_prompt_cache: Option<raw::common::LoadPromptCache>,
}

/// Functions whose signature depends on the layout.
#[derive(Clone, Copy)]
enum Entry {
    V1_2 {
        create_default_param: raw::v1_2::CreateDefaultParam,
        init: raw::v1_2::Init,
        run: raw::v1_2::Run,
    },
    V1_3 {
        create_default_param: raw::v1_3::CreateDefaultParam,
        init: raw::v1_3::Init,
        run: raw::v1_3::Run,
    },
}

/// A loaded `librkllmrt.so` with the functions of one layout.
pub struct Runtime {
    path: PathBuf,
    abi: Abi,
    common: Common,
    entry: Entry,
    // Declared last so it is dropped last; the pointers above are only valid
    // while it is loaded.
    _library: libloading::Library,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("path", &self.path)
            .field("abi", &self.abi)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Loads the library at `path` and resolves the functions of `abi`.
    ///
    /// The library is bound immediately (`RTLD_NOW`), so a missing
    /// dependency fails here and not at the first call, and stays mapped
    /// until the process ends (`RTLD_NODELETE`).
    ///
    /// # Errors
    /// [`FfiError::Open`] or [`FfiError::Symbol`].
    pub fn open(path: &Path, abi: Abi) -> Result<Arc<Self>, FfiError> {
        // RTLD_NODELETE: the runtime is never unloaded (a reload opens it
        // again): its worker threads and static destructors do not survive
        // being unmapped under them.
        let flags =
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | libc::RTLD_NODELETE;
        // SAFETY: loading runs the library's initialisers. The library is the
        // vendor runtime the operator configured for this worker, which is
        // exactly the code this process exists to run; nothing else in the
        // process depends on its initialisers not running.
        let library: libloading::Library =
            unsafe { libloading::os::unix::Library::open(Some(path), flags) }
                .map_err(|source| FfiError::Open {
                    path: path.to_owned(),
                    source,
                })?
                .into();
        let lookup = Lookup {
            library: &library,
            path,
            abi,
        };
        // SAFETY: each type is the function pointer type `rkllm.h` declares
        // for that symbol (identical in both layouts, raw::common), and the
        // pointers are stored in the Runtime next to the library that keeps
        // them valid.
        let common = unsafe {
            Common {
                abort: lookup.get("rkllm_abort")?,
                destroy: lookup.get("rkllm_destroy")?,
                set_chat_template: lookup.get("rkllm_set_chat_template")?,
                clear_kv_cache: lookup.get("rkllm_clear_kv_cache")?,
                load_prompt_cache: lookup.get("rkllm_load_prompt_cache").ok(),
            }
        };
        // SAFETY: as above, with the types of the layout chosen by `abi`
        // (raw::v1_2 or raw::v1_3).
        let entry = unsafe {
            match abi {
                Abi::V1_2 => Entry::V1_2 {
                    create_default_param: lookup.get("rkllm_createDefaultParam")?,
                    init: lookup.get("rkllm_init")?,
                    run: lookup.get("rkllm_run")?,
                },
                Abi::V1_3 => Entry::V1_3 {
                    create_default_param: lookup.get("rkllm_createDefaultParam")?,
                    init: lookup.get("rkllm_init")?,
                    run: lookup.get("rkllm_run")?,
                },
            }
        };
        Ok(Arc::new(Self {
            path: path.to_owned(),
            abi,
            common,
            entry,
            _library: library,
        }))
    }

    /// The layout in use.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the runtime can load prompt-cache files.
    pub fn has_prompt_cache(&self) -> bool {
        self.common.load_prompt_cache.is_some()
    }
}

struct Lookup<'a> {
    library: &'a libloading::Library,
    path: &'a Path,
    abi: Abi,
}

impl Lookup<'_> {
    /// Copies the function pointer `name` out of the library.
    ///
    /// # Safety
    /// `T` must be the function pointer type the runtime defines for `name`,
    /// and the pointer must not be called after the library is unloaded.
    unsafe fn get<T: Copy>(&self, name: &'static str) -> Result<T, FfiError> {
        // SAFETY: the caller guarantees `T` matches the symbol's type.
        let symbol = unsafe { self.library.get::<T>(name.as_bytes()) };
        symbol.map(|s| *s).map_err(|source| FfiError::Symbol {
            path: self.path.to_owned(),
            symbol: name,
            abi: self.abi,
            source,
        })
    }
}

/// The `rkllm_init` settings this worker uses; the rest keep the runtime's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct InitParams {
    /// The `.rkllm` file.
    pub model_path: PathBuf,
    /// Context window in tokens.
    pub max_context_len: i32,
    /// Cap on generated tokens per run.
    pub max_new_tokens: i32,
    /// Top-k sampling (1 = greedy).
    pub top_k: i32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Temperature.
    pub temperature: f32,
    /// Repetition penalty.
    pub repeat_penalty: f32,
    /// NPU memory domain.
    pub base_domain_id: i32,
    /// CPU cores the runtime may use (bit n = CPU n).
    pub enabled_cpus_mask: u32,
    /// Sequences decoded together (batched inference); 1 for one chat at a time.
    pub n_batch: u8,
    /// Keep the embedding table in flash (saves RAM).
    pub embed_flash: bool,
}

impl InitParams {
    fn fill_extend(&self, ext: &mut raw::RKLLMExtendParam) {
        ext.base_domain_id = self.base_domain_id;
        ext.embed_flash = i8::from(self.embed_flash);
        // At most 32 bits set, so the count fits.
        ext.enabled_cpus_num = i8::try_from(self.enabled_cpus_mask.count_ones()).unwrap_or(i8::MAX);
        ext.enabled_cpus_mask = self.enabled_cpus_mask;
        ext.n_batch = self.n_batch;
        ext.use_cross_attn = 0;
    }
}

/// What `rkllm_init` did: its return code, and the model when it produced a handle.
pub struct InitOutcome {
    /// The return value (0 = success as far as the runtime admits).
    pub code: i32,
    /// The model, when the runtime returned a handle.
    pub model: Option<Model>,
}

/// What the runtime reported through the result callback, decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunEvent<'a> {
    /// A piece of text. `waiting` is the runtime saying the bytes end inside
    /// a UTF-8 sequence (`RKLLM_RUN_WAITING`).
    Text {
        /// The bytes, possibly an incomplete UTF-8 sequence.
        bytes: &'a [u8],
        /// `RKLLM_RUN_WAITING`.
        waiting: bool,
    },
    /// `RKLLM_RUN_FINISH`, with the runtime's figures.
    Finish(raw::RKLLMPerfStat),
    /// `RKLLM_RUN_ERROR`.
    Error,
    /// A state this worker does not know.
    Unknown(i32),
}

/// Receives the callbacks of the run in progress. Called on the runtime's
/// thread: implementations must not block for long.
pub trait RunSink: Send + Sync {
    /// One callback.
    fn on_event(&self, event: RunEvent<'_>);
    /// `on_event` panicked; the panic was stopped at the FFI boundary.
    fn on_panic(&self);
}

/// The sink of the run in progress. A process-wide slot rather than the
/// callback's `userdata`, because 1.3.0 has two user data pointers (the one
/// given to `rkllm_init` and the one given to `rkllm_run`) and which one the
/// callback receives is not documented; one model and one run per process
/// make a single slot sufficient.
static ACTIVE_SINK: Mutex<Option<Arc<dyn RunSink>>> = Mutex::new(None);

fn active_sink() -> Option<Arc<dyn RunSink>> {
    ACTIVE_SINK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn set_active_sink(sink: Option<Arc<dyn RunSink>>) {
    *ACTIVE_SINK.lock().unwrap_or_else(PoisonError::into_inner) = sink;
}

/// The result callback given to the runtime.
///
/// # Safety
/// Called by the runtime only, with `result` null or pointing to an
/// `RKLLMResult` valid for the duration of the call, whose `text` is null or
/// a NUL-terminated string.
unsafe extern "C" fn on_result(
    result: *mut raw::RKLLMResult,
    _userdata: *mut c_void,
    state: c_int,
) -> c_int {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let Some(sink) = active_sink() else {
            // A callback after the run returned, or before it started: nobody to tell.
            return;
        };
        // SAFETY: the runtime's contract, restated in this function's # Safety.
        let result = unsafe { result.as_ref() };
        let text = |r: Option<&raw::RKLLMResult>| -> &[u8] {
            match r {
                // SAFETY: `text` is null or NUL-terminated and lives for the call.
                Some(r) if !r.text.is_null() => unsafe { CStr::from_ptr(r.text) }.to_bytes(),
                _ => &[],
            }
        };
        let event = match state {
            raw::RKLLM_RUN_NORMAL => RunEvent::Text {
                bytes: text(result),
                waiting: false,
            },
            raw::RKLLM_RUN_WAITING => RunEvent::Text {
                bytes: text(result),
                waiting: true,
            },
            raw::RKLLM_RUN_FINISH => RunEvent::Finish(result.map(|r| r.perf).unwrap_or_default()),
            raw::RKLLM_RUN_ERROR => RunEvent::Error,
            other => RunEvent::Unknown(other),
        };
        sink.on_event(event);
    }));
    if outcome.is_err() {
        // Reporting must not unwind either; if even that panics, the run's
        // end (or the supervisor's stall timeout) still ends the request.
        let _ = panic::catch_unwind(|| {
            if let Some(sink) = active_sink() {
                sink.on_panic();
            }
        });
    }
    // Always "continue": 1 would pause and keep the KV cache (FINISH never
    // comes), and the worker stops runs with rkllm_abort instead.
    0
}

/// A model loaded by `rkllm_init`. Destroyed (`rkllm_destroy`) on drop.
pub struct Model {
    handle: NonNull<c_void>,
    runtime: Arc<Runtime>,
    /// One run (or template change) at a time.
    run_lock: Mutex<()>,
    // The runtime may keep these pointers after rkllm_init returns.
    _model_path: CString,
    _callback: Option<Box<raw::v1_3::RKLLMCallback>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("handle", &self.handle)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

// SAFETY: the handle is an opaque pointer owned by the runtime. The runtime is
// built to be driven from other threads than the one that created the model:
// rkllm_run blocks one thread while rkllm_abort is called from another (its
// documented use), and the runtime calls back on its own threads. Runs and
// template changes are serialised by `run_lock`; destroy happens in Drop,
// i.e. with exclusive ownership, after every run borrowing the model ended.
unsafe impl Send for Model {}
// SAFETY: see Send; the only methods callable concurrently through `&Model`
// are `abort` (meant to be concurrent with a run) and the lock-guarded ones.
unsafe impl Sync for Model {}

impl Model {
    /// Calls `rkllm_init` with `params`. The runtime logs on stderr while this
    /// runs; the caller captures that (see `capture`).
    ///
    /// # Errors
    /// [`FfiError::Nul`] when the model path has a NUL byte. A failure of the
    /// runtime itself is reported in [`InitOutcome::code`], not as an error,
    /// because only the runtime's log can say what it means.
    pub fn init(runtime: &Arc<Runtime>, params: &InitParams) -> Result<InitOutcome, FfiError> {
        let model_path =
            CString::new(params.model_path.as_os_str().as_encoded_bytes()).map_err(|_| {
                FfiError::Nul {
                    what: "the model path",
                }
            })?;
        let mut handle: raw::LLMHandle = ptr::null_mut();
        let mut callback_table = None;
        let code = match runtime.entry {
            Entry::V1_2 {
                create_default_param,
                init,
                ..
            } => {
                // SAFETY: a function of the loaded runtime with its declared
                // signature (no arguments, struct returned by value).
                let mut p = unsafe { create_default_param() };
                p.model_path = model_path.as_ptr();
                p.max_context_len = params.max_context_len;
                p.max_new_tokens = params.max_new_tokens;
                p.top_k = params.top_k;
                p.top_p = params.top_p;
                p.temperature = params.temperature;
                p.repeat_penalty = params.repeat_penalty;
                p.skip_special_token = true;
                p.is_async = false;
                p.img_start = ptr::null();
                p.img_end = ptr::null();
                p.img_content = ptr::null();
                params.fill_extend(&mut p.extend_param);
                // SAFETY: `handle` and `p` are valid for writes and reads of
                // the 1.2 layouts; the path string outlives the model (kept in
                // it); `on_result` has the callback's signature and never unwinds.
                unsafe { init(&raw mut handle, &raw mut p, Some(on_result)) }
            }
            Entry::V1_3 {
                create_default_param,
                init,
                ..
            } => {
                // SAFETY: as above.
                let mut p = unsafe { create_default_param() };
                p.model_path = model_path.as_ptr();
                p.max_context_len = params.max_context_len;
                p.max_new_tokens = params.max_new_tokens;
                p.top_k = params.top_k;
                p.top_p = params.top_p;
                p.temperature = params.temperature;
                p.repeat_penalty = params.repeat_penalty;
                p.skip_special_token = true;
                p.ignore_eos_token = false;
                p.is_async = false;
                params.fill_extend(&mut p.extend_param);
                let table = callback_table.insert(Box::new(raw::v1_3::RKLLMCallback {
                    result_callback: Some(on_result),
                    result_userdata: ptr::null_mut(),
                    tokenizer_callback: None,
                    tokenizer_userdata: ptr::null_mut(),
                    embed_callback: None,
                    embed_userdata: ptr::null_mut(),
                }));
                // SAFETY: as for 1.2, with the 1.3 layouts; the callback table
                // is boxed and kept in the model, so it outlives the handle.
                unsafe { init(&raw mut handle, &raw mut p, &raw mut **table) }
            }
        };
        let model = NonNull::new(handle).map(|handle| Model {
            handle,
            runtime: Arc::clone(runtime),
            run_lock: Mutex::new(()),
            _model_path: model_path,
            _callback: callback_table,
        });
        Ok(InitOutcome { code, model })
    }

    /// The runtime this model was loaded by.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Sets the chat template the runtime wraps each prompt in:
    /// `system_prompt + prompt_prefix + <prompt> + prompt_postfix`.
    ///
    /// # Errors
    /// [`FfiError::Nul`], [`FfiError::Busy`] during a run, or the runtime's failure code.
    pub fn set_chat_template(
        &self,
        system_prompt: &str,
        prompt_prefix: &str,
        prompt_postfix: &str,
    ) -> Result<(), FfiError> {
        let system = CString::new(system_prompt).map_err(|_| FfiError::Nul {
            what: "the system prompt",
        })?;
        let prefix = CString::new(prompt_prefix).map_err(|_| FfiError::Nul {
            what: "the prompt prefix",
        })?;
        let postfix = CString::new(prompt_postfix).map_err(|_| FfiError::Nul {
            what: "the prompt postfix",
        })?;
        let _guard = self.run_lock.try_lock().map_err(|_| FfiError::Busy)?;
        // SAFETY: a live handle of this runtime and three NUL-terminated
        // strings that outlive the call (the runtime copies them).
        let code = unsafe {
            (self.runtime.common.set_chat_template)(
                self.handle.as_ptr(),
                system.as_ptr(),
                prefix.as_ptr(),
                postfix.as_ptr(),
            )
        };
        if code == 0 {
            Ok(())
        } else {
            Err(FfiError::Call {
                function: "rkllm_set_chat_template",
                code,
            })
        }
    }

    /// Runs one generation of `prompt` and blocks until the runtime returns;
    /// the text arrives through `sink` meanwhile (on the runtime's threads).
    /// `max_new_tokens` > 0 caps this run where the layout allows it (1.3.0);
    /// elsewhere the init value applies. With `keep_history` the runtime
    /// keeps the KV cache of this run (prompt and answer) and the next run's
    /// prompt continues it; without, each prompt is a whole conversation.
    /// With `save_prompt_cache` the runtime saves this run's prompt KV to
    /// that file (for [`load_prompt_cache`](Self::load_prompt_cache)).
    ///
    /// Returns `rkllm_run`'s return code.
    ///
    /// # Errors
    /// [`FfiError::Nul`] when the prompt has a NUL byte, [`FfiError::Busy`]
    /// when a run is already in progress.
    pub fn run(
        &self,
        prompt: &str,
        max_new_tokens: i32,
        keep_history: bool,
        save_prompt_cache: Option<&Path>,
        sink: Arc<dyn RunSink>,
    ) -> Result<i32, FfiError> {
        let keep_history = c_int::from(keep_history);
        let prompt = CString::new(prompt).map_err(|_| FfiError::Nul { what: "the prompt" })?;
        let save_path = save_prompt_cache
            .map(|p| {
                CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| FfiError::Nul {
                    what: "the prompt-cache path",
                })
            })
            .transpose()?;
        // Lives until the run returns, like the path it points to.
        let mut cache_param = save_path.as_ref().map(|path| raw::RKLLMPromptCacheParam {
            save_prompt_cache: 1,
            prompt_cache_path: path.as_ptr(),
        });
        let cache_ptr = cache_param.as_mut().map_or(ptr::null_mut(), ptr::from_mut);
        let _guard = self.run_lock.try_lock().map_err(|_| FfiError::Busy)?;
        set_active_sink(Some(sink));
        let role = c"user";
        let code = match self.runtime.entry {
            Entry::V1_2 { run, .. } => {
                let mut input = raw::v1_2::RKLLMInput {
                    role: role.as_ptr(),
                    enable_thinking: false,
                    input_type: raw::RKLLM_INPUT_PROMPT,
                    data: raw::v1_2::RKLLMInputData {
                        prompt_input: prompt.as_ptr(),
                    },
                };
                let mut infer = raw::v1_2::RKLLMInferParam {
                    mode: raw::RKLLM_INFER_GENERATE,
                    lora_params: ptr::null_mut(),
                    prompt_cache_params: cache_ptr,
                    keep_history,
                };
                // SAFETY: a live handle; input and infer are valid 1.2 layouts
                // whose pointers (role, prompt, the prompt-cache struct and
                // its path) outlive the blocking call; runs are serialised by
                // `run_lock`.
                unsafe {
                    run(
                        self.handle.as_ptr(),
                        &raw mut input,
                        &raw mut infer,
                        ptr::null_mut(),
                    )
                }
            }
            Entry::V1_3 { run, .. } => {
                let mut input = raw::v1_3::RKLLMInput {
                    role: role.as_ptr(),
                    enable_thinking: false,
                    input_type: raw::RKLLM_INPUT_PROMPT,
                    data: raw::v1_3::RKLLMInputData {
                        prompt_input: prompt.as_ptr(),
                    },
                };
                let mut infer = raw::v1_3::RKLLMInferParam {
                    mode: raw::RKLLM_INFER_GENERATE,
                    lora_params: ptr::null_mut(),
                    prompt_cache_params: cache_ptr,
                    sampling_params: ptr::null_mut(),
                    keep_history,
                    max_new_tokens: max_new_tokens.max(0),
                };
                // SAFETY: as for 1.2, with the 1.3 layouts.
                unsafe {
                    run(
                        self.handle.as_ptr(),
                        &raw mut input,
                        &raw mut infer,
                        ptr::null_mut(),
                    )
                }
            }
        };
        set_active_sink(None);
        Ok(code)
    }

    /// Empties the runtime's KV cache (`rkllm_clear_kv_cache`), the system
    /// prompt too: the next run starts from nothing.
    ///
    /// # Errors
    /// [`FfiError::Busy`] during a run, or the runtime's failure code.
    pub fn clear_kv_cache(&self) -> Result<(), FfiError> {
        let _guard = self.run_lock.try_lock().map_err(|_| FfiError::Busy)?;
        // SAFETY: a live handle, no run in progress (run_lock), and null
        // position pointers, which the runtime takes as "the whole cache".
        let code = unsafe {
            (self.runtime.common.clear_kv_cache)(
                self.handle.as_ptr(),
                0,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if code == 0 {
            Ok(())
        } else {
            Err(FfiError::Call {
                function: "rkllm_clear_kv_cache",
                code,
            })
        }
    }

    /// Loads the prompt-cache file at `path` (`rkllm_load_prompt_cache`):
    /// later runs whose prompt starts with the prompt it was saved from skip
    /// prefilling that part.
    ///
    /// # Errors
    /// [`FfiError::Unsupported`] when the runtime lacks the function,
    /// [`FfiError::Nul`], [`FfiError::Busy`] during a run, or the runtime's
    /// failure code (a file it does not accept).
    pub fn load_prompt_cache(&self, path: &Path) -> Result<(), FfiError> {
        let function = "rkllm_load_prompt_cache";
        let load = self
            .runtime
            .common
            .load_prompt_cache
            .ok_or(FfiError::Unsupported { function })?;
        let path =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| FfiError::Nul {
                what: "the prompt-cache path",
            })?;
        let _guard = self.run_lock.try_lock().map_err(|_| FfiError::Busy)?;
        // SAFETY: a live handle, no run in progress (run_lock), and a
        // NUL-terminated path that outlives the call (the runtime reads the
        // file during it).
        let code = unsafe { load(self.handle.as_ptr(), path.as_ptr()) };
        if code == 0 {
            Ok(())
        } else {
            Err(FfiError::Call { function, code })
        }
    }

    /// Asks the runtime to stop the run in progress (`rkllm_abort`); it takes
    /// effect at the next token. Safe to call concurrently with [`run`](Self::run).
    ///
    /// # Errors
    /// The runtime's failure code.
    pub fn abort(&self) -> Result<(), FfiError> {
        // SAFETY: a live handle; rkllm_abort is meant to be called from
        // another thread while rkllm_run blocks.
        let code = unsafe { (self.runtime.common.abort)(self.handle.as_ptr()) };
        if code == 0 {
            Ok(())
        } else {
            Err(FfiError::Call {
                function: "rkllm_abort",
                code,
            })
        }
    }

    /// Gives the model up without `rkllm_destroy`, keeping the library loaded
    /// for good. For a model whose init the runtime reported as failed (or
    /// that is stuck in a run): destroying a half-initialised model has
    /// crashed runtimes, and the process is about to exit anyway.
    pub fn abandon(self) {
        std::mem::forget(self);
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: a live handle, owned exclusively here (no run can borrow
        // the model any more), destroyed exactly once.
        let code = unsafe { (self.runtime.common.destroy)(self.handle.as_ptr()) };
        if code != 0 {
            tracing::warn!(code, "rkllm_destroy failed");
        }
    }
}

/// Flushes C stdio buffers (the runtime's `printf` output into a captured
/// stdout is block-buffered and would otherwise arrive after the capture).
pub fn flush_c_stdio() {
    // SAFETY: fflush(NULL) flushes every open output stream; no pointer is
    // dereferenced by us.
    unsafe {
        libc::fflush(ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A sink that panics on every event and counts the panics reported.
    struct Panicking {
        reported: AtomicU32,
    }

    impl RunSink for Panicking {
        fn on_event(&self, _event: RunEvent<'_>) {
            panic!("sink failure");
        }
        fn on_panic(&self) {
            self.reported.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Recording {
        events: Mutex<Vec<String>>,
    }

    impl RunSink for Recording {
        fn on_event(&self, event: RunEvent<'_>) {
            self.events.lock().unwrap().push(format!("{event:?}"));
        }
        fn on_panic(&self) {}
    }

    // One test for both sinks: the slot is process-wide.
    #[test]
    fn the_callback_decodes_results_and_stops_panics() {
        let text = c"h\xc3";
        let mut result = raw::RKLLMResult {
            text: text.as_ptr(),
            token_id: 1,
            last_hidden_layer: raw::RKLLMResultLastHiddenLayer {
                hidden_states: ptr::null(),
                embd_size: 0,
                num_tokens: 0,
            },
            logits: raw::RKLLMResultLogits {
                logits: ptr::null(),
                vocab_size: 0,
                num_tokens: 0,
            },
            perf: raw::RKLLMPerfStat::default(),
        };

        let recording = Arc::new(Recording {
            events: Mutex::new(Vec::new()),
        });
        set_active_sink(Some(recording.clone()));
        // SAFETY: a valid result with a NUL-terminated text, as the runtime passes.
        let codes = unsafe {
            [
                on_result(&raw mut result, ptr::null_mut(), raw::RKLLM_RUN_WAITING),
                on_result(ptr::null_mut(), ptr::null_mut(), raw::RKLLM_RUN_FINISH),
                on_result(ptr::null_mut(), ptr::null_mut(), 7),
            ]
        };
        assert_eq!(codes, [0, 0, 0]);
        let events = recording.events.lock().unwrap().clone();
        assert_eq!(
            events,
            [
                "Text { bytes: [104, 195], waiting: true }",
                &format!("Finish({:?})", raw::RKLLMPerfStat::default()),
                "Unknown(7)",
            ]
        );

        let panicking = Arc::new(Panicking {
            reported: AtomicU32::new(0),
        });
        set_active_sink(Some(panicking.clone()));
        // SAFETY: as above.
        let code = unsafe { on_result(&raw mut result, ptr::null_mut(), raw::RKLLM_RUN_NORMAL) };
        assert_eq!(code, 0, "the callback returns normally");
        assert_eq!(panicking.reported.load(Ordering::SeqCst), 1);

        // No sink: a late callback is ignored.
        set_active_sink(None);
        // SAFETY: as above.
        let code = unsafe { on_result(&raw mut result, ptr::null_mut(), raw::RKLLM_RUN_NORMAL) };
        assert_eq!(code, 0);
    }
}
