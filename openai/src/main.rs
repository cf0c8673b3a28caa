//! `rocksteady-openai`: the OpenAI-compatible HTTP API process (arguments,
//! logging, signals, keys).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

/// Exit status for errors a restart cannot fix (bad config, bad keys file),
/// so systemd can be told not to restart-loop (`RestartPreventExitStatus=78`).
const EXIT_CONFIG: u8 = 78;

/// rocksteady OpenAI-compatible API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The rocksteady config file; this process reads its [openai] section.
    #[arg(long, short, default_value = "/etc/rocksteady/config.toml")]
    config: PathBuf,
    /// Check the config file and the keys, then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    client::service::init_logging("info");
    match real_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "rocksteady-openai: {}",
                client::service::one_line(err.chain())
            );
            if err
                .chain()
                .any(<dyn std::error::Error>::is::<openai_gateway::ConfigError>)
            {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn real_main(args: &Args) -> anyhow::Result<()> {
    let config = openai_gateway::Config::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let keys = config
        .load_keys(credentials.as_deref())
        .context("loading the API keys")?;
    if args.check {
        println!(
            "{}: [openai] section is fine; {} API keys",
            args.config.display(),
            keys.len()
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let shutdown = client::service::shutdown_on_signal();
        openai_gateway::run(config, keys, listener, shutdown)
            .await
            .context("serving the API")
    })
}
