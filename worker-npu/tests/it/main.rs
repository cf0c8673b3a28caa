//! Integration tests of the NPU worker: struct layouts, the real binary
//! driven over a socket with the fake RKLLM runtime
//! (tests/fake-rkllm/fake_rkllm.c, built by build.rs for both layouts),
//! load failures, the artifact check and the telemetry readers.

mod artifact;
mod conversation;
mod failures;
mod layout;
mod support;
mod telemetry;
