//! Model-file checks shared by the workers (before they load a model), the
//! supervisor's config (which chat template a slot will use) and `supctl
//! check-model`: find a broken download or a wrong file before a runtime
//! turns it into an obscure crash.
//!
//! - [`gguf`]: llama.cpp's GGUF header and metadata
//! - [`rkllm`]: RKLLM files for the NPU, and the board's platform
//! - [`template`]: which chat template a model gets
//!
//! It reads files only: it must not pull in an inference engine (llama.cpp,
//! the RKLLM runtime) or any socket code just to read a file header, and it
//! is not wire protocol (that is `proto`, whose worker exit codes it maps
//! findings to).

pub mod gguf;
pub mod rkllm;
pub mod template;
