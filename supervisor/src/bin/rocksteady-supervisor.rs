//! `rocksteady-supervisor`: the daemon. Parses arguments, sets up logging and
//! signals, and runs [`supervisor::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use supervisor::config::{Config, DEFAULT_PATH};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "rocksteady supervisor: runs and watches the inference workers"
)]
struct Cli {
    /// Config file.
    #[arg(long, default_value = DEFAULT_PATH, env = "ROCKSTEADY_CONFIG")]
    config: PathBuf,
    /// Check the config file and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    supervisor::client::service::init_logging("info");
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            // EX_CONFIG: systemd's RestartPreventExitStatus=78 does not
            // restart a service whose config cannot work.
            eprintln!("rocksteady-supervisor: {e}");
            std::process::exit(78);
        }
    };
    if cli.check_config {
        println!("{}: ok", cli.config.display());
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])
            .context("installing signal handlers")?;
        let handle = signals.handle();
        let on_signal = shutdown.clone();
        let signal_task = tokio::spawn(async move {
            if let Some(sig) = signals.next().await {
                tracing::info!(signal = sig, "stop requested");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                on_signal.cancel();
            }
        });
        let on_ready: Box<dyn FnOnce() + Send> = Box::new(|| {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        });
        let result = supervisor::run(config, shutdown, Some(on_ready)).await;
        handle.close();
        signal_task.abort();
        if let Err(e @ supervisor::StartError::Lock(supervisor::process::LockError::Held { .. })) =
            &result
        {
            // EX_TEMPFAIL: not a broken config, and nothing to restart.
            eprintln!("rocksteady-supervisor: {e}");
            std::process::exit(75);
        }
        if let Err(
            e @ (supervisor::StartError::WorkerUser(_)
            | supervisor::StartError::WorkerUserLookup(_)
            | supervisor::StartError::WorkerAccess(_)),
        ) = &result
        {
            // EX_CONFIG, as for a bad config file: a restart cannot help.
            eprintln!("rocksteady-supervisor: {e}");
            std::process::exit(78);
        }
        result.context("supervisor failed")
    })
}
