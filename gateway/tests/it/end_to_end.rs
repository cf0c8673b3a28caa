//! End to end: the gateway, the real `rocksteady-supervisor` process and the
//! real CPU worker on the default model, all reading one config file. A relay
//! between the gateway and the supervisor's client socket records what the
//! supervisor sent, so the reply can be compared with the answer it produced.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::client::SupervisorToClient;
use proto::frame::FrameReader;
use proto::hello::HelloReply;
use test_kit::harness::{bin, model};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::fake_discord::{FakeDiscord, CHANNEL};
use crate::harness::{self, INTERVAL};
use crate::{assert_paced, finished_answer};

/// Bytes the supervisor sent on each relayed connection.
type Recorded = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// Relays connections from `listen` to `upstream`, recording what comes back.
fn start_relay(listen: &Path, upstream: PathBuf) -> Recorded {
    let listener = UnixListener::bind(listen).unwrap();
    let recorded: Recorded = Arc::default();
    let all = Arc::clone(&recorded);
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = UnixStream::connect(&upstream).await else {
                continue; // supervisor not up yet: the gateway retries
            };
            let log = Arc::new(Mutex::new(Vec::new()));
            all.lock().unwrap().push(Arc::clone(&log));
            let (mut down_r, mut down_w) = down.into_split();
            let (mut up_r, mut up_w) = up.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut down_r, &mut up_w).await;
                let _ = up_w.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match up_r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                            if down_w.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    recorded
}

/// Decodes the supervisor's frames of every relayed connection.
async fn supervisor_events(recorded: &Recorded) -> Vec<SupervisorToClient> {
    let logs: Vec<Vec<u8>> = recorded
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.lock().unwrap().clone())
        .collect();
    let mut events = Vec::new();
    for bytes in logs {
        let mut reader = FrameReader::new(bytes.as_slice());
        let Ok(Some(HelloReply::Accepted(_))) = reader.recv::<HelloReply>().await else {
            continue;
        };
        while let Ok(Some(event)) = reader.recv::<SupervisorToClient>().await {
            events.push(event);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mention_is_answered_by_the_real_supervisor_and_model() {
    harness::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let discord = FakeDiscord::start().await;
    let run = dir.path().join("run");
    let relay = dir.path().join("relay.sock");
    // One file for both processes, as deployed.
    let text = format!(
        "[supervisor]\nruntime_dir = \"{run}\"\nstate_dir = \"{state}\"\n\n\
         [slots.primary]\nbackend = \"cpu\"\nmodel = \"{model}\"\nworker = \"{worker}\"\n\n\
         [slots.primary.profile]\ncontext_size = 1024\nbatch_size = 256\nthreads = 2\nmax_new_tokens = 512\n\n\
         [gateway]\ngateway_url = \"ws://{addr}\"\nrest_url = \"http://{addr}\"\n\
         client_socket = \"{relay}\"\nadmin_socket = \"{run}/admin.sock\"\n\
         edit_interval_ms = {interval}\nmax_tokens = 80\ntemperature = 0.0\n\
         system_prompt = \"You are a helpful assistant.\"\n",
        run = run.display(),
        state = dir.path().join("state").display(),
        model = model().display(),
        worker = bin("worker-cpu").display(),
        addr = discord.addr,
        relay = relay.display(),
        interval = INTERVAL.as_millis(),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &text).unwrap();

    let mut supervisor = tokio::process::Command::new(bin("rocksteady-supervisor"))
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let recorded = start_relay(&relay, run.join("client.sock"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !run.join("client.sock").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the supervisor did not open its client socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut config = gateway::Config::from_toml(&text).unwrap();
    config.token = gateway::Token::new("fake-token");
    let bot = harness::start_with(discord, move |c| *c = config);
    bot.discord.wait_ready().await;

    let question = bot.discord.user_message(
        CHANNEL,
        1001,
        "What is the capital of France? Answer in one sentence.",
        true,
    );
    let messages = bot
        .discord
        .wait_for("the model's answer", Duration::from_secs(180), |d| {
            let messages = d.answer_messages(CHANNEL, question);
            messages
                .last()
                .is_some_and(|(_, c)| c.contains("\n-# cpu · "))
                .then_some(messages)
        })
        .await;
    // Same as finished_answer, once the footer is known to be there.
    let end = messages
        .last()
        .unwrap()
        .1
        .rsplit('\n')
        .next()
        .unwrap()
        .to_owned();
    let messages = finished_answer(&bot.discord, CHANNEL, question, &end).await;

    let events = supervisor_events(&recorded).await;
    let done = events
        .iter()
        .find_map(|e| match e {
            SupervisorToClient::Done(done) => Some(done.clone()),
            _ => None,
        })
        .expect("the supervisor finished the answer");
    let tokens = events
        .iter()
        .filter(|e| matches!(e, SupervisorToClient::Token(_)))
        .count();
    assert!(tokens > 1, "the answer streamed in {tokens} tokens");
    assert!(!done.text.trim().is_empty());
    assert_eq!(messages.len(), 1);
    let (reply, content) = &messages[0];
    let footer = format!(
        "-# cpu · {} · {:.1} tok/s",
        done.model, done.stats.decode_tps
    );
    assert_eq!(content, &format!("{}\n{footer}", done.text));

    // A reply to the user's message, edited as tokens arrived.
    let create = &bot.discord.creates(CHANNEL)[0];
    assert_eq!(
        create.body["message_reference"]["message_id"],
        serde_json::json!(question.to_string())
    );
    let edits = bot.discord.edits(CHANNEL, *reply);
    assert!(!edits.is_empty(), "the reply was edited");
    let shown_first = create.body["content"].as_str().unwrap();
    assert!(
        shown_first.starts_with("⏳") || done.text.starts_with(shown_first),
        "first content {shown_first:?}"
    );
    assert_paced(&bot.discord.writes(CHANNEL), INTERVAL);

    bot.stop().await.unwrap();
    let _ = supervisor.start_kill();
    let _ = supervisor.wait().await;
}
