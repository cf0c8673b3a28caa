//! Logs: whatever `RUST_LOG` lets through, an interaction token in a request
//! path never reaches the output.

use std::io::Write;
use std::sync::{Arc, Mutex};

use twilight_model::http::interaction::{InteractionResponse, InteractionResponseType};
use twilight_model::id::Id;

use crate::fake_discord::{FakeDiscord, APP_ID};

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the subscriber set for this thread sees the
// client's and the connections' events.
#[tokio::test]
async fn interaction_tokens_stay_out_of_a_trace_log() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let discord = FakeDiscord::start().await;
    let capture = Capture::default();
    let writer = capture.clone();
    // As if started with RUST_LOG=trace, which replaces the default filter.
    let subscriber = gateway::logging::subscriber(Some("trace"), move || writer.clone());
    let guard = tracing::subscriber::set_default(subscriber);

    let token = "aW50ZXJhY3Rpb246SECRET-interaction-token";
    let http = twilight_http::Client::builder()
        .token("fake-bot-token".to_owned())
        .proxy(discord.addr.to_string(), true)
        .build();
    let application = Id::new(APP_ID);
    let defer = InteractionResponse {
        kind: InteractionResponseType::DeferredChannelMessageWithSource,
        data: None,
    };
    http.interaction(application)
        .create_response(Id::new(4242), token, &defer)
        .await
        .expect("the fake accepts the callback");
    http.interaction(application)
        .update_response(token)
        .content(Some("answer"))
        .await
        .expect("the fake accepts the edit");
    drop(guard);

    let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    // The filter let twilight's request spans through (else this test
    // would prove nothing) ...
    assert!(
        log.contains("webhooks/901/") && log.contains("interactions/4242/"),
        "request paths were not logged:\n{log}"
    );
    // ... and the token in them is gone.
    assert!(!log.contains("SECRET"), "the token reached the log:\n{log}");
    assert!(log.contains(gateway::logging::REDACTED));
}
