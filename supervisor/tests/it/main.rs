//! Integration tests: the real supervisor, real worker processes and the
//! real default model.

mod bench;
mod broken_models;
mod cli;
mod instance;
mod limits;
mod operate;
mod relay;
mod supervision;
mod support;
