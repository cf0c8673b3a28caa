//! Integration tests: the real supervisor, real worker processes and the
//! real default model.

mod broken_models;
mod cli;
mod relay;
mod supervision;
mod support;
