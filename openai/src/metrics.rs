//! The front door's own counters, served on `/metrics` through the
//! Prometheus project's client (`prometheus-client`): OpenMetrics for a
//! scraper that asks for it, the Prometheus text format otherwise.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label set of a family: (name, value) pairs in a fixed order.
type Labels = Vec<(&'static str, String)>;

/// All counters, by API key name (never the key itself).
#[derive(Debug, Default)]
pub struct Metrics {
    /// (key name, HTTP status) -> requests.
    requests: Family<Labels, Counter>,
    /// (key name, "prompt" | "completion") -> tokens.
    tokens: Family<Labels, Counter>,
    /// (key name, error type) -> errors.
    errors: Family<Labels, Counter>,
    /// key name -> streams the client left before the end.
    disconnects: Family<Labels, Counter>,
    /// key name -> answers that continued on another worker.
    failovers: Family<Labels, Counter>,
}

fn key(key: &str) -> Labels {
    vec![("key", key.to_owned())]
}

fn with(mut labels: Labels, name: &'static str, value: impl Into<String>) -> Labels {
    labels.push((name, value.into()));
    labels
}

pub use client::service::MetricsFormat as Format;

impl Metrics {
    /// One request answered with `status`.
    pub fn request(&self, name: &str, status: u16) {
        self.requests
            .get_or_create(&with(key(name), "status", status.to_string()))
            .inc();
    }

    /// Tokens of one completion.
    pub fn tokens(&self, name: &str, prompt: u32, completion: u32) {
        self.tokens
            .get_or_create(&with(key(name), "kind", "prompt"))
            .inc_by(u64::from(prompt));
        self.tokens
            .get_or_create(&with(key(name), "kind", "completion"))
            .inc_by(u64::from(completion));
    }

    /// One error of type `kind` (OpenAI's error type or a stream failure).
    pub fn error(&self, name: &str, kind: &str) {
        self.errors
            .get_or_create(&with(key(name), "type", kind))
            .inc();
    }

    /// A client left a stream before its end.
    pub fn disconnect(&self, name: &str) {
        self.disconnects.get_or_create(&key(name)).inc();
    }

    /// An answer moved to another worker.
    pub fn failover(&self, name: &str) {
        self.failovers.get_or_create(&key(name)).inc();
    }

    /// The exposition in `format`.
    pub fn render(&self, format: Format) -> String {
        // The families share their data with their clones: a registry per
        // scrape costs a few allocations and keeps `Metrics` plain data.
        let mut reg = Registry::with_prefix("rocksteady_openai");
        reg.register(
            "requests",
            "HTTP API requests by key name and status",
            self.requests.clone(),
        );
        reg.register(
            "tokens",
            "Tokens by key name and kind (prompt, completion)",
            self.tokens.clone(),
        );
        reg.register("errors", "Errors by key name and type", self.errors.clone());
        reg.register(
            "client_disconnects",
            "Streams the client left before the end (the request is cancelled)",
            self.disconnects.clone(),
        );
        reg.register(
            "failovers",
            "Answers that continued on another worker",
            self.failovers.clone(),
        );
        format.encode(&reg)
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
        let text = m.render(Format::Text);
        assert!(text.contains("rocksteady_openai_requests_total{key=\"ops\",status=\"200\"} 2"));
        assert!(text.contains("key=\"anon\\\"x\",status=\"401\"} 1"));
        assert!(text.contains("rocksteady_openai_tokens_total{key=\"ops\",kind=\"completion\"} 5"));
        assert!(text.contains("# TYPE rocksteady_openai_requests_total counter"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_when_asked_for() {
        let m = Metrics::default();
        m.failover("ops");
        let format = Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        assert_eq!(format, Format::OpenMetrics);
        let text = m.render(format);
        // OpenMetrics names the family without `_total`, and ends with EOF.
        assert!(
            text.contains("# TYPE rocksteady_openai_failovers counter"),
            "{text}"
        );
        assert!(
            text.contains("rocksteady_openai_failovers_total{key=\"ops\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
    }
}
