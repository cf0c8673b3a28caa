//! The Rust mirror of `rkllm.h` against the sizes and offsets of the
//! interface notes, for both layouts: a binding of the wrong shape corrupts
//! memory silently, so every struct is pinned here.

use std::mem::{align_of, offset_of, size_of};

use worker_npu::ffi::raw::{
    self, v1_2, v1_3, RKLLMEmbedInput, RKLLMExtendParam, RKLLMPerfStat, RKLLMPromptCacheParam,
    RKLLMResult, RKLLMResultLastHiddenLayer, RKLLMResultLogits, RKLLMTokenInput,
};

#[test]
fn shared_structs() {
    assert_eq!(size_of::<RKLLMExtendParam>(), 120);
    assert_eq!(offset_of!(RKLLMExtendParam, base_domain_id), 0);
    assert_eq!(offset_of!(RKLLMExtendParam, embed_flash), 4);
    assert_eq!(offset_of!(RKLLMExtendParam, enabled_cpus_num), 5);
    assert_eq!(offset_of!(RKLLMExtendParam, enabled_cpus_mask), 8);
    assert_eq!(offset_of!(RKLLMExtendParam, n_batch), 12);
    assert_eq!(offset_of!(RKLLMExtendParam, use_cross_attn), 13);
    assert_eq!(offset_of!(RKLLMExtendParam, reserved), 14);

    assert_eq!(size_of::<RKLLMPerfStat>(), 20);
    assert_eq!(offset_of!(RKLLMPerfStat, prefill_tokens), 4);
    assert_eq!(offset_of!(RKLLMPerfStat, generate_time_ms), 8);
    assert_eq!(offset_of!(RKLLMPerfStat, generate_tokens), 12);
    assert_eq!(offset_of!(RKLLMPerfStat, memory_usage_mb), 16);

    assert_eq!(size_of::<RKLLMResultLastHiddenLayer>(), 16);
    assert_eq!(offset_of!(RKLLMResultLastHiddenLayer, num_tokens), 12);
    assert_eq!(size_of::<RKLLMResultLogits>(), 16);
    assert_eq!(offset_of!(RKLLMResultLogits, vocab_size), 8);
    assert_eq!(size_of::<RKLLMEmbedInput>(), 16);
    assert_eq!(size_of::<RKLLMTokenInput>(), 16);
    // rkllm.h of 1.2.1 to 1.3.0: { int save_prompt_cache; const char* prompt_cache_path; }.
    assert_eq!(size_of::<RKLLMPromptCacheParam>(), 16);
    assert_eq!(offset_of!(RKLLMPromptCacheParam, save_prompt_cache), 0);
    assert_eq!(offset_of!(RKLLMPromptCacheParam, prompt_cache_path), 8);
    assert_eq!(offset_of!(RKLLMTokenInput, n_tokens), 8);

    assert_eq!(size_of::<RKLLMResult>(), 72);
    assert_eq!(offset_of!(RKLLMResult, text), 0);
    assert_eq!(offset_of!(RKLLMResult, token_id), 8);
    assert_eq!(offset_of!(RKLLMResult, last_hidden_layer), 16);
    assert_eq!(offset_of!(RKLLMResult, logits), 32);
    assert_eq!(offset_of!(RKLLMResult, perf), 48);
}

#[test]
fn param_common_prefix_is_identical() {
    macro_rules! prefix {
        ($t:ty) => {{
            assert_eq!(offset_of!($t, model_path), 0);
            assert_eq!(offset_of!($t, max_context_len), 8);
            assert_eq!(offset_of!($t, max_new_tokens), 12);
            assert_eq!(offset_of!($t, top_k), 16);
            assert_eq!(offset_of!($t, n_keep), 20);
            assert_eq!(offset_of!($t, top_p), 24);
            assert_eq!(offset_of!($t, temperature), 28);
            assert_eq!(offset_of!($t, repeat_penalty), 32);
            assert_eq!(offset_of!($t, frequency_penalty), 36);
            assert_eq!(offset_of!($t, presence_penalty), 40);
            assert_eq!(offset_of!($t, mirostat), 44);
            assert_eq!(offset_of!($t, mirostat_tau), 48);
            assert_eq!(offset_of!($t, mirostat_eta), 52);
            assert_eq!(offset_of!($t, skip_special_token), 56);
        }};
    }
    prefix!(v1_2::RKLLMParam);
    prefix!(v1_3::RKLLMParam);
}

#[test]
fn layout_1_2() {
    assert_eq!(size_of::<v1_2::RKLLMParam>(), 208);
    assert_eq!(offset_of!(v1_2::RKLLMParam, is_async), 57);
    assert_eq!(offset_of!(v1_2::RKLLMParam, img_start), 64);
    assert_eq!(offset_of!(v1_2::RKLLMParam, img_end), 72);
    assert_eq!(offset_of!(v1_2::RKLLMParam, img_content), 80);
    assert_eq!(offset_of!(v1_2::RKLLMParam, extend_param), 88);

    assert_eq!(size_of::<v1_2::RKLLMMultiModalInput>(), 48);
    assert_eq!(size_of::<v1_2::RKLLMInput>(), 64);
    assert_eq!(offset_of!(v1_2::RKLLMInput, role), 0);
    assert_eq!(offset_of!(v1_2::RKLLMInput, enable_thinking), 8);
    assert_eq!(offset_of!(v1_2::RKLLMInput, input_type), 12);
    assert_eq!(offset_of!(v1_2::RKLLMInput, data), 16);

    assert_eq!(size_of::<v1_2::RKLLMInferParam>(), 32);
    assert_eq!(offset_of!(v1_2::RKLLMInferParam, mode), 0);
    assert_eq!(offset_of!(v1_2::RKLLMInferParam, lora_params), 8);
    assert_eq!(offset_of!(v1_2::RKLLMInferParam, prompt_cache_params), 16);
    assert_eq!(offset_of!(v1_2::RKLLMInferParam, keep_history), 24);
}

#[test]
fn layout_1_3() {
    assert_eq!(size_of::<v1_3::RKLLMParam>(), 184);
    assert_eq!(offset_of!(v1_3::RKLLMParam, ignore_eos_token), 57);
    assert_eq!(offset_of!(v1_3::RKLLMParam, is_async), 58);
    assert_eq!(offset_of!(v1_3::RKLLMParam, extend_param), 60);

    assert_eq!(size_of::<v1_3::RKLLMMultiModalInput>(), 144);
    assert_eq!(size_of::<v1_3::RKLLMInput>(), 160);
    assert_eq!(offset_of!(v1_3::RKLLMInput, input_type), 12);
    assert_eq!(offset_of!(v1_3::RKLLMInput, data), 16);

    assert_eq!(size_of::<v1_3::RKLLMInferParam>(), 40);
    assert_eq!(offset_of!(v1_3::RKLLMInferParam, sampling_params), 24);
    assert_eq!(offset_of!(v1_3::RKLLMInferParam, keep_history), 32);
    assert_eq!(offset_of!(v1_3::RKLLMInferParam, max_new_tokens), 36);

    assert_eq!(size_of::<v1_3::RKLLMCallback>(), 48);
    assert_eq!(offset_of!(v1_3::RKLLMCallback, result_callback), 0);
    assert_eq!(offset_of!(v1_3::RKLLMCallback, result_userdata), 8);
    assert_eq!(offset_of!(v1_3::RKLLMCallback, tokenizer_callback), 16);
    assert_eq!(offset_of!(v1_3::RKLLMCallback, embed_userdata), 40);
}

#[test]
fn callbacks_and_handles_are_pointer_sized() {
    assert_eq!(size_of::<raw::LLMResultCallback>(), 8);
    assert_eq!(size_of::<raw::LLMHandle>(), 8);
    assert_eq!(align_of::<v1_2::RKLLMParam>(), 8);
    assert_eq!(align_of::<v1_3::RKLLMParam>(), 8);
}
