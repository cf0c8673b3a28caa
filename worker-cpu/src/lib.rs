//! rocksteady's CPU worker: serves one GGUF model through llama.cpp to the
//! supervisor. The conversation, UTF-8 reassembly, figures and exit codes
//! are `worker_kit`'s; this crate owns only llama.cpp and its thread.
//!
//! It must not carry test-only behaviour: fault injection lives in
//! `test-kit`'s fake worker, never in the binary installed on the board.
//!
//! - [`cache`]: which KV-cache sequence a conversation uses, what is reused, what is evicted
//! - [`engine`]: llama.cpp as a [`worker_kit::Engine`]
//! - [`standalone`]: one generation without a supervisor

pub mod cache;
pub mod engine;
pub mod standalone;
pub mod template;
