//! `rocksteady-bridge`: the cluster bridge process (arguments, logging, signals).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

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
    client::service::init_logging("info,async_nats=warn");
    let config = match bridge::BridgeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "rocksteady-bridge: {}",
                client::service::one_line(anyhow::Error::from(e).chain())
            );
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
            eprintln!(
                "rocksteady-bridge: {}",
                client::service::one_line(e.chain())
            );
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
        let shutdown = client::service::shutdown_on_signal();
        bridge::run(config, shutdown).await
    })
}
