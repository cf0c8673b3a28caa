//! Integration tests: the real supervisor, real worker processes and the
//! real default model.

mod broken_models;
mod config;
mod instance;
mod kv_cache;
mod limits;
mod metrics;
mod npu_telemetry;
mod operate;
mod pinning;
mod relay;
mod shadow;
mod supervision;
mod worker_user;

use test_kit::harness as support;
