//! `/metrics` of a running supervisor: valid exposition as Prometheus' own
//! linter (`promtool check metrics`) judges it, OpenMetrics for a scraper that
//! asks for it, and latency histograms that fill as a request is answered.

use std::time::Duration;

use proto::admin::SlotState;
use proto::client::SupervisorToClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::operate::{free_port, get};
use crate::support::{collect, fake_slot, greedy, promtool, user, Sup};

/// The value of the sample line that starts with `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// `/metrics` asking for OpenMetrics: (content type, body).
async fn get_openmetrics(port: u16) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (content_type, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_latency_histograms_fill_after_a_request() {
    let port = free_port();
    let body = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\nprobe_interval_s = 0.0\n{}",
        fake_slot("primary", "load-ms=200,token-ms=20,tokens=5", "")
    );
    let sup = Sup::start(&body).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(20))
        .await;
    // Before any request: valid, and the request histograms are empty.
    let (code, before) = get(port, "/metrics").await;
    assert_eq!(code, 200);
    let (ok, said) = promtool(&before);
    assert!(ok, "promtool check metrics failed:\n{said}\n{before}");
    assert!(!before.contains("rocksteady_time_to_first_token_seconds_count"));

    let mut client = sup.client().await;
    client.submit(user("hello"), greedy(16)).await.unwrap();
    let events = collect(&mut client, Duration::from_secs(20)).await;
    assert!(
        matches!(events.last().unwrap().1, SupervisorToClient::Done(_)),
        "{events:?}"
    );

    let (_, text) = get(port, "/metrics").await;
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool check metrics failed:\n{said}\n{text}");
    assert!(said.trim().is_empty(), "promtool complained:\n{said}");
    let cpu = "{backend=\"cpu\"}";
    // One request: one first token, one wait in the queue.
    assert!(
        (value(
            &text,
            &format!("rocksteady_time_to_first_token_seconds_count{cpu}")
        ) - 1.0)
            .abs()
            < 0.5,
        "{text}"
    );
    assert!(
        value(
            &text,
            &format!("rocksteady_time_to_first_token_seconds_sum{cpu}")
        ) > 0.0
    );
    assert!(
        (value(&text, &format!("rocksteady_queue_wait_seconds_count{cpu}")) - 1.0).abs() < 0.5,
        "{text}"
    );
    // Five tokens 20 ms apart: four gaps between them, each about 20 ms.
    let tokens = value(
        &text,
        &format!("rocksteady_time_per_output_token_seconds_count{cpu}"),
    );
    assert!((tokens - 4.0).abs() < 0.5, "{text}");
    let sum = value(
        &text,
        &format!("rocksteady_time_per_output_token_seconds_sum{cpu}"),
    );
    assert!(sum / tokens > 0.01, "{sum} s over {tokens} tokens");
    // The worker's load (200 ms).
    assert!(value(&text, &format!("rocksteady_model_load_seconds_count{cpu}")) >= 1.0);
    assert!(value(&text, &format!("rocksteady_model_load_seconds_sum{cpu}")) >= 0.2);
    // Every refusal counter the connection tasks keep is there, at zero.
    for cause in [
        "peer_credentials",
        "worker_peer",
        "oversized_frame",
        "malformed",
        "version_mismatch",
        "connection_cap_total",
        "connection_cap_user",
    ] {
        let series = format!("rocksteady_connections_refused_total{{cause=\"{cause}\"}}");
        assert!(value(&text, &series).abs() < 0.5, "{series}");
    }
    for cause in ["idle", "too_slow", "write_timeout"] {
        let series = format!("rocksteady_connections_closed_total{{cause=\"{cause}\"}}");
        assert!(value(&text, &series).abs() < 0.5, "{series}");
    }
    assert!(value(&text, "rocksteady_prompts_refused_total").abs() < 0.5);

    // A scraper that asks for OpenMetrics gets it.
    let (content_type, om) = get_openmetrics(port).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE rocksteady_requests counter"), "{om}");
    sup.stop().await;
}
