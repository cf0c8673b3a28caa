//! Model artifact checks shared by the workers (before they load a model) and
//! `supctl check-model`: find a broken download or a wrong file before a
//! runtime turns it into an obscure crash.
//!
//! These are not wire messages; they live in `proto` because it is the one
//! crate every rocksteady process already shares, and none of them may pull in
//! an inference engine just to read a file header.

pub mod gguf;
pub mod rkllm;
pub mod template;
