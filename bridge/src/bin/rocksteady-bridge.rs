//! `rocksteady-bridge`: the cluster bridge process (arguments, logging, signals).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

/// Exit status for a config a restart cannot fix (`RestartPreventExitStatus=78`).
const EXIT_CONFIG: u8 = 78;

/// rocksteady cluster bridge: serves this board's supervisor to a NATS work queue.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The rocksteady config file; the bridge reads its [bridge] section.
    #[arg(long, short, default_value = "/etc/rocksteady/config.toml")]
    config: PathBuf,
    /// Check the config file, then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match bridge::BridgeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rocksteady-bridge: {:#}", anyhow::Error::from(e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        println!(
            "config ok: board {}, classes {:?}",
            config.board,
            config.classes.keys().collect::<Vec<_>>()
        );
        return ExitCode::SUCCESS;
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rocksteady-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: bridge::BridgeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]).context("signals")?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if signals.next().await.is_some() {
                tracing::info!("stopping");
                stop.cancel();
            }
        });
        bridge::run(config, shutdown).await
    })
}
