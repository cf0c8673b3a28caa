//! Integration tests of the NPU worker: struct layouts, the real binary
//! driven over a socket with the fake RKLLM runtime
//! (tests/fake-rkllm/fake_rkllm.c, built by build.rs for both layouts),
//! load failures, the artifact check, and the worker
//! under the real supervisor with a fake CPU worker as its fallback.

mod artifact;
mod conversation;
mod failures;
mod history;
mod layout;
mod prompt_cache;
mod support;
mod through_supervisor;
