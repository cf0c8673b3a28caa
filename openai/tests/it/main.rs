//! Integration tests of the OpenAI-compatible front door: a real supervisor
//! with real CPU workers on the real model, driven by the official `openai`
//! Python package and by raw HTTP.

mod bad_input;
mod client;
mod failures;
mod support;
