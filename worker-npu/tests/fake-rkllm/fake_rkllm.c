/* Test double of Rockchip's RKLLM runtime (librkllmrt.so) for the NPU worker's tests.
 *
 * Built by worker-npu/build.rs for one ABI per library (-DRKLLM_ABI=12 for the
 * 1.2.x layout, 13 for 1.3.0) with an embedded version string
 * (-DRKLLM_VERSION="1.2.1"), so the worker's version detection, struct layouts
 * and classification of init failures can be exercised without a board.
 *
 * Behaviour is chosen by environment variables (the supervisor passes them to
 * a slot through its per-slot worker_env table):
 *   FAKE_RKLLM_MODE          normal | slow_first | hang | crash | leak | run_error
 *                            | invalid_model | platform_mismatch | npu_oom
 *                            | unknown_platform | init_error
 *   FAKE_RKLLM_TEXT          the scripted answer (default: DEFAULT_SCRIPT)
 *   FAKE_RKLLM_CHUNK         bytes per token piece (default 3: splits multi-byte
 *                            characters across RKLLM_RUN_WAITING callbacks)
 *   FAKE_RKLLM_DELAY_MS      delay before each piece (default 10)
 *   FAKE_RKLLM_FIRST_DELAY_MS  slow_first: delay before the first piece (default 2000)
 *   FAKE_RKLLM_AFTER         hang/crash/run_error: pieces sent before it happens
 *                            (default: hang 0, crash 2, run_error 1)
 *   FAKE_RKLLM_LEAK_MB       leak: MiB allocated and touched per piece (default 32)
 *   FAKE_RKLLM_LEAK_CAP_MB   leak: stop growing at this many MiB (default 4096)
 *   FAKE_RKLLM_CONTEXT_LIMIT the model's max_context_limit (default 4096)
 *   FAKE_RKLLM_INIT_DELAY_MS how long rkllm_init takes (default 0)
 *   FAKE_RKLLM_RECORD        file to append key=value lines to: the pid (first
 *                            thing at every rkllm_init), every init parameter,
 *                            chat template, run input, abort, destroy
 *   FAKE_RKLLM_LOCK          file locked (flock) by rkllm_init until the process
 *                            ends, standing in for the NPU that only one process
 *                            may use: a second live process records npu_busy=<pid>
 *
 * The KV cache is modelled as text: a run with keep_history sees what the
 * earlier kept runs left (their prompts and answers) before its own prompt,
 * and leaves its prompt and answer for the next; a run without it, or after
 * rkllm_clear_kv_cache, sees only its own prompt. run_seen records what a run
 * saw, run_history_chars how much of it came from the cache.
 *   RKLLM_LOG_LEVEL          >= 1: log version, model facts (as the real runtime does)
 *   FAKE_RKLLM_PROMPT_CACHE  normal | no_save (a run asked to save the prompt
 *                            cache writes nothing) | refuse (every load fails)
 *
 * The prompt cache is modelled as text too: a run given RKLLMPromptCacheParam
 * with save_prompt_cache writes its full prompt to the file (with a header
 * naming the model) once prefilled; rkllm_load_prompt_cache reads such a file
 * back (refusing anything else, or another model's), and a later run without
 * history prefills only what follows the longest common prefix of its prompt
 * with the loaded one (run_prompt_cache_chars).
 *
 * Continuation: when the full prompt (system + prefix + input + postfix) ends
 * with the start of the script, only the rest of the script is streamed, as a
 * model continuing a prefilled assistant turn would.
 */
#define _DEFAULT_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#ifndef RKLLM_ABI
#error "define RKLLM_ABI as 12 (layout of 1.2.x) or 13 (layout of 1.3.0)"
#endif
#ifndef RKLLM_VERSION
#error "define RKLLM_VERSION, e.g. \"1.2.1\""
#endif

/* Where a real runtime keeps its version: the worker's ABI detection looks for these. */
__attribute__((used)) const char fake_rkllm_sdk_banner[] = "RKLLM SDK (version: " RKLLM_VERSION ")";
__attribute__((used)) const char fake_rkllm_runtime_banner[] = "rkllm-runtime version: " RKLLM_VERSION;

#define DEFAULT_SCRIPT "Hello from the fake NPU! Na\xc3\xafve caf\xc3\xa9: \xe2\x98\x95 and \xf0\x9f\x8e\x89 done."

/* ---- the public layout (see RKLLM.md) ---------------------------------- */

typedef void *LLMHandle;

typedef enum {
    RKLLM_RUN_NORMAL = 0,
    RKLLM_RUN_WAITING = 1,
    RKLLM_RUN_FINISH = 2,
    RKLLM_RUN_ERROR = 3
} LLMCallState;

typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3
} RKLLMInputType;

typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
    RKLLM_INFER_GET_LOGITS = 2
} RKLLMInferMode;

typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
} RKLLMExtendParam;

typedef struct {
    const char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    int32_t n_keep;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#if RKLLM_ABI == 12
    bool is_async;
    const char *img_start;
    const char *img_end;
    const char *img_content;
#else
    bool ignore_eos_token;
    bool is_async;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct {
    float *embed;
    size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
    int32_t *input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

#if RKLLM_ABI == 12
typedef struct {
    char *prompt;
    float *image_embed;
    size_t n_image_tokens;
    size_t n_image;
    size_t image_width;
    size_t image_height;
} RKLLMMultiModalInput;
#else
/* 144 bytes in 1.3.0; the fields do not matter to a chat worker. */
typedef struct {
    uint64_t opaque[18];
} RKLLMMultiModalInput;
#endif

typedef struct {
    const char *role;
    bool enable_thinking;
    RKLLMInputType input_type;
    union {
        const char *prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        RKLLMMultiModalInput multimodal_input;
    };
} RKLLMInput;

typedef struct RKLLMLoraParam RKLLMLoraParam;

typedef struct {
    int save_prompt_cache;
    const char *prompt_cache_path;
} RKLLMPromptCacheParam;

typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam *lora_params;
    RKLLMPromptCacheParam *prompt_cache_params;
#if RKLLM_ABI == 13
    void *sampling_params;
#endif
    int keep_history;
#if RKLLM_ABI == 13
    int32_t max_new_tokens;
#endif
} RKLLMInferParam;

typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;

typedef struct {
    const char *text;
    int32_t token_id;
    struct {
        const float *hidden_states;
        int embd_size;
        int num_tokens;
    } last_hidden_layer;
    struct {
        const float *logits;
        int vocab_size;
        int num_tokens;
    } logits;
    RKLLMPerfStat perf;
} RKLLMResult;

typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);

#if RKLLM_ABI == 13
typedef struct {
    LLMResultCallback result_callback;
    void *result_userdata;
    void *tokenizer_callback;
    void *tokenizer_userdata;
    void *embed_callback;
    void *embed_userdata;
} RKLLMCallback;
#endif

/* The same sizes the worker's layout tests assert: a drift here would make
 * the double agree with a wrong binding. */
_Static_assert(sizeof(RKLLMExtendParam) == 120, "RKLLMExtendParam");
_Static_assert(sizeof(RKLLMPerfStat) == 20, "RKLLMPerfStat");
_Static_assert(sizeof(RKLLMResult) == 72, "RKLLMResult");
_Static_assert(offsetof(RKLLMResult, perf) == 48, "RKLLMResult.perf");
_Static_assert(offsetof(RKLLMInput, input_type) == 12, "RKLLMInput.input_type");
_Static_assert(offsetof(RKLLMInput, prompt_input) == 16, "RKLLMInput union");
_Static_assert(sizeof(RKLLMPromptCacheParam) == 16, "RKLLMPromptCacheParam");
_Static_assert(offsetof(RKLLMPromptCacheParam, prompt_cache_path) == 8, "prompt_cache_path");
#if RKLLM_ABI == 12
_Static_assert(sizeof(RKLLMParam) == 208, "RKLLMParam 1.2");
_Static_assert(offsetof(RKLLMParam, is_async) == 57, "is_async 1.2");
_Static_assert(offsetof(RKLLMParam, extend_param) == 88, "extend_param 1.2");
_Static_assert(sizeof(RKLLMInput) == 64, "RKLLMInput 1.2");
_Static_assert(sizeof(RKLLMInferParam) == 32, "RKLLMInferParam 1.2");
#else
_Static_assert(sizeof(RKLLMParam) == 184, "RKLLMParam 1.3");
_Static_assert(offsetof(RKLLMParam, is_async) == 58, "is_async 1.3");
_Static_assert(offsetof(RKLLMParam, extend_param) == 60, "extend_param 1.3");
_Static_assert(sizeof(RKLLMInput) == 160, "RKLLMInput 1.3");
_Static_assert(sizeof(RKLLMInferParam) == 40, "RKLLMInferParam 1.3");
_Static_assert(offsetof(RKLLMInferParam, keep_history) == 32, "keep_history 1.3");
_Static_assert(sizeof(RKLLMCallback) == 48, "RKLLMCallback");
#endif

/* ---- the double -------------------------------------------------------- */

typedef struct {
    char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    LLMResultCallback callback;
    void *init_userdata;
    char *system_prompt;
    char *prompt_prefix;
    char *prompt_postfix;
    char *history; /* the KV cache, as text; NULL when empty */
    char *prompt_cache; /* the loaded prompt cache, as text; NULL when none */
    atomic_int abort_requested;
} FakeModel;

/* What the cache holds after a run: what it saw and the answer so far. */
static void keep_history(FakeModel *m, const char *seen, const char *script, size_t from, size_t to) {
    size_t n = strlen(seen), a = to > from ? to - from : 0;
    char *h = malloc(n + a + 1);
    if (!h) return;
    memcpy(h, seen, n);
    memcpy(h + n, script + from, a);
    h[n + a] = '\0';
    free(m->history);
    m->history = h;
}

static void forget_history(FakeModel *m) {
    free(m->history);
    m->history = NULL;
}

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return (v && *v) ? v : fallback;
}

static long env_long(const char *name, long fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    return strtol(v, NULL, 10);
}

static bool mode_is(const char *mode) {
    return strcmp(env_or("FAKE_RKLLM_MODE", "normal"), mode) == 0;
}

static void sleep_ms(long ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Appends one key=value line to the record file; strings are escaped so that
 * every value stays on one line (\n, \\, and control bytes as \xNN). */
static void record_raw(const char *key, const char *value, bool escape) {
    const char *path = getenv("FAKE_RKLLM_RECORD");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "%s=", key);
    if (!value) {
        fputs("(null)", f);
    } else if (!escape) {
        fputs(value, f);
    } else {
        for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
            if (*p == '\n') fputs("\\n", f);
            else if (*p == '\\') fputs("\\\\", f);
            else if (*p < 0x20) fprintf(f, "\\x%02x", *p);
            else fputc(*p, f);
        }
    }
    fputc('\n', f);
    fclose(f);
}

static void record_str(const char *key, const char *value) { record_raw(key, value, true); }

static void record_fmt(const char *key, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    record_raw(key, buf, false);
}

static char *dup_or_empty(const char *s) { return strdup(s ? s : ""); }

RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 40;
    p.n_keep = -1;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = true;
    p.extend_param.enabled_cpus_num = 4;
    p.extend_param.enabled_cpus_mask = 0xF0;
    p.extend_param.n_batch = 1;
    return p;
}

static void record_params(const RKLLMParam *p) {
    record_fmt("abi", "%s", RKLLM_ABI == 12 ? "1.2" : "1.3");
    record_str("model_path", p->model_path);
    record_fmt("max_context_len", "%d", p->max_context_len);
    record_fmt("max_new_tokens", "%d", p->max_new_tokens);
    record_fmt("top_k", "%d", p->top_k);
    record_fmt("n_keep", "%d", p->n_keep);
    record_fmt("top_p", "%.3f", p->top_p);
    record_fmt("temperature", "%.3f", p->temperature);
    record_fmt("repeat_penalty", "%.3f", p->repeat_penalty);
    record_fmt("skip_special_token", "%d", p->skip_special_token);
    record_fmt("is_async", "%d", p->is_async);
#if RKLLM_ABI == 13
    record_fmt("ignore_eos_token", "%d", p->ignore_eos_token);
#else
    record_fmt("img_pointers_null", "%d", !p->img_start && !p->img_end && !p->img_content);
#endif
    record_fmt("base_domain_id", "%d", p->extend_param.base_domain_id);
    record_fmt("embed_flash", "%d", p->extend_param.embed_flash);
    record_fmt("enabled_cpus_num", "%d", p->extend_param.enabled_cpus_num);
    record_fmt("enabled_cpus_mask", "%u", p->extend_param.enabled_cpus_mask);
    record_fmt("n_batch", "%d", p->extend_param.n_batch);
    record_fmt("use_cross_attn", "%d", p->extend_param.use_cross_attn);
}

/* Takes the FAKE_RKLLM_LOCK lock for the rest of the process's life: the
 * kernel drops it only when the process is gone (exit, abort or SIGKILL), so
 * a process that finds it held overlaps with one still alive. */
static void claim_npu(void) {
    static int lock_fd = -1;
    record_fmt("pid", "%ld", (long)getpid());
    const char *path = getenv("FAKE_RKLLM_LOCK");
    if (!path || !*path || lock_fd >= 0) return;
    lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0) {
        record_fmt("npu_lock_error", "%s", path);
        return;
    }
    if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) record_fmt("npu_busy", "%ld", (long)getpid());
}

static int init_common(LLMHandle *handle, RKLLMParam *param, LLMResultCallback cb, void *userdata) {
    if (!handle || !param || !cb) {
        fprintf(stderr, "E rkllm: invalid arguments to rkllm_init\n");
        return -1;
    }
    *handle = NULL;
    record_params(param);
    long limit = env_long("FAKE_RKLLM_CONTEXT_LIMIT", 4096);
    if (env_long("RKLLM_LOG_LEVEL", 0) >= 1) {
        fprintf(stderr, "I rkllm: rkllm-runtime version: %s, rknpu driver version: 0.9.8, platform: RK3588\n",
                RKLLM_VERSION);
        fprintf(stderr, "I rkllm: loading rkllm model from %s\n", param->model_path);
        fprintf(stderr,
                "I rkllm: rkllm-toolkit version: %s, max_context_limit: %ld, npu_core_num: 3, "
                "target_platform: RK3588, model_dtype: W8A8\n",
                RKLLM_VERSION, limit);
    }
    sleep_ms(env_long("FAKE_RKLLM_INIT_DELAY_MS", 0));
    /* A line on stdout too: real runtimes are not consistent about which stream they use. */
    printf("I rkllm: fake runtime %s initialising\n", RKLLM_VERSION);

    if (mode_is("platform_mismatch")) {
        fprintf(stderr, "E rkllm: the target_platform does not match: model is for RK3576, this is RK3588\n");
        return -1;
    }
    if (mode_is("npu_oom")) {
        fprintf(stderr, "E RKNN: failed to malloc npu memory, size: 1073741824, flags: 0x2\n");
        fprintf(stderr, "E rkllm: load model failed\n");
        return -1;
    }
    if (mode_is("unknown_platform")) {
        fprintf(stderr, "E rkllm: Platform error! Your platform is unknown\n");
        return -1;
    }
    if (mode_is("init_error")) {
        fprintf(stderr, "E rkllm: something the worker has never seen\n");
        return -1;
    }
    FILE *model = fopen(param->model_path ? param->model_path : "", "rb");
    if (!model) {
        fprintf(stderr, "E rkllm: failed to open model file %s\n", param->model_path);
        return -1;
    }
    fclose(model);

    FakeModel *m = calloc(1, sizeof *m);
    if (!m) return -1;
    m->model_path = dup_or_empty(param->model_path);
    m->max_context_len = param->max_context_len;
    m->max_new_tokens = param->max_new_tokens;
    m->callback = cb;
    m->init_userdata = userdata;
    atomic_init(&m->abort_requested, 0);
    *handle = m;

    /* Like runtimes before 1.2: report the failure on stderr and still return 0. */
    if (mode_is("invalid_model")) {
        fprintf(stderr, "E rkllm: invalid rkllm model!\n");
        record_fmt("init_returned", "0");
        return 0;
    }
    record_fmt("init", "ok");
    return 0;
}

#if RKLLM_ABI == 12
int rkllm_init(LLMHandle *handle, RKLLMParam *param, LLMResultCallback callback) {
    claim_npu();
    record_fmt("callback_kind", "function");
    return init_common(handle, param, callback, NULL);
}
#else
int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMCallback *callback) {
    claim_npu();
    if (!callback) {
        fprintf(stderr, "E rkllm: callback struct is null\n");
        return -1;
    }
    record_fmt("callback_kind", "struct");
    record_fmt("callback_extras_null", "%d",
               !callback->tokenizer_callback && !callback->embed_callback);
    return init_common(handle, param, callback->result_callback, callback->result_userdata);
}
#endif

int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt, const char *prompt_prefix,
                            const char *prompt_postfix) {
    FakeModel *m = handle;
    if (!m) return -1;
    free(m->system_prompt);
    free(m->prompt_prefix);
    free(m->prompt_postfix);
    m->system_prompt = dup_or_empty(system_prompt);
    m->prompt_prefix = dup_or_empty(prompt_prefix);
    m->prompt_postfix = dup_or_empty(prompt_postfix);
    record_str("chat_system", m->system_prompt);
    record_str("chat_prefix", m->prompt_prefix);
    record_str("chat_postfix", m->prompt_postfix);
    return 0;
}

static bool is_continuation_byte(unsigned char c) { return (c & 0xC0) == 0x80; }

/* Longest k such that script[0..k) is a suffix of prompt. */
static size_t continuation_point(const char *prompt, const char *script) {
    size_t plen = strlen(prompt), slen = strlen(script);
    size_t max = plen < slen ? plen : slen;
    for (size_t k = max; k > 0; k--) {
        if (memcmp(prompt + plen - k, script, k) == 0) return k;
    }
    return 0;
}

static int deliver(FakeModel *m, void *userdata, const char *text, int32_t token_id, LLMCallState state,
                   const RKLLMPerfStat *perf) {
    RKLLMResult r;
    memset(&r, 0, sizeof r);
    r.text = text;
    r.token_id = token_id;
    if (perf) r.perf = *perf;
    int ret = m->callback(&r, userdata, state);
    if (ret != 0) record_fmt("callback_returned", "%d", ret);
    return ret;
}

int rkllm_run(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    FakeModel *m = handle;
    if (!m || !input || !infer) return -1;
    atomic_store(&m->abort_requested, 0);

    const char *prompt = input->input_type == RKLLM_INPUT_PROMPT ? input->prompt_input : NULL;
    record_str("run_role", input->role);
    record_fmt("run_enable_thinking", "%d", input->enable_thinking);
    record_fmt("run_input_type", "%d", (int)input->input_type);
    record_str("run_prompt", prompt);
    record_fmt("run_mode", "%d", (int)infer->mode);
    record_fmt("run_keep_history", "%d", infer->keep_history);
#if RKLLM_ABI == 13
    record_fmt("run_max_new_tokens", "%d", infer->max_new_tokens);
    record_fmt("run_sampling_null", "%d", infer->sampling_params == NULL);
#endif
    if (!prompt) return -1;

    /* What the model would see: system + prefix + input + postfix, or, when
     * the cache holds earlier turns and this run keeps history, those turns
     * + prefix + input + postfix. */
    const char *sys = m->system_prompt ? m->system_prompt : "";
    const char *pre = m->prompt_prefix ? m->prompt_prefix : "";
    const char *post = m->prompt_postfix ? m->prompt_postfix : "";
    bool from_cache = infer->keep_history && m->history;
    const char *base = from_cache ? m->history : sys;
    size_t cached_len = from_cache ? strlen(m->history) : 0;
    size_t full_len = strlen(base) + strlen(pre) + strlen(prompt) + strlen(post);
    char *full = malloc(full_len + 1);
    if (!full) return -1;
    strcpy(full, base);
    strcat(full, pre);
    strcat(full, prompt);
    strcat(full, post);
    record_str("run_full_prompt", full);
    record_str("run_seen", full);
    record_fmt("run_history_chars", "%zu", cached_len);
    if (!infer->keep_history) forget_history(m);

    /* A loaded prompt cache spares the prefill of the prompt's start that it
     * holds (a run continuing its history has that in the history already). */
    size_t prompt_cache_chars = 0;
    if (!from_cache && m->prompt_cache) {
        const char *a = full, *b = m->prompt_cache;
        while (*a && *a == *b) a++, b++;
        prompt_cache_chars = (size_t)(a - full);
    }
    record_fmt("run_prompt_cache_chars", "%zu", prompt_cache_chars);
    if (infer->prompt_cache_params && infer->prompt_cache_params->save_prompt_cache) {
        const char *path = infer->prompt_cache_params->prompt_cache_path;
        record_str("prompt_cache_save", path);
        if (!path || strcmp(env_or("FAKE_RKLLM_PROMPT_CACHE", "normal"), "no_save") != 0) {
            FILE *f = path ? fopen(path, "wb") : NULL;
            if (!f) {
                fprintf(stderr, "E rkllm: cannot save the prompt cache to %s\n", path ? path : "(null)");
                free(full);
                return -1;
            }
            fprintf(f, "FAKE-RKLLM-PROMPT-CACHE 1\n%s\n%s", m->model_path, full);
            fclose(f);
        }
    }

    if (m->max_context_len > env_long("FAKE_RKLLM_CONTEXT_LIMIT", 4096)) {
        /* What older runtimes did after accepting a context above the model's limit. */
        fprintf(stderr, "E rkllm: context buffer overflow\n");
        abort();
    }

    const char *script = env_or("FAKE_RKLLM_TEXT", DEFAULT_SCRIPT);
    size_t start = continuation_point(full, script);
    record_fmt("run_continue_at", "%zu", start);
    size_t len = strlen(script);
    long chunk = env_long("FAKE_RKLLM_CHUNK", 3);
    if (chunk < 1) chunk = 1;
    long delay = env_long("FAKE_RKLLM_DELAY_MS", 10);
    long limit = m->max_new_tokens;
#if RKLLM_ABI == 13
    if (infer->max_new_tokens > 0) limit = infer->max_new_tokens;
#endif
    long after = env_long("FAKE_RKLLM_AFTER", mode_is("crash") ? 2 : mode_is("run_error") ? 1 : 0);
    bool leak = mode_is("leak");
    long leak_mb = env_long("FAKE_RKLLM_LEAK_MB", 32);
    long leak_cap = env_long("FAKE_RKLLM_LEAK_CAP_MB", 4096);
    long leaked = 0;

    double t0 = now_ms();
    int pieces = 0;
    int waiting = 0;
    size_t pos = start;
    char piece[64];
    for (;;) {
        if (pos >= len) {
            if (!leak || len == 0) break;
            pos = 0; /* leak mode talks forever */
        }
        if (limit > 0 && pieces >= limit) break;
        if (atomic_load(&m->abort_requested)) {
            record_fmt("run_aborted_after", "%d", pieces);
            if (infer->keep_history) keep_history(m, full, script, start, pos);
            free(full);
            return 0; /* like the runtime: no FINISH after an abort */
        }
        if (pieces == after) {
            if (mode_is("hang")) {
                record_fmt("run_hung_after", "%d", pieces);
                for (;;) sleep_ms(1000); /* deaf to rkllm_abort, as a stuck NPU job is */
            }
            if (mode_is("crash")) {
                fprintf(stderr, "E rkllm: fake crash\n");
                abort();
            }
            if (mode_is("run_error")) {
                deliver(m, userdata, NULL, -1, RKLLM_RUN_ERROR, NULL);
                free(full);
                return -1;
            }
        }
        sleep_ms(pieces == 0 && mode_is("slow_first") ? env_long("FAKE_RKLLM_FIRST_DELAY_MS", 2000) : delay);
        if (leak && leaked + leak_mb <= leak_cap) {
            size_t bytes = (size_t)leak_mb << 20;
            char *block = malloc(bytes);
            if (block) {
                memset(block, 0x5a, bytes);
                leaked += leak_mb;
            }
        }
        size_t n = (size_t)chunk;
        if (n > len - pos) n = len - pos;
        if (n > sizeof piece - 1) n = sizeof piece - 1;
        memcpy(piece, script + pos, n);
        piece[n] = '\0';
        pos += n;
        bool split = pos < len && is_continuation_byte((unsigned char)script[pos]);
        deliver(m, userdata, piece, 1000 + pieces, split ? RKLLM_RUN_WAITING : RKLLM_RUN_NORMAL, NULL);
        pieces++;
        waiting += split;
    }

    RKLLMPerfStat perf;
    memset(&perf, 0, sizeof perf);
    perf.prefill_time_ms = 12.5f;
    /* Only what the cache did not hold is prefilled. */
    perf.prefill_tokens = (int)((full_len - (from_cache ? cached_len : prompt_cache_chars)) / 4) + 1;
    if (infer->keep_history) keep_history(m, full, script, start, pos);
    perf.generate_time_ms = (float)(now_ms() - t0);
    perf.generate_tokens = pieces;
    perf.memory_usage_mb = 100.0f;
    record_fmt("run_prefill_tokens", "%d", perf.prefill_tokens);
    record_fmt("run_generate_tokens", "%d", perf.generate_tokens);
    record_fmt("run_waiting_pieces", "%d", waiting);
    deliver(m, userdata, NULL, -1, RKLLM_RUN_FINISH, &perf);
    free(full);
    return 0;
}

int rkllm_run_async(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    (void)handle;
    (void)input;
    (void)infer;
    (void)userdata;
    fprintf(stderr, "E rkllm: rkllm_run_async is not provided by the test runtime\n");
    return -1;
}

int rkllm_abort(LLMHandle handle) {
    FakeModel *m = handle;
    record_fmt("abort", "1");
    if (!m) return -1;
    atomic_store(&m->abort_requested, 1);
    return 0;
}

int rkllm_is_running(LLMHandle handle) {
    (void)handle;
    return 0;
}

int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos, int *end_pos) {
    FakeModel *m = handle;
    (void)start_pos;
    (void)end_pos;
    if (!m) return -1;
    record_fmt("clear_kv_cache", "%d", keep_system_prompt);
    forget_history(m);
    if (keep_system_prompt && m->system_prompt && *m->system_prompt) m->history = strdup(m->system_prompt);
    return 0;
}

int rkllm_load_prompt_cache(LLMHandle handle, const char *prompt_cache_path) {
    FakeModel *m = handle;
    if (!m || !prompt_cache_path) return -1;
    record_str("prompt_cache_load", prompt_cache_path);
    FILE *f = fopen(prompt_cache_path, "rb");
    char *text = NULL;
    size_t len = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (n >= 0 && (text = malloc((size_t)n + 1))) {
            len = fread(text, 1, (size_t)n, f);
            text[len] = '\0';
        }
        fclose(f);
    }
    /* The header, then this model's path on a line of its own. */
    const char *magic = "FAKE-RKLLM-PROMPT-CACHE 1\n";
    size_t mlen = strlen(magic), plen = strlen(m->model_path);
    bool ok = text && len > mlen + plen && memcmp(text, magic, mlen) == 0 &&
              memcmp(text + mlen, m->model_path, plen) == 0 && text[mlen + plen] == '\n' &&
              strcmp(env_or("FAKE_RKLLM_PROMPT_CACHE", "normal"), "refuse") != 0;
    if (!ok) {
        fprintf(stderr, "E rkllm: failed to load prompt cache from %s\n", prompt_cache_path);
        record_fmt("prompt_cache_refused", "1");
        free(text);
        return -1;
    }
    free(m->prompt_cache);
    m->prompt_cache = strdup(text + mlen + plen + 1);
    free(text);
    record_fmt("prompt_cache_loaded_chars", "%zu", strlen(m->prompt_cache));
    return 0;
}

int rkllm_release_prompt_cache(LLMHandle handle) {
    FakeModel *m = handle;
    if (!m) return -1;
    record_fmt("prompt_cache_released", "1");
    free(m->prompt_cache);
    m->prompt_cache = NULL;
    return 0;
}

int rkllm_destroy(LLMHandle handle) {
    FakeModel *m = handle;
    record_fmt("destroy", "1");
    if (!m) return -1;
    free(m->model_path);
    free(m->system_prompt);
    free(m->prompt_prefix);
    free(m->prompt_postfix);
    free(m->history);
    free(m->prompt_cache);
    free(m);
    return 0;
}
