//! Integration tests: the real supervisor, real worker processes and the
//! real default model.

mod broken_models;
mod config;
mod instance;
mod kv_cache;
mod limits;
mod npu_telemetry;
mod operate;
mod relay;
mod supervision;

use test_kit::harness as support;
