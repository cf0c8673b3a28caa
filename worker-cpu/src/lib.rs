//! rocksteady's CPU worker: serves one GGUF model through llama.cpp to the
//! supervisor over the worker conversation of [`proto::worker`].

pub mod engine;
pub mod fault;
pub mod serve;
pub mod standalone;
pub mod template;
pub mod utf8;
