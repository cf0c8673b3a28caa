//! `fake-worker`: a worker binary for tests (never shipped). Started by the
//! supervisor as `fake-worker --socket PATH [--cpus LIST]` in place of `worker-cpu`; does
//! what the script in `ROCKSTEADY_FAKE_WORKER` says (see `test_kit::script`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use proto::cpus::CpuSet;
use test_kit::{FakeEngine, Script};

/// rocksteady fake worker (tests only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket the supervisor listens on for this worker.
    #[arg(long)]
    socket: PathBuf,
    /// CPUs to pin to, as the supervisor passes them to a CPU worker.
    #[arg(long)]
    cpus: Option<CpuSet>,
}

fn main() -> anyhow::Result<()> {
    supervisor::client::service::init_logging("info");
    let args = Args::parse();
    // As worker-cpu does, before any thread starts.
    if let Some(cpus) = &args.cpus {
        worker_kit::affinity::pin(cpus).context("pinning to --cpus")?;
    }
    let script = Script::from_env().context("reading the fake worker's script")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let software = concat!("fake-worker ", env!("CARGO_PKG_VERSION"));
    let exit = runtime.block_on(worker_kit::run(
        &args.socket,
        software,
        FakeEngine::new(script),
    ));
    worker_kit::exit(exit)
}
