//! The client socket's limits, through the real supervisor: connection caps
//! per user and in total, a client that stops reading is disconnected without
//! holding up anyone else, an oversized prompt is refused before the queue;
//! every refusal shows in /metrics.

use std::time::Duration;

use proto::client::{ErrorKind, SupervisorToClient};
use supervisor::client::ChatClient;

use crate::operate::{free_port, get, metric};
use crate::support::{bin, collect, fake_slot, greedy, model, user, Sup};

/// The /metrics text once the supervisor has published its first snapshot.
async fn metrics(port: u16) -> String {
    for _ in 0..200 {
        let (code, text) = get(port, "/metrics").await;
        if code == 200 && text.contains("rocksteady_connections_refused_total") {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/metrics never answered");
}

/// Whether a counter read from /metrics is `n` (counters are whole numbers).
fn is(v: f64, n: f64) -> bool {
    (v - n).abs() < 0.5
}

async fn refused(port: u16, cause: &str) -> f64 {
    metric(
        &metrics(port).await,
        "rocksteady_connections_refused_total",
        &[("cause", cause)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_user_and_in_total() {
    for (caps, cause) in [
        (
            "max_client_connections = 50\nmax_client_connections_per_user = 3\n",
            "connection_cap_user",
        ),
        (
            "max_client_connections = 3\nmax_client_connections_per_user = 50\n",
            "connection_cap_total",
        ),
    ] {
        let port = free_port();
        let sup = Sup::start_with(
            caps,
            &format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n{}",
                fake_slot("primary", "tokens=3", "")
            ),
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(sup.client().await);
        }
        // The fourth is dropped unread: its handshake never gets an answer.
        assert!(
            tokio::time::timeout(
                Duration::from_secs(5),
                ChatClient::connect(&sup.client_socket())
            )
            .await
            .map_or(true, |r| r.is_err()),
            "a fourth connection was accepted past the cap ({cause})"
        );
        assert!(refused(port, cause).await >= 1.0, "{cause} not counted");
        // Places come back when connections close, and the held ones still work.
        held.pop();
        let mut again = None;
        for _ in 0..100 {
            if let Ok(c) = ChatClient::connect(&sup.client_socket()).await {
                again = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut again = again.expect("a closed connection's place never came back");
        again.submit(user("hi"), greedy(3)).await.unwrap();
        let events = collect(&mut again, Duration::from_secs(30)).await;
        assert!(matches!(
            events.last().unwrap().1,
            SupervisorToClient::Done(_)
        ));
        sup.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_nobody_else_waits() {
    let port = free_port();
    // A token a millisecond (faster would only pile tokens up between the
    // worker and the supervisor), and answers long enough to fill any socket
    // buffer many times over: without the limits the patient client would
    // wait over a quarter of an hour.
    let slot = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[slots.primary]\nbackend = \"cpu\"\nmodel = \"{}\"\nworker = \"{}\"\nworker_env = {{ ROCKSTEADY_FAKE_WORKER = \"token-ms=1\" }}\n[slots.primary.profile]\ncontext_size = 1048576\nbatch_size = 256\nthreads = 1\nmax_new_tokens = 1000000\n",
        model().display(),
        bin("fake-worker").display()
    );
    let sup = Sup::start_with(
        "client_event_backlog = 64\nclient_write_timeout_s = 1.0\n",
        &slot,
    )
    .await;
    sup.wait_state(
        "primary",
        proto::admin::SlotState::Ready,
        Duration::from_secs(20),
    )
    .await;
    let mut deaf = sup.client().await;
    deaf.submit(user("talk forever"), greedy(1_000_000))
        .await
        .unwrap();
    // Queued behind the deaf client's endless answer on the only worker.
    let mut patient = sup.client().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    patient.submit(user("hi"), greedy(5)).await.unwrap();
    let events = collect(&mut patient, Duration::from_secs(20)).await;
    assert!(
        matches!(events.last().unwrap().1, SupervisorToClient::Done(_)),
        "the patient client was not served: {:?}",
        events.last()
    );
    let text = metrics(port).await;
    let closed = metric(
        &text,
        "rocksteady_connections_closed_total",
        &[("cause", "too_slow")],
    ) + metric(
        &text,
        "rocksteady_connections_closed_total",
        &[("cause", "write_timeout")],
    );
    assert!(
        closed >= 1.0,
        "the deaf client's disconnect was not counted"
    );
    drop(deaf);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_prompt_is_refused_in_the_connection_and_counted() {
    let port = free_port();
    let sup = Sup::start_with(
        "max_prompt_chars = 10\n",
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n{}",
            fake_slot("primary", "tokens=3", "")
        ),
    )
    .await;
    let mut client = sup.client().await;
    client
        .submit(user("far more than ten characters"), greedy(3))
        .await
        .unwrap();
    let events = collect(&mut client, Duration::from_secs(10)).await;
    match &events.last().unwrap().1 {
        SupervisorToClient::Error(e) => {
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains("limit is 10"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let text = metrics(port).await;
    assert!(is(
        metric(&text, "rocksteady_prompts_refused_total", &[]),
        1.0
    ));
    // The core never saw it: no request refused at admission.
    assert!(is(
        metric(
            &text,
            "rocksteady_requests_total",
            &[("outcome", "refused")]
        ),
        0.0
    ));
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let port = free_port();
    let sup = Sup::start_with(
        "queue_timeout_s = 0.5\nclient_idle_timeout_s = 1.0\n",
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n{}",
            fake_slot("primary", "tokens=3", "")
        ),
    )
    .await;
    let mut client = sup.client().await;
    let end = tokio::time::timeout(Duration::from_secs(10), client.next_event()).await;
    assert!(
        matches!(end, Ok(Err(_))),
        "an idle connection stayed open: {end:?}"
    );
    let text = metrics(port).await;
    assert!(is(
        metric(
            &text,
            "rocksteady_connections_closed_total",
            &[("cause", "idle")]
        ),
        1.0
    ));
    sup.stop().await;
}
