//! The C interface of `librkllmrt.so` as declared in `rkllm.h`, field by
//! field, for the two layouts this worker supports (1.2.x and 1.3.0).
//!
//! Nothing here is called directly: [`super`] loads the functions and wraps
//! them. The layouts are asserted by the layout tests (sizes and offsets from
//! the interface notes); a field added or moved here without the runtime
//! changing the same way corrupts memory silently, so change them only with
//! the header of the release in hand.

use std::ffi::{c_char, c_int, c_void};

/// `LLMHandle`: the runtime's opaque model handle.
pub type LLMHandle = *mut c_void;

/// `LLMCallState::RKLLM_RUN_NORMAL`: a token.
pub const RKLLM_RUN_NORMAL: c_int = 0;
/// `RKLLM_RUN_WAITING`: the text is an incomplete UTF-8 sequence.
pub const RKLLM_RUN_WAITING: c_int = 1;
/// `RKLLM_RUN_FINISH`: the generation ended; `perf` is filled.
pub const RKLLM_RUN_FINISH: c_int = 2;
/// `RKLLM_RUN_ERROR`: the generation failed.
pub const RKLLM_RUN_ERROR: c_int = 3;

/// `RKLLMInputType::RKLLM_INPUT_PROMPT`.
pub const RKLLM_INPUT_PROMPT: c_int = 0;
/// `RKLLMInferMode::RKLLM_INFER_GENERATE`.
pub const RKLLM_INFER_GENERATE: c_int = 0;

/// `RKLLMExtendParam` (120 bytes in both layouts).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMExtendParam {
    /// NPU memory domain (about 4 GB each).
    pub base_domain_id: i32,
    /// Keep the embedding table in flash instead of RAM.
    pub embed_flash: i8,
    /// Number of CPU cores the runtime may use.
    pub enabled_cpus_num: i8,
    /// Which CPU cores (bit n = CPU n).
    pub enabled_cpus_mask: u32,
    /// Input sequences processed together (batched inference); default 1.
    pub n_batch: u8,
    /// Cross-attention (encoder-decoder models only).
    pub use_cross_attn: i8,
    /// Reserved by the runtime; keep zero.
    pub reserved: [u8; 104],
}

/// `RKLLMPerfStat` (20 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RKLLMPerfStat {
    /// Prompt processing time.
    pub prefill_time_ms: f32,
    /// Prompt tokens.
    pub prefill_tokens: c_int,
    /// Generation time.
    pub generate_time_ms: f32,
    /// Generated tokens.
    pub generate_tokens: c_int,
    /// Peak resident memory (VmHWM) in MB.
    pub memory_usage_mb: f32,
}

/// `RKLLMResultLastHiddenLayer`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMResultLastHiddenLayer {
    /// Hidden states (GET_LAST_HIDDEN_LAYER mode only).
    pub hidden_states: *const f32,
    /// Embedding size.
    pub embd_size: c_int,
    /// Number of tokens.
    pub num_tokens: c_int,
}

/// `RKLLMResultLogits`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMResultLogits {
    /// Logits (GET_LOGITS mode only).
    pub logits: *const f32,
    /// Vocabulary size.
    pub vocab_size: c_int,
    /// Number of tokens.
    pub num_tokens: c_int,
}

/// `RKLLMResult` (72 bytes in both layouts).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMResult {
    /// The piece of text (NUL-terminated, may be null).
    pub text: *const c_char,
    /// The token id.
    pub token_id: i32,
    /// Hidden layer output.
    pub last_hidden_layer: RKLLMResultLastHiddenLayer,
    /// Logits output.
    pub logits: RKLLMResultLogits,
    /// Figures, filled with `RKLLM_RUN_FINISH` only.
    pub perf: RKLLMPerfStat,
}

/// `RKLLMEmbedInput`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMEmbedInput {
    /// Embeddings.
    pub embed: *mut f32,
    /// Number of tokens.
    pub n_tokens: usize,
}

/// `RKLLMTokenInput`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMTokenInput {
    /// Token ids.
    pub input_ids: *mut i32,
    /// Number of tokens.
    pub n_tokens: usize,
}

/// `LLMResultCallback`: `int (*)(RKLLMResult*, void* userdata, LLMCallState)`.
/// The state is taken as a plain `int` so that an unexpected value is data,
/// not undefined behaviour.
pub type LLMResultCallback = Option<
    unsafe extern "C" fn(result: *mut RKLLMResult, userdata: *mut c_void, state: c_int) -> c_int,
>;

/// An opaque `RKLLMLoraParam` (only ever passed as null).
#[repr(C)]
pub struct RKLLMLoraParam {
    _opaque: [u8; 0],
}

/// `RKLLMPromptCacheParam` (16 bytes, the same in 1.2.1 to 1.3.0): a run
/// given one with `save_prompt_cache` set saves its prompt's KV to the file.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMPromptCacheParam {
    /// Non-zero: save the prompt cache of this run.
    pub save_prompt_cache: c_int,
    /// The file to save it to.
    pub prompt_cache_path: *const c_char,
}

/// Functions every supported release exports with the same signature.
pub mod common {
    use super::{c_char, c_int, LLMHandle};

    /// `int rkllm_abort(LLMHandle)`.
    pub type Abort = unsafe extern "C" fn(handle: LLMHandle) -> c_int;
    /// `int rkllm_destroy(LLMHandle)`.
    pub type Destroy = unsafe extern "C" fn(handle: LLMHandle) -> c_int;
    /// `int rkllm_clear_kv_cache(LLMHandle, int keep_system_prompt, int* start_pos, int* end_pos)`.
    pub type ClearKvCache = unsafe extern "C" fn(
        handle: LLMHandle,
        keep_system_prompt: c_int,
        start_pos: *mut c_int,
        end_pos: *mut c_int,
    ) -> c_int;
    /// `int rkllm_load_prompt_cache(LLMHandle, const char* prompt_cache_path)`.
    pub type LoadPromptCache =
        unsafe extern "C" fn(handle: LLMHandle, prompt_cache_path: *const c_char) -> c_int;
    /// `int rkllm_set_chat_template(LLMHandle, const char*, const char*, const char*)`.
    pub type SetChatTemplate = unsafe extern "C" fn(
        handle: LLMHandle,
        system_prompt: *const c_char,
        prompt_prefix: *const c_char,
        prompt_postfix: *const c_char,
    ) -> c_int;
}

/// The 1.2.x layout (1.2.1 to 1.2.3).
pub mod v1_2 {
    use super::{
        c_char, c_int, c_void, LLMHandle, LLMResultCallback, RKLLMEmbedInput, RKLLMExtendParam,
        RKLLMLoraParam, RKLLMPromptCacheParam, RKLLMTokenInput,
    };

    /// `RKLLMParam` (208 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMParam {
        /// Path of the `.rkllm` file.
        pub model_path: *const c_char,
        /// Context window in tokens.
        pub max_context_len: i32,
        /// Cap on generated tokens per run.
        pub max_new_tokens: i32,
        /// Top-k sampling.
        pub top_k: i32,
        /// Tokens kept when the context is shifted.
        pub n_keep: i32,
        /// Nucleus sampling.
        pub top_p: f32,
        /// Sampling temperature.
        pub temperature: f32,
        /// Repetition penalty.
        pub repeat_penalty: f32,
        /// Frequency penalty.
        pub frequency_penalty: f32,
        /// Presence penalty.
        pub presence_penalty: f32,
        /// Mirostat mode.
        pub mirostat: i32,
        /// Mirostat tau.
        pub mirostat_tau: f32,
        /// Mirostat eta.
        pub mirostat_eta: f32,
        /// Leave special tokens out of the text.
        pub skip_special_token: bool,
        /// Asynchronous mode (not used: runs are blocking on their own thread).
        pub is_async: bool,
        /// Multimodal: image start marker.
        pub img_start: *const c_char,
        /// Multimodal: image end marker.
        pub img_end: *const c_char,
        /// Multimodal: image content marker.
        pub img_content: *const c_char,
        /// Extended settings.
        pub extend_param: RKLLMExtendParam,
    }

    /// `RKLLMMultiModalInput` (48 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMMultiModalInput {
        /// Text part.
        pub prompt: *mut c_char,
        /// Image embeddings.
        pub image_embed: *mut f32,
        /// Image tokens.
        pub n_image_tokens: usize,
        /// Number of images.
        pub n_image: usize,
        /// Image width.
        pub image_width: usize,
        /// Image height.
        pub image_height: usize,
    }

    /// The union inside `RKLLMInput`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union RKLLMInputData {
        /// `RKLLM_INPUT_PROMPT`: a NUL-terminated prompt.
        pub prompt_input: *const c_char,
        /// `RKLLM_INPUT_EMBED`.
        pub embed_input: RKLLMEmbedInput,
        /// `RKLLM_INPUT_TOKEN`.
        pub token_input: RKLLMTokenInput,
        /// `RKLLM_INPUT_MULTIMODAL`.
        pub multimodal_input: RKLLMMultiModalInput,
    }

    /// `RKLLMInput` (64 bytes).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct RKLLMInput {
        /// "user" or "tool".
        pub role: *const c_char,
        /// Thinking mode of models that have one.
        pub enable_thinking: bool,
        /// `RKLLMInputType`.
        pub input_type: c_int,
        /// The input itself.
        pub data: RKLLMInputData,
    }

    /// `RKLLMInferParam` (32 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMInferParam {
        /// `RKLLMInferMode`.
        pub mode: c_int,
        /// LoRA adapter (null: none).
        pub lora_params: *mut RKLLMLoraParam,
        /// Prompt cache (null: none).
        pub prompt_cache_params: *mut RKLLMPromptCacheParam,
        /// Non-zero keeps the KV cache of earlier runs.
        pub keep_history: c_int,
    }

    /// `RKLLMParam rkllm_createDefaultParam(void)`.
    pub type CreateDefaultParam = unsafe extern "C" fn() -> RKLLMParam;
    /// `int rkllm_init(LLMHandle*, RKLLMParam*, LLMResultCallback)`.
    pub type Init = unsafe extern "C" fn(
        handle: *mut LLMHandle,
        param: *mut RKLLMParam,
        callback: LLMResultCallback,
    ) -> c_int;
    /// `int rkllm_run(LLMHandle, RKLLMInput*, RKLLMInferParam*, void*)`.
    pub type Run = unsafe extern "C" fn(
        handle: LLMHandle,
        input: *mut RKLLMInput,
        infer_params: *mut RKLLMInferParam,
        userdata: *mut c_void,
    ) -> c_int;
}

/// The 1.3.0 layout.
pub mod v1_3 {
    use super::{
        c_char, c_int, c_void, LLMHandle, LLMResultCallback, RKLLMEmbedInput, RKLLMExtendParam,
        RKLLMLoraParam, RKLLMPromptCacheParam, RKLLMTokenInput,
    };

    /// `RKLLMParam` (184 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMParam {
        /// Path of the `.rkllm` file.
        pub model_path: *const c_char,
        /// Context window in tokens.
        pub max_context_len: i32,
        /// Cap on generated tokens per run (a run may lower it).
        pub max_new_tokens: i32,
        /// Top-k sampling.
        pub top_k: i32,
        /// Tokens kept when the context is shifted.
        pub n_keep: i32,
        /// Nucleus sampling.
        pub top_p: f32,
        /// Sampling temperature.
        pub temperature: f32,
        /// Repetition penalty.
        pub repeat_penalty: f32,
        /// Frequency penalty.
        pub frequency_penalty: f32,
        /// Presence penalty.
        pub presence_penalty: f32,
        /// Mirostat mode.
        pub mirostat: i32,
        /// Mirostat tau.
        pub mirostat_tau: f32,
        /// Mirostat eta.
        pub mirostat_eta: f32,
        /// Leave special tokens out of the text.
        pub skip_special_token: bool,
        /// Keep generating past the end-of-sequence token.
        pub ignore_eos_token: bool,
        /// Asynchronous mode (not used).
        pub is_async: bool,
        /// Extended settings.
        pub extend_param: RKLLMExtendParam,
    }

    /// `RKLLMMultiModalInput` of 1.3.0 (144 bytes). A chat worker never
    /// builds one; only its size matters, for the union.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMMultiModalInput {
        _opaque: [u64; 18],
    }

    /// The union inside `RKLLMInput`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union RKLLMInputData {
        /// `RKLLM_INPUT_PROMPT`: a NUL-terminated prompt.
        pub prompt_input: *const c_char,
        /// `RKLLM_INPUT_EMBED`.
        pub embed_input: RKLLMEmbedInput,
        /// `RKLLM_INPUT_TOKEN`.
        pub token_input: RKLLMTokenInput,
        /// `RKLLM_INPUT_MULTIMODAL`.
        pub multimodal_input: RKLLMMultiModalInput,
    }

    /// `RKLLMInput` (160 bytes).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct RKLLMInput {
        /// "user" or "tool".
        pub role: *const c_char,
        /// Thinking mode of models that have one.
        pub enable_thinking: bool,
        /// `RKLLMInputType`.
        pub input_type: c_int,
        /// The input itself.
        pub data: RKLLMInputData,
    }

    /// An opaque `RKLLMSamplingParam` (only ever passed as null: the init
    /// values apply).
    #[repr(C)]
    pub struct RKLLMSamplingParam {
        _opaque: [u8; 0],
    }

    /// `RKLLMInferParam` (40 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMInferParam {
        /// `RKLLMInferMode`.
        pub mode: c_int,
        /// LoRA adapter (null: none).
        pub lora_params: *mut RKLLMLoraParam,
        /// Prompt cache (null: none).
        pub prompt_cache_params: *mut RKLLMPromptCacheParam,
        /// Per-run sampling (null: the init values).
        pub sampling_params: *mut RKLLMSamplingParam,
        /// Non-zero keeps the KV cache of earlier runs.
        pub keep_history: c_int,
        /// Per-run cap on generated tokens (<= 0: the init value).
        pub max_new_tokens: i32,
    }

    /// Tokenizer and embedding callbacks: signatures not needed, always null.
    pub type OpaqueCallback = Option<unsafe extern "C" fn()>;

    /// `RKLLMCallback` (48 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMCallback {
        /// The result callback.
        pub result_callback: LLMResultCallback,
        /// Its user data.
        pub result_userdata: *mut c_void,
        /// Custom tokenizer (null).
        pub tokenizer_callback: OpaqueCallback,
        /// Its user data.
        pub tokenizer_userdata: *mut c_void,
        /// Custom embedding (null).
        pub embed_callback: OpaqueCallback,
        /// Its user data.
        pub embed_userdata: *mut c_void,
    }

    /// `RKLLMParam rkllm_createDefaultParam(void)`.
    pub type CreateDefaultParam = unsafe extern "C" fn() -> RKLLMParam;
    /// `int rkllm_init(LLMHandle*, RKLLMParam*, RKLLMCallback*)`.
    pub type Init = unsafe extern "C" fn(
        handle: *mut LLMHandle,
        param: *mut RKLLMParam,
        callback: *mut RKLLMCallback,
    ) -> c_int;
    /// `int rkllm_run(LLMHandle, RKLLMInput*, RKLLMInferParam*, void*)`.
    pub type Run = unsafe extern "C" fn(
        handle: LLMHandle,
        input: *mut RKLLMInput,
        infer_params: *mut RKLLMInferParam,
        userdata: *mut c_void,
    ) -> c_int;
}
