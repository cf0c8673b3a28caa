//! One measured request through the client socket, with the time each
//! event arrived, and a sampler that watches the worker's memory and the
//! board's temperature while it runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::chat::{Backend, ChatMessage, GenParams, GenStats};
use proto::client::SupervisorToClient;

use super::BenchError;
use crate::client::ChatClient;
use supervisor::telemetry::{memory, thermal};

/// A completed request as the client saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The whole answer.
    pub text: String,
    /// Backend that finished it.
    pub backend: Backend,
    /// Model that finished it.
    pub model: String,
    /// Milliseconds from submit to each token event.
    pub token_ms: Vec<f64>,
    /// Milliseconds from submit to done.
    pub done_ms: f64,
    /// The supervisor's figures.
    pub stats: GenStats,
    /// The answer moved to another worker on the way.
    pub failed_over: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Request {
    /// Submit to first token (ms).
    pub fn ttft_ms(&self) -> Option<f64> {
        self.token_ms.first().copied()
    }

    /// Tokens after the first over the time after the first (tokens/s):
    /// the decode rate as a reader of the stream sees it.
    pub fn decode_tps(&self) -> Option<f64> {
        decode_rate(&self.token_ms)
    }

    /// Gaps between consecutive tokens (ms).
    pub fn gaps_ms(&self) -> Vec<f64> {
        gaps(&self.token_ms)
    }
}

/// Decode rate from token arrival times (ms): `None` for fewer than two tokens.
pub fn decode_rate(token_ms: &[f64]) -> Option<f64> {
    let (first, last) = (token_ms.first()?, token_ms.last()?);
    let span = last - first;
    if token_ms.len() < 2 || span <= 0.0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = (token_ms.len() - 1) as f64;
    Some(n / (span / 1000.0))
}

/// Gaps between consecutive arrival times.
pub fn gaps(token_ms: &[f64]) -> Vec<f64> {
    token_ms.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Sends one request on `client` and follows it to its end, within `limit`.
///
/// # Errors
/// [`BenchError::Request`] when the supervisor ends it with an error,
/// [`BenchError::Timeout`] past `limit`, connection failures.
pub async fn request(
    client: &mut ChatClient,
    messages: Vec<ChatMessage>,
    params: GenParams,
    limit: Duration,
) -> Result<Request, BenchError> {
    let submitted = Instant::now();
    let deadline = tokio::time::Instant::from_std(submitted + limit);
    let id = client.submit(messages, params).await?;
    let mut token_ms = Vec::new();
    let mut failed_over = false;
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, client.next_event()).await else {
            let _ = client.cancel(id).await;
            return Err(BenchError::Timeout {
                what: "a request".into(),
                seconds: limit.as_secs_f64(),
            });
        };
        let event = event?;
        let at = ms(submitted.elapsed());
        if event.request_id() != id {
            continue;
        }
        match event {
            SupervisorToClient::Token(_) => token_ms.push(at),
            SupervisorToClient::Failover(_) => failed_over = true,
            SupervisorToClient::Queued(_)
            | SupervisorToClient::Started(_)
            | SupervisorToClient::Models(_) => {}
            SupervisorToClient::Done(done) => {
                return Ok(Request {
                    text: done.text,
                    backend: done.backend,
                    model: done.model,
                    token_ms,
                    done_ms: at,
                    stats: done.stats,
                    failed_over,
                });
            }
            SupervisorToClient::Error(e) => {
                return Err(BenchError::Request {
                    kind: format!("{:?}", e.kind),
                    message: e.message,
                })
            }
        }
    }
}

/// Highest figures seen while sampling.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Peaks {
    /// Highest RssAnon (KiB).
    pub rss_anon_kb: Option<u64>,
    /// Highest VmHWM (KiB).
    pub vm_hwm_kb: Option<u64>,
    /// Hottest zone (degrees C).
    pub hottest_c: Option<f64>,
}

impl Peaks {
    /// The higher of each figure.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        fn hi<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b > a { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        Self {
            rss_anon_kb: hi(self.rss_anon_kb, other.rss_anon_kb),
            vm_hwm_kb: hi(self.vm_hwm_kb, other.vm_hwm_kb),
            hottest_c: hi(self.hottest_c, other.hottest_c),
        }
    }
}

/// Reads the worker's `/proc/<pid>/status` and the thermal zones on a
/// thread of its own every `interval`, so the reads never delay the token
/// stream being timed.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Peaks>,
}

impl Sampler {
    /// Starts sampling `pid` (when known) and the zones.
    pub fn start(
        proc_root: PathBuf,
        sysfs_root: PathBuf,
        pid: Option<u32>,
        interval: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peaks = Peaks::default();
            loop {
                let mem = pid.and_then(|pid| memory::sample(&proc_root, pid));
                let now = Peaks {
                    rss_anon_kb: mem.map(|m| m.rss_anon_kb),
                    vm_hwm_kb: mem.map(|m| m.vm_hwm_kb),
                    hottest_c: thermal::hottest(&thermal::read_zones(&sysfs_root, &[])),
                };
                peaks = peaks.max(now);
                // One last sample after the stop request, so a short request
                // still gets a reading taken at its end.
                if flag.load(Ordering::Acquire) {
                    return peaks;
                }
                std::thread::park_timeout(interval);
            }
        });
        Self { stop, handle }
    }

    /// Stops sampling and returns the peaks.
    pub fn finish(self) -> Peaks {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_gaps_from_arrival_times() {
        assert_eq!(decode_rate(&[]), None);
        assert_eq!(decode_rate(&[100.0]), None);
        let t = [100.0, 150.0, 200.0, 250.0, 300.0];
        let rate = decode_rate(&t).unwrap();
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
        assert_eq!(gaps(&t), [50.0; 4]);
    }

    #[test]
    fn sampler_reads_a_live_process() {
        let s = Sampler::start(
            "/proc".into(),
            "/nonexistent".into(),
            Some(std::process::id()),
            Duration::from_millis(5),
        );
        std::thread::sleep(Duration::from_millis(20));
        let p = s.finish();
        assert!(p.rss_anon_kb.is_some_and(|kb| kb > 0));
        assert!(p.vm_hwm_kb >= p.rss_anon_kb);
        assert_eq!(p.hottest_c, None);
    }
}
