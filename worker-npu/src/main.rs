//! The `worker-npu` binary: started by the supervisor as
//! `worker-npu --socket PATH`; serves one RKLLM model until the supervisor
//! says stop or goes away.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// rocksteady NPU worker (RKLLM runtime).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket the supervisor listens on for this worker.
    #[arg(long)]
    socket: PathBuf,
    /// sysfs root (the SoC is read from its device tree).
    #[arg(long, default_value = "/sys")]
    sysfs_root: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any thread exists: it sets an environment variable.
    worker_npu::prepare_environment();
    let log = worker_npu::log_sink().context("duplicating stderr for the log")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(Mutex::new(log))
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let board = model_check::rkllm::read_soc(&args.sysfs_root);
    let software = concat!("worker-npu ", env!("CARGO_PKG_VERSION"));
    let engine = worker_npu::NpuEngine::new(board);
    let exit = runtime.block_on(worker_kit::run(&args.socket, software, engine));
    // Without exit handlers: the runtime's exit-time cleanup can hang while
    // one of its runs is stuck.
    worker_kit::exit(exit)
}
