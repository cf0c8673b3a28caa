//! `rocksteady-gateway`: the Discord bot process (arguments, logging, signals).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

/// Exit status for errors a restart cannot fix (bad token, bad config), so
/// systemd can be told not to restart-loop (`RestartPreventExitStatus=78`).
const EXIT_CONFIG: u8 = 78;

/// rocksteady Discord gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The rocksteady config file; the gateway reads its [gateway] section.
    #[arg(long, short, default_value = "/etc/rocksteady/config.toml")]
    config: PathBuf,
    /// Check the config file and the token, then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // RUST_LOG or a quiet default; interaction tokens are redacted either way.
    gateway::logging::init();
    match real_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let fatal_config = err.chain().any(|cause| {
                cause.is::<gateway::ConfigError>()
                    || matches!(
                        cause.downcast_ref::<gateway::GatewayError>(),
                        Some(
                            gateway::GatewayError::Config(_)
                                | gateway::GatewayError::InvalidToken
                                | gateway::GatewayError::DisallowedIntents
                        )
                    )
            });
            eprintln!(
                "rocksteady-gateway: {}",
                client::service::one_line(err.chain())
            );
            if fatal_config {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn real_main(args: &Args) -> anyhow::Result<()> {
    let config = gateway::Config::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    if args.check {
        println!(
            "{}: [gateway] section and token are fine",
            args.config.display()
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = client::service::shutdown_on_signal();
        gateway::run(config, shutdown)
            .await
            .context("running the Discord gateway")
    })
}
