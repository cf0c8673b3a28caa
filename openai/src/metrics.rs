//! The front door's own counters, served as Prometheus text on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

#[derive(Debug, Default)]
struct Counts {
    /// (key name, HTTP status) -> requests.
    requests: BTreeMap<(String, u16), u64>,
    /// (key name, "prompt" | "completion") -> tokens.
    tokens: BTreeMap<(String, &'static str), u64>,
    /// (key name, error type) -> errors.
    errors: BTreeMap<(String, String), u64>,
    /// key name -> streams the client left before the end.
    disconnects: BTreeMap<String, u64>,
    /// key name -> answers that continued on another worker.
    failovers: BTreeMap<String, u64>,
}

/// All counters.
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        f(&mut self.counts.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// One request answered with `status`.
    pub fn request(&self, key: &str, status: u16) {
        self.with(|c| *c.requests.entry((key.to_owned(), status)).or_default() += 1);
    }

    /// Tokens of one completion.
    pub fn tokens(&self, key: &str, prompt: u32, completion: u32) {
        self.with(|c| {
            *c.tokens.entry((key.to_owned(), "prompt")).or_default() += u64::from(prompt);
            *c.tokens.entry((key.to_owned(), "completion")).or_default() += u64::from(completion);
        });
    }

    /// One error of type `kind` (OpenAI's error type or a stream failure).
    pub fn error(&self, key: &str, kind: &str) {
        self.with(|c| {
            *c.errors
                .entry((key.to_owned(), kind.to_owned()))
                .or_default() += 1;
        });
    }

    /// A client left a stream before its end.
    pub fn disconnect(&self, key: &str) {
        self.with(|c| *c.disconnects.entry(key.to_owned()).or_default() += 1);
    }

    /// An answer moved to another worker.
    pub fn failover(&self, key: &str) {
        self.with(|c| *c.failovers.entry(key.to_owned()).or_default() += 1);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        fn esc(v: &str) -> String {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        }
        self.with(|c| {
            let mut out = String::new();
            let _ = writeln!(out, "# HELP rocksteady_openai_requests_total HTTP API requests by key name and status.");
            let _ = writeln!(out, "# TYPE rocksteady_openai_requests_total counter");
            for ((key, status), n) in &c.requests {
                let _ = writeln!(out, "rocksteady_openai_requests_total{{key=\"{}\",status=\"{status}\"}} {n}", esc(key));
            }
            let _ = writeln!(out, "# HELP rocksteady_openai_tokens_total Tokens by key name and kind (prompt, completion).");
            let _ = writeln!(out, "# TYPE rocksteady_openai_tokens_total counter");
            for ((key, kind), n) in &c.tokens {
                let _ = writeln!(out, "rocksteady_openai_tokens_total{{key=\"{}\",kind=\"{kind}\"}} {n}", esc(key));
            }
            let _ = writeln!(out, "# HELP rocksteady_openai_errors_total Errors by key name and type.");
            let _ = writeln!(out, "# TYPE rocksteady_openai_errors_total counter");
            for ((key, kind), n) in &c.errors {
                let _ = writeln!(out, "rocksteady_openai_errors_total{{key=\"{}\",type=\"{}\"}} {n}", esc(key), esc(kind));
            }
            let _ = writeln!(out, "# HELP rocksteady_openai_client_disconnects_total Streams the client left before the end (the request is cancelled).");
            let _ = writeln!(out, "# TYPE rocksteady_openai_client_disconnects_total counter");
            for (key, n) in &c.disconnects {
                let _ = writeln!(out, "rocksteady_openai_client_disconnects_total{{key=\"{}\"}} {n}", esc(key));
            }
            let _ = writeln!(out, "# HELP rocksteady_openai_failovers_total Answers that continued on another worker.");
            let _ = writeln!(out, "# TYPE rocksteady_openai_failovers_total counter");
            for (key, n) in &c.failovers {
                let _ = writeln!(out, "rocksteady_openai_failovers_total{{key=\"{}\"}} {n}", esc(key));
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_by_key_and_status() {
        let m = Metrics::default();
        m.request("ops", 200);
        m.request("ops", 200);
        m.request("anon\"x", 401);
        m.tokens("ops", 10, 5);
        let text = m.render();
        assert!(text.contains("rocksteady_openai_requests_total{key=\"ops\",status=\"200\"} 2"));
        assert!(text.contains("key=\"anon\\\"x\",status=\"401\"} 1"));
        assert!(text.contains("rocksteady_openai_tokens_total{key=\"ops\",kind=\"completion\"} 5"));
    }
}
