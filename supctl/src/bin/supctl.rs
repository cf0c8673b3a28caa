//! `supctl`: the operator's command line for a running supervisor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use proto::admin::{AdminToSupervisor, SupervisorToAdmin};
use proto::chat::{Backend, GenParams};
use supctl::bench::{BenchConfig, BenchOptions};
use supctl::cli::{self, ask::AskOutcome, bench::BenchExit};
use supctl::client::cluster::{NatsTarget, Target};
use supctl::client::link::SupervisorLink;
use supervisor::config::{Config, SupervisorSection, DEFAULT_PATH};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "supctl",
    version,
    about = "Administer the rocksteady supervisor"
)]
struct Cli {
    /// Config file (used to find the sockets).
    #[arg(long, global = true, env = "ROCKSTEADY_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Socket directory; overrides the config file.
    #[arg(long, global = true)]
    runtime_dir: Option<PathBuf>,
    /// Where `ask` and `status --cluster` go: a NATS URL
    /// (nats://host:4222?prefix=...&class=...) for a cluster of boards;
    /// default: the local socket, and for `--cluster` the config's
    /// `[bridge] nats`.
    #[arg(long, global = true, env = "ROCKSTEADY_SUPERVISOR")]
    supervisor: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ask a question; the answer streams as it is generated.
    Ask {
        /// The question.
        prompt: String,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        /// Sampling temperature (0 = greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// Conversation key: requests with the same key go to the worker
        /// that keeps their KV cache (e.g. a Discord reply chain's root id).
        #[arg(long)]
        conversation: Option<String>,
        /// Print every event as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Show workers, routing, queue and temperatures.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Every board of the NATS cluster, from their heartbeats.
        #[arg(long)]
        cluster: bool,
    },
    /// Pin traffic to one backend, or return to automatic routing.
    Failover {
        /// Backend to pin ("npu" or "cpu").
        #[arg(long, conflicts_with = "auto", required_unless_present = "auto")]
        to: Option<Backend>,
        /// Automatic routing: primary when ready, else fallback.
        #[arg(long)]
        auto: bool,
    },
    /// Check a model file (.gguf or .rkllm) without loading it. Exit
    /// status: 0 no problem found, 3 suspect (e.g. converted for another
    /// SoC than --board), 4 the file is broken, 5 it could not be examined.
    CheckModel {
        /// The model file.
        path: PathBuf,
        /// The board's SoC, for .rkllm platform checks (e.g. rk3588).
        #[arg(long)]
        board: Option<String>,
    },
    /// Restart a worker (after its current request unless --now).
    Restart {
        /// Slot ("primary", "fallback") or backend ("npu", "cpu").
        slot: String,
        /// Do not wait for the current request.
        #[arg(long)]
        now: bool,
    },
    /// Run the validation matrix on the live system: memory at peak
    /// context, decode stability, fallback profile under simulated pressure.
    Validate {
        /// Highest acceptable coefficient of variation of decode tokens/s.
        #[arg(long, default_value_t = 0.15)]
        cv_limit: f64,
    },
    /// Benchmark the backends and models of a profile through the
    /// supervisor; Markdown report on stdout, JSON result and SVG chart in
    /// files. Exit status 2: a known answer missed, a regression or drift.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
#[allow(clippy::struct_excessive_bools)] // one per switch
struct BenchArgs {
    /// Profile to run (default: bench.default_profile, the built-in "edge").
    #[arg(long)]
    profile: Option<String>,
    /// Result file (default: <state_dir>/bench/bench-<profile>-<time>.json).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Chart file (default: the result file with .svg).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Earlier result to compare with (default: the newest of the
    /// profile beside the result file).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Compare this result file with --compare instead of running.
    #[arg(long, requires = "compare")]
    from: Option<PathBuf>,
    /// Regression threshold in percent (default: bench.regression_pct).
    #[arg(long)]
    threshold: Option<f64>,
    /// Set the performance CPU governor for the run (root), restored after.
    #[arg(long)]
    tune: bool,
    /// Drop page caches before each cold load (root).
    #[arg(long)]
    drop_caches: bool,
    /// Run each backend and model on a private supervisor started here
    /// (compares the profile's extra models; stop the service first for the NPU).
    #[arg(long)]
    spawn: bool,
    /// Measure the workers as loaded, without a cold restart.
    #[arg(long)]
    warm: bool,
    /// Skip the relay-overhead measurement.
    #[arg(long)]
    no_relay: bool,
    /// Measured requests per prompt (overrides the profile).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    repetitions: Option<u32>,
    /// Backend to measure (repeatable; overrides the profile).
    #[arg(long = "backend")]
    backends: Vec<Backend>,
}

/// The client and admin socket paths: from `--runtime-dir`, else from the
/// config file. A config that cannot be read is an error, not a silent
/// fall-back to the default directory (which would send the command to
/// another supervisor, or report "not running" for the wrong reason).
fn sockets(cli: &Cli) -> anyhow::Result<(PathBuf, PathBuf)> {
    let section = match &cli.runtime_dir {
        Some(dir) => SupervisorSection {
            runtime_dir: dir.clone(),
            ..SupervisorSection::default()
        },
        None => {
            Config::load(&cli.config)
                .with_context(|| {
                    format!(
                        "supctl finds the supervisor's sockets in its config {} (or pass --runtime-dir)",
                        cli.config.display()
                    )
                })?
                .supervisor
        }
    };
    Ok((section.client_socket(), section.admin_socket()))
}

/// `status`: this board's supervisor, or with `--cluster` every board.
async fn status(
    cli: &Cli,
    admin_socket: &Path,
    json: bool,
    cluster: bool,
) -> anyhow::Result<ExitCode> {
    let text = if cluster {
        let target = cluster_target(cli)?;
        let rows = cli::cluster::boards(&target, cli::cluster::LISTEN).await?;
        if json {
            serde_json::to_string_pretty(&rows)? + "\n"
        } else {
            cli::cluster::render(&rows)
        }
    } else {
        let answer = cli::admin_request(admin_socket, &AdminToSupervisor::Status).await?;
        let SupervisorToAdmin::Status(report) = answer else {
            anyhow::bail!("unexpected answer from the supervisor");
        };
        if json {
            serde_json::to_string_pretty(&report)? + "\n"
        } else {
            cli::status::render(&report)
        }
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `ask --supervisor nats://...`: the question goes to a cluster of boards.
async fn ask_cluster(
    target: &str,
    question: cli::ask::Question<'_>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let target = Target::parse(target, credentials.as_deref()).context("--supervisor")?;
    let stop = CancellationToken::new();
    let link = SupervisorLink::start_target(&target, "supctl", stop.clone()).await?;
    let (mut out, mut note) = (std::io::stdout(), std::io::stderr());
    let outcome = cli::ask::ask_link(&link, question, json, &mut out, &mut note).await?;
    stop.cancel();
    Ok(match outcome {
        AskOutcome::Done(_) => ExitCode::SUCCESS,
        AskOutcome::Failed(_) => ExitCode::FAILURE,
    })
}

/// The cluster to list: `--supervisor`, else the config's `[bridge] nats`.
fn cluster_target(cli: &Cli) -> anyhow::Result<NatsTarget> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let text = match &cli.supervisor {
        Some(t) => t.clone(),
        None => Config::load(&cli.config)
            .ok()
            .and_then(|c| c.bridge)
            .and_then(|b| b.get("nats").and_then(|v| v.as_str()).map(str::to_owned))
            .with_context(|| {
                format!(
                    "status --cluster needs --supervisor nats://... or a [bridge] nats setting in {}",
                    cli.config.display()
                )
            })?,
    };
    match Target::parse(&text, credentials.as_deref()).context("the NATS target")? {
        Target::Nats(n) => Ok(*n),
        Target::Unix(_) => anyhow::bail!("status --cluster needs a NATS URL, not a socket path"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("supctl: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: many errors
/// already include their cause's text, which `{:#}` would print again.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // Checking a model file needs no supervisor, so no config either.
    let (client_socket, admin_socket) = match &cli.command {
        Cmd::CheckModel { .. } | Cmd::Status { cluster: true, .. } => {
            (PathBuf::new(), PathBuf::new())
        }
        // A cluster is reached over NATS, not this board's sockets.
        Cmd::Ask { .. } if cli.supervisor.is_some() => (PathBuf::new(), PathBuf::new()),
        _ => sockets(&cli)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Cmd::Ask {
                prompt,
                max_tokens,
                temperature,
                system,
                conversation,
                json,
            } => {
                let params = GenParams {
                    max_tokens,
                    temperature,
                    ..GenParams::default()
                };
                let mut out = std::io::stdout();
                let mut note = std::io::stderr();
                let question = cli::ask::Question {
                    prompt: &prompt,
                    system: system.as_deref(),
                    conversation: conversation.as_deref(),
                    params,
                };
                if let Some(target) = &cli.supervisor {
                    return ask_cluster(target, question, json).await;
                }
                let outcome =
                    cli::ask::ask(&client_socket, question, json, &mut out, &mut note).await?;
                Ok(match outcome {
                    AskOutcome::Done(_) => ExitCode::SUCCESS,
                    AskOutcome::Failed(_) => ExitCode::FAILURE,
                })
            }
            Cmd::Status { json, cluster } => status(&cli, &admin_socket, json, cluster).await,
            Cmd::Failover { to, auto } => {
                let message =
                    cli::failover::failover(&admin_socket, if auto { None } else { to }).await?;
                println!("{message}");
                Ok(ExitCode::SUCCESS)
            }
            Cmd::CheckModel { path, board } => {
                let board = match board {
                    Some(b) => Some(b.parse().map_err(|e| anyhow::anyhow!("--board: {e}"))?),
                    None => None,
                };
                // The config, when there is one, says which template a CPU
                // slot sets for this file; check-model works without it.
                let configured = Config::load(&cli.config)
                    .ok()
                    .and_then(|c| cli::check_model::configured_template(&c, &path));
                let checked = cli::check_model::check_model(&path, board, configured.as_ref());
                print!("{}", checked.text);
                Ok(ExitCode::from(cli::check_model::exit_status(
                    checked.verdict,
                )))
            }
            Cmd::Restart { slot, now } => {
                let message = cli::restart::restart(&admin_socket, &slot, now).await?;
                println!("{message}");
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Validate { cv_limit } => {
                let mut config = Config::load(&cli.config).with_context(|| {
                    format!("validate needs the config file ({})", cli.config.display())
                })?;
                if let Some(dir) = &cli.runtime_dir {
                    config.supervisor.runtime_dir.clone_from(dir);
                }
                let rows = cli::validate::validate(&config, cv_limit).await?;
                print!("{}", cli::validate::render(&rows));
                Ok(if rows.iter().all(|r| r.pass) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Cmd::Bench(args) => bench(&cli.config, cli.runtime_dir.as_deref(), args).await,
        }
    })
}

async fn bench(
    config_path: &Path,
    runtime_dir: Option<&Path>,
    args: BenchArgs,
) -> anyhow::Result<ExitCode> {
    let BenchArgs {
        profile,
        output,
        svg,
        compare,
        from,
        threshold,
        tune,
        drop_caches,
        spawn,
        warm,
        no_relay,
        repetitions,
        backends,
    } = args;
    if let Some(t) = threshold {
        anyhow::ensure!(
            t.is_finite() && t > 0.0,
            "--threshold must be a positive percentage"
        );
    }
    let mut config = Config::load(config_path)
        .with_context(|| format!("supctl bench reads {}", config_path.display()))?;
    if let Some(dir) = runtime_dir {
        config.supervisor.runtime_dir = dir.to_owned();
    }
    let bench_config = BenchConfig::load(config_path)
        .with_context(|| format!("supctl bench reads {}", config_path.display()))?;
    let mut out = std::io::stdout();
    let exit = match (from, compare) {
        (Some(current), Some(previous)) => cli::bench::compare_only(
            &previous,
            &current,
            threshold.unwrap_or(bench_config.regression_pct),
            &mut out,
        )?,
        (_, compare) => {
            let opts = BenchOptions {
                profile,
                output,
                svg,
                compare,
                threshold_pct: threshold,
                tune,
                drop_caches,
                spawn,
                warm,
                no_relay,
                repetitions,
                backends,
            };
            cli::bench::bench(&config, &bench_config, &opts, &mut out).await?
        }
    };
    Ok(match exit {
        BenchExit::Clean => ExitCode::SUCCESS,
        BenchExit::Flagged => ExitCode::from(2),
    })
}
