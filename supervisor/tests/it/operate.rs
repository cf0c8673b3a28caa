//! Operating the service: /health and /metrics as workers fail and recover,
//! and the sockets' defences (peer credentials, oversized frames, garbage,
//! wrong protocol versions).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::admin::SlotState;
use proto::client::SupervisorToClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{bin, collect, cpu_slot, greedy, model, user, Sup};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare HTTP/1.1 GET: (status code, body).
pub(crate) async fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let code = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

async fn wait_health(port: u16, code: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (got, body) = get(port, "/health").await;
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/health never answered {code}; last {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics text must parse");
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_failure_and_recovery() {
    let port = free_port();
    let body = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\nprobe_interval_s = 1.0\nhealthy_within_s = 3.0\n[policy]\nbackoff_initial_s = 1.5\nbackoff_max_s = 2.0\n{}",
        cpu_slot("primary", &model(), "")
    );
    let sup = Sup::start(&body).await;
    let loading = wait_health(port, 503, Duration::from_secs(5)).await;
    assert!(loading.contains("\"status\":\"unhealthy\""), "{loading}");
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    let ok = wait_health(port, 200, Duration::from_secs(10)).await;
    assert!(ok.contains("\"active_backend\":\"cpu\""), "{ok}");

    let mut client = sup.client().await;
    client
        .submit(user("What is 2+2?"), greedy(16))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(60)).await;
    let SupervisorToClient::Done(done) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };

    // The worker dies: unhealthy (no worker) until it is back.
    let pid = sup.slot("primary").await.pid.unwrap();
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
    let down = wait_health(port, 503, Duration::from_secs(5)).await;
    assert!(down.contains("loading"), "{down}");
    wait_health(port, 200, Duration::from_secs(60)).await;

    // Idle longer than the probe interval: probes keep it healthy.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, body) = get(port, "/health").await;
    assert_eq!(code, 200, "{body}");

    let (code, text) = get(port, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metric(&text, "rocksteady_tokens_generated_total", &[])
            >= f64::from(done.stats.generated_tokens)
    );
    assert!(
        (metric(&text, "rocksteady_requests_total", &[("outcome", "done")]) - 1.0).abs()
            < f64::EPSILON,
        "probes are not requests"
    );
    assert!(
        (metric(
            &text,
            "rocksteady_restarts_total",
            &[("slot", "primary"), ("reason", "killed")]
        ) - 1.0)
            .abs()
            < f64::EPSILON
    );
    assert!(
        metric(
            &text,
            "rocksteady_worker_rss_anon_bytes",
            &[("slot", "primary")]
        ) > 0.0
    );
    assert!(
        metric(
            &text,
            "rocksteady_time_per_output_token_seconds_count",
            &[("backend", "cpu")]
        ) > 0.0
    );
    assert!((metric(&text, "rocksteady_healthy", &[]) - 1.0).abs() < f64::EPSILON);
    assert!(metric(&text, "rocksteady_queue_depth", &[]).abs() < f64::EPSILON);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_and_bad_bytes_are_refused_per_connection_and_counted() {
    let port = free_port();
    let body = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\nprobe_interval_s = 0.0\n{}",
        cpu_slot("primary", &model(), "")
    );
    let sup = Sup::start_with("client_socket_mode = \"0666\"", &body).await;
    sup.wait_state("primary", SlotState::Ready, Duration::from_secs(60))
        .await;
    // A good client stays connected through all of it.
    let mut good = sup.client().await;

    // 1. A user who is not allowed (nobody), on a socket whose file mode
    //    would let it connect: refused by its credentials.
    let run_dir = sup.config.supervisor.runtime_dir.clone();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        Command::new(bin("supctl"))
            .arg("--runtime-dir")
            .arg(&run_dir)
            .args(["ask", "hello"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "an unknown user was served");

    // 2. A length prefix over the limit, 3. garbage, 4. another protocol version.
    let socket = sup.client_socket();
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    s.write_all(b"\x00\x00\x00\x08GET / HT").await.unwrap();
    let _ = s.read_to_end(&mut rest).await;
    let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let future = proto::frame::encode(&(*b"RSTD", proto::PROTOCOL_VERSION + 1, 0u32, "x")).unwrap();
    s.write_all(&u32::try_from(future.len()).unwrap().to_be_bytes())
        .await
        .unwrap();
    s.write_all(&future).await.unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let reply: proto::hello::HelloReply = proto::frame::decode(&answer[4..]).unwrap();
    let proto::hello::HelloReply::Refused(r) = reply else {
        panic!("accepted a future version")
    };
    assert!(r.reason.contains("version mismatch"), "{}", r.reason);

    // The good client is unaffected.
    good.submit(user("What is 2+2?"), greedy(8)).await.unwrap();
    let events = collect(&mut good, Duration::from_secs(60)).await;
    assert!(
        matches!(events.last().unwrap().1, SupervisorToClient::Done(_)),
        "{events:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, text) = get(port, "/metrics").await;
        let counts: Vec<f64> = [
            "peer_credentials",
            "oversized_frame",
            "malformed",
            "version_mismatch",
        ]
        .iter()
        .map(|c| {
            metric(
                &text,
                "rocksteady_connections_refused_total",
                &[("cause", c)],
            )
        })
        .collect();
        if counts.iter().all(|c| (*c - 1.0).abs() < f64::EPSILON) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals not counted as expected: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sup.stop().await;
}
