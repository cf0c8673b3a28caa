//! rocksteady's test kit: dev-only, never shipped (`publish = false`; no
//! production crate depends on it). It holds the scriptable fake worker,
//! `fake-worker`: a worker binary built on `worker_kit` whose engine follows
//! a script instead of running a model, so tests of routing, relay and
//! supervision need neither llama.cpp nor a model, and faults (crash, hang,
//! slow tokens, memory growth, broken-model exit codes) stay out of the
//! production workers.
//!
//! A slot runs it with `worker = "<path of fake-worker>"`, backend `"cpu"`,
//! and the script in `worker_env = { ROCKSTEADY_FAKE_WORKER = "..." }`
//! (see [`script`] for the keys).
//!
//! - [`script`]: the script's keys, parsed
//! - [`fake`]: the scripted engine
//! - [`harness`]: the integration tests' shared fixtures (binary and model
//!   paths, a supervisor on a private runtime directory, waiting for a
//!   slot, collecting a stream)
//! - [`nats`]: a throwaway `nats-server` with JetStream (free port,
//!   temporary store) for the cluster tests
//!
//! It must never become a dependency of a production crate (only
//! `[dev-dependencies]`), and holds no production logic of its own.

pub mod fake;
pub mod harness;
pub mod nats;
pub mod script;

pub use fake::FakeEngine;
pub use script::{Script, ScriptError, ENV};
