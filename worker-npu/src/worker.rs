//! The NPU worker as a [`worker_kit::Engine`]: the conversation, the token
//! stream, the figures and the exit codes are the worker runtime's; this
//! module loads an RKLLM model on the runtime's engine thread, renders
//! requests into the runtime's prompt, and tears the model down before the
//! next one (one model per process: the NPU memory it holds may be needed).

use std::time::{Duration, Instant};

use model_check::rkllm::Platform;
use proto::chat::Backend;
use proto::worker::{Load, WorkerErrorKind};
use worker_kit::{Finish, GenFailure, Job, LoadFailure, Model, Serve, Served, TokenStream};

use crate::chat;
use crate::config::LoadSettings;
use crate::engine::{self, Engine};

/// How long the end of a model waits for the runtime to let go of it (its
/// last run and abort calls to return) before leaving it alone.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// RKLLM as a worker engine.
#[derive(Debug)]
pub struct NpuEngine {
    board: Option<Platform>,
}

impl NpuEngine {
    /// An engine for a machine whose SoC is `board` (when known), which the
    /// model file's target platform is checked against.
    pub fn new(board: Option<Platform>) -> Self {
        Self { board }
    }
}

impl worker_kit::Engine for NpuEngine {
    fn backend(&self) -> Backend {
        Backend::Npu
    }

    fn load(&mut self, load: &Load, serve: Serve<'_>) -> Result<Served, LoadFailure> {
        let started = Instant::now();
        let failure = |err: engine::LoadError| LoadFailure {
            exit_code: err.exit_code(),
            message: err.to_string(),
        };
        let settings =
            LoadSettings::from_load(load).map_err(|e| failure(engine::LoadError::from(e)))?;
        let (engine, report) = engine::load(&settings, self.board).map_err(failure)?;
        tracing::info!(
            model = %report.model.name,
            abi = %report.abi,
            runtime = report.init.runtime_version.as_deref().unwrap_or("unknown"),
            family = %engine.settings().family,
            cpu_mask = format_args!("{:#x}", engine.settings().init.enabled_cpus_mask),
            init_ms = started.elapsed().as_millis(),
            "NPU model initialised"
        );
        let mut model = NpuModel { engine };
        let served = serve.serve(report.model, &mut model);
        // Only the runtime's last references remain (a returning run, an
        // abort call); a model still in use by a run that never ends is left
        // alone: destroying it could hang.
        if let Err(stuck) = model.engine.destroy(RELEASE_WAIT) {
            std::mem::forget(stuck);
            return Err(LoadFailure::transient(
                "the previous model is still in use by a run that does not end; restart the worker",
            ));
        }
        Ok(served)
    }
}

struct NpuModel {
    engine: Engine,
}

impl Model for NpuModel {
    fn generate(&mut self, job: &Job, out: &TokenStream) -> Result<Finish, GenFailure> {
        let settings = self.engine.settings();
        let g = &job.generate;
        let prompt = chat::render(
            settings.family,
            &settings.overrides,
            &g.messages,
            &g.assistant_prefix,
        )
        .map_err(|err| GenFailure::new(WorkerErrorKind::BadRequest, err.to_string()))?;
        tracing::debug!(
            request_id = g.request_id,
            limit = job.limit,
            "generation starts"
        );
        self.engine.run(&prompt, job.limit, out)
    }
}
