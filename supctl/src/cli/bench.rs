//! `supctl bench`: runs a benchmark profile against the supervisor (or,
//! with `--from`, only compares two result files) and reports it as
//! Markdown; the work is in [`crate::bench`].

use std::io::Write;
use std::path::Path;

use crate::bench::{self, BenchConfig, BenchError, BenchOptions, Progress};
use supervisor::config::Config;

/// How `supctl bench` ended, for its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchExit {
    /// Everything measured, nothing flagged.
    Clean,
    /// A known answer was missed, a figure regressed or an output drifted.
    Flagged,
}

/// Runs the benchmark with a progress bar on stderr (when it is a
/// terminal); the report goes to `out`.
///
/// # Errors
/// [`BenchError`] when the run is refused or cannot finish.
pub async fn bench(
    config: &Config,
    bench_config: &BenchConfig,
    opts: &BenchOptions,
    out: &mut dyn Write,
) -> Result<BenchExit, BenchError> {
    if opts.profile.as_deref() == Some(bench::conversation::CONVERSATION)
        && bench_config
            .profile(bench::conversation::CONVERSATION)
            .is_none()
    {
        bench::conversation::run(config, bench_config, opts, out).await?;
        return Ok(BenchExit::Clean);
    }
    let progress = Progress::stderr();
    let outcome = bench::run(config, bench_config, opts, &progress, out).await?;
    Ok(if outcome.flagged() {
        BenchExit::Flagged
    } else {
        BenchExit::Clean
    })
}

/// Compares `current` with `previous` and writes the comparison to `out`.
///
/// # Errors
/// Either file cannot be read as a result.
pub fn compare_only(
    previous: &Path,
    current: &Path,
    threshold_pct: f64,
    out: &mut dyn Write,
) -> Result<BenchExit, BenchError> {
    let c = bench::compare_files(previous, current, threshold_pct)?;
    let _ = out.write_all(bench::compare::render(&c).as_bytes());
    let _ = out.flush();
    Ok(if c.flagged() {
        BenchExit::Flagged
    } else {
        BenchExit::Clean
    })
}
