//! The official openai client: models, completions streamed and not, model
//! choice, keys, max_tokens, stop strings, usage equal to the supervisor's.

use std::time::Duration;

use client::ChatClient;
use proto::chat::{ChatMessage, GenParams, Role};
use proto::client::SupervisorToClient;

use crate::support::{cpu_slot, metric, promtool_complaints, Board, KEY_NAME};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_what_the_supervisor_answers() {
    let board = Board::start("", &cpu_slot("primary", ""), "", false).await;
    let result = board
        .python("basics.py", &[])
        .finish(Duration::from_secs(300))
        .await;

    // The same conversation straight to the supervisor: the same text and
    // the same token counts as the API reported.
    let mut direct = ChatClient::connect(&board.sup.client_socket())
        .await
        .unwrap();
    let params = GenParams {
        max_tokens: 40,
        temperature: 0.0,
        top_k: 40,
        top_p: 1.0,
        repeat_penalty: 1.1,
        seed: 42,
    };
    direct
        .submit(
            vec![
                ChatMessage::new(Role::System, "You are a helpful assistant."),
                ChatMessage::new(Role::User, "Name the colours of the rainbow."),
            ],
            params,
        )
        .await
        .unwrap();
    let done = loop {
        match direct.next_event().await.unwrap() {
            SupervisorToClient::Done(done) => break done,
            SupervisorToClient::Error(e) => panic!("direct request failed: {e:?}"),
            _ => {}
        }
    };
    assert_eq!(result["text"], done.text.as_str(), "{result}");
    assert_eq!(
        result["prompt_tokens"], done.stats.prompt_tokens,
        "{result}"
    );
    assert_eq!(
        result["completion_tokens"], done.stats.generated_tokens,
        "{result}"
    );
    // The model is named as the supervisor names it.
    assert_eq!(result["model"], done.model.as_str());

    let (status, metrics) = board
        .http(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 200);
    let complaints = promtool_complaints(&metrics);
    assert!(complaints.trim().is_empty(), "{complaints}\n{metrics}");
    let key = format!("key=\"{KEY_NAME}\"");
    assert!(
        metric(
            &metrics,
            &["rocksteady_openai_requests_total", &key, "status=\"200\""]
        ) >= 8,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &["rocksteady_openai_requests_total", &key, "status=\"404\""]
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &[
                "rocksteady_openai_requests_total",
                "unauthenticated",
                "status=\"401\""
            ]
        ),
        1,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            &[
                "rocksteady_openai_tokens_total",
                &key,
                "kind=\"completion\""
            ]
        ) > 0,
        "{metrics}"
    );
}
