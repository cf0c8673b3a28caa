//! Three boards on this machine (three supervisors, each with one CPU slot
//! on the small model, three bridges) behind one front door over a real
//! nats-server: spreading, continuation after a board's death, a server
//! restart, an unserved class, and the figures of the NATS path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::cluster::Target;
use client::link::{LinkEvent, Request, SupervisorLink};
use futures::StreamExt;
use proto::client::SupervisorToClient;
use test_kit::harness::{bin, cpu_slot, greedy, model, user as user_msg};
use test_kit::nats::NatsServer;
use tokio_util::sync::CancellationToken;

/// The tests share two cores: one at a time, or each would starve the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLASS: &str = "cpu-small";

/// One simulated board: a supervisor and a bridge, as processes.
struct Board {
    name: String,
    dir: tempfile::TempDir,
    supervisor: Option<Child>,
    bridge: Option<Child>,
}

impl Board {
    /// `query` adds NATS options (`&nkey=...`) to the board's target.
    fn start(name: &str, nats_url: &str, query: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "[supervisor]\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n[http]\nlisten = \"\"\n{slot}\n[bridge]\nboard = \"{name}\"\nnats = \"{nats_url}?prefix=it{query}\"\nclient_socket = \"{d}/run/client.sock\"\nadmin_socket = \"{d}/run/admin.sock\"\nheartbeat_ms = 300\nack_wait_s = 10\n[bridge.classes]\n{CLASS} = \"\"\n",
            slot = cpu_slot("primary", &model(), "")
        );
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        let mut board = Self {
            name: name.to_owned(),
            dir,
            supervisor: None,
            bridge: None,
        };
        board.supervisor = Some(board.spawn("rocksteady-supervisor"));
        board.bridge = Some(board.spawn("rocksteady-bridge"));
        board
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn spawn(&self, binary: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{binary}.log"))).unwrap();
        Command::new(bin(binary))
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info,async_nats=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, binary: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{binary}.log"))).unwrap_or_default()
    }

    /// SIGKILL, as a power cut or a crash does.
    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // The bridge first: it hands back nothing after its supervisor is gone.
        for child in [&mut self.bridge, &mut self.supervisor] {
            if let Some(c) = child.as_mut() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
            }
        }
        for child in [&mut self.bridge, &mut self.supervisor] {
            if let Some(mut c) = child.take() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

struct Cluster {
    nats: NatsServer,
    boards: Vec<Board>,
    link: SupervisorLink,
    shutdown: CancellationToken,
}

impl Cluster {
    async fn start(n: usize, silence_ms: u64) -> Self {
        Self::start_on(NatsServer::start(), n, silence_ms, "").await
    }

    /// `n` boards and a front door on `nats`, all with the NATS options `query`.
    async fn start_on(nats: NatsServer, n: usize, silence_ms: u64, query: &str) -> Self {
        let boards: Vec<Board> = (1..=n)
            .map(|i| Board::start(&format!("board-{i}"), &nats.url(), query))
            .collect();
        let shutdown = CancellationToken::new();
        let target = Target::parse(
            &format!(
                "{}?prefix=it&class={CLASS}&silence_ms={silence_ms}{query}",
                nats.url()
            ),
            None,
        )
        .unwrap();
        let link = SupervisorLink::start_target(&target, "cluster-test", shutdown.clone())
            .await
            .unwrap();
        let cluster = Self {
            nats,
            boards,
            link,
            shutdown,
        };
        cluster.wait_ready(n).await;
        cluster
    }

    /// Waits until `n` boards announce the class with a ready slot.
    async fn wait_ready(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let boards = self.link.cluster().unwrap().boards();
            let ready = boards
                .iter()
                .filter(|(b, alive, _)| {
                    *alive
                        && b.classes.iter().any(|c| c == CLASS)
                        && b.slots
                            .iter()
                            .any(|s| s.state == proto::admin::SlotState::Ready)
                })
                .count();
            if ready >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "boards not ready: {boards:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for b in &self.boards {
            for bin in ["rocksteady-bridge", "rocksteady-supervisor"] {
                let log = b.log(bin);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let _ = writeln!(out, "--- {} {bin}", b.name);
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    fn board(&mut self, name: &str) -> &mut Board {
        self.boards.iter_mut().find(|b| b.name == name).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A request's events with arrival times, until it ends.
async fn collect(req: &mut Request, limit: Duration) -> Vec<(Instant, SupervisorToClient)> {
    let mut events = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), req.next())
            .await
            .unwrap_or_else(|_| panic!("request did not end in time; so far: {events:?}"));
        let LinkEvent::Event(event) = event else {
            panic!("request lost; so far: {events:?}")
        };
        let end = matches!(
            event,
            SupervisorToClient::Done(_) | SupervisorToClient::Error(_)
        );
        events.push((Instant::now(), event));
        if end {
            return events;
        }
    }
}

fn streamed(events: &[(Instant, SupervisorToClient)]) -> String {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorToClient::Token(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect()
}

fn done_text(events: &[(Instant, SupervisorToClient)]) -> String {
    match &events.last().unwrap().1 {
        SupervisorToClient::Done(d) => d.text.clone(),
        other => panic!("ended with {other:?}"),
    }
}

/// The boards that started the request, in order (from `Started` slot names).
fn boards_of(events: &[(Instant, SupervisorToClient)]) -> Vec<String> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorToClient::Started(s) => s.slot.split('/').next().map(str::to_owned),
            _ => None,
        })
        .collect()
}

fn failovers(events: &[(Instant, SupervisorToClient)]) -> usize {
    events
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorToClient::Failover(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_requests_spread_over_three_boards_and_an_unserved_class_fails_fast() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, 5000).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let link = cluster.link.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = link
                .submit(user_msg(&format!("Name a colour. ({i})")), greedy(6))
                .await
                .unwrap();
            collect(&mut req, Duration::from_secs(240)).await
        }));
    }
    let mut per_board: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let events = task.await.unwrap();
        let text = done_text(&events);
        assert!(!text.is_empty());
        assert_eq!(streamed(&events), text, "the stream adds up to the answer");
        for b in boards_of(&events) {
            *per_board.entry(b).or_default() += 1;
        }
    }
    println!("requests per board: {per_board:?}");
    assert_eq!(per_board.values().sum::<usize>(), 12, "{per_board:?}");
    assert_eq!(per_board.len(), 3, "every board served: {per_board:?}");

    // The operator's view and `supctl ask` through the same cluster.
    let url = format!("{}?prefix=it", cluster.nats.url());
    let status = Command::new(bin("supctl"))
        .args(["--supervisor", &url, "status", "--cluster"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for board in ["board-1", "board-2", "board-3"] {
        assert!(table.contains(&format!("{board}  up")), "{table}");
    }
    assert!(
        table.contains("classes: cpu-small") && table.contains("primary"),
        "{table}"
    );
    let ask = Command::new(bin("supctl"))
        .args([
            "--supervisor",
            &format!("{url}&class={CLASS}"),
            "ask",
            "Say hi.",
            "--max-tokens",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        ask.status.success(),
        "{}",
        String::from_utf8_lossy(&ask.stderr)
    );
    assert!(!String::from_utf8_lossy(&ask.stdout).trim().is_empty());

    let asked = Instant::now();
    let mut req = cluster
        .link
        .submit_to(user_msg("hi"), greedy(4), "gpu-huge".into())
        .await
        .unwrap();
    let events = collect(&mut req, Duration::from_secs(10)).await;
    let took = asked.elapsed();
    let SupervisorToClient::Error(e) = &events.last().unwrap().1 else {
        panic!("{events:?}")
    };
    assert!(
        e.message
            .contains("no board serves model class \"gpu-huge\"")
            && e.message.contains(CLASS),
        "{}",
        e.message
    );
    println!("unserved class refused after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// How a board ends mid-stream.
#[derive(Debug, Clone, Copy)]
enum Death {
    /// `kill -9` of its supervisor: the bridge hands the request back.
    Supervisor,
    /// `kill -9` of its bridge: the front door hears nothing more.
    Bridge,
    /// SIGTERM of its bridge (an upgrade, a stop): it hands back before going.
    BridgeStopped,
}

/// Starts a long answer, waits for a few tokens from some board, ends that
/// board as `death` says, and checks the answer completes elsewhere; the
/// note names why (`reason`).
async fn death_mid_stream(death: Death, reason: &str) {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, 2500).await;
    let mut req = cluster
        .link
        .submit(user_msg("Count from one to twenty in words."), greedy(40))
        .await
        .unwrap();
    let mut events = Vec::new();
    let first_board = loop {
        let LinkEvent::Event(e) = tokio::time::timeout(Duration::from_secs(120), req.next())
            .await
            .expect("no tokens")
        else {
            panic!("lost")
        };
        events.push((Instant::now(), e));
        let text = streamed(&events);
        if text.len() >= 12 {
            break boards_of(&events).pop().unwrap();
        }
    };
    let before = streamed(&events);
    let board = cluster.board(&first_board);
    let killed_at = Instant::now();
    match death {
        Death::Supervisor => Board::kill(&mut board.supervisor),
        Death::Bridge => Board::kill(&mut board.bridge),
        Death::BridgeStopped => {
            let pid = board.bridge.as_ref().unwrap().id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        }
    }
    let rest = collect(&mut req, Duration::from_secs(180)).await;
    let next_token = rest
        .iter()
        .find(|(at, e)| *at > killed_at && matches!(e, SupervisorToClient::Token(_)))
        .map(|(at, _)| *at - killed_at);
    events.extend(rest);
    let text = done_text(&events);
    println!(
        "{death:?} of {first_board} ended: next token from another board after {next_token:?}"
    );
    assert_eq!(streamed(&events), text, "no text repeated or lost");
    assert!(text.starts_with(&before));
    assert_eq!(text.matches(before.as_str()).count(), 1, "{text:?}");
    assert!(text.len() > before.len(), "the answer went on: {text:?}");
    assert_eq!(failovers(&events), 1, "the user is told once: {events:?}");
    let note = events.iter().find_map(|(_, e)| match e {
        SupervisorToClient::Failover(f) => Some(f.reason.clone()),
        _ => None,
    });
    assert!(
        note.as_deref().is_some_and(|n| n.contains(reason)),
        "{note:?}"
    );
    let served = boards_of(&events);
    assert_eq!(served.first(), Some(&first_board));
    assert!(
        served.last().is_some_and(|b| *b != first_board),
        "finished on another board: {served:?}\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_mid_stream_continues_on_another_board_told_once() {
    death_mid_stream(Death::Supervisor, "the board's supervisor went away").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_mid_stream_continues_on_another_board_told_once() {
    death_mid_stream(Death::Bridge, "went silent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_bridge_hands_its_request_back_and_it_continues_on_another_board() {
    death_mid_stream(Death::BridgeStopped, "the board's bridge is stopping").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_no_accepted_request_and_answers_none_twice() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, 8000).await;
    let mut tasks = Vec::new();
    let (first_token, mut first_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for i in 0..6 {
        let link = cluster.link.clone();
        let first_token = first_token.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = link
                .submit(
                    user_msg(&format!("Tell me a fact about the sea. ({i})")),
                    greedy(16),
                )
                .await
                .unwrap();
            let mut events = Vec::new();
            loop {
                let LinkEvent::Event(e) =
                    tokio::time::timeout(Duration::from_secs(240), req.next())
                        .await
                        .unwrap()
                else {
                    panic!("lost: {events:?}")
                };
                if matches!(e, SupervisorToClient::Token(_)) {
                    let _ = first_token.send(());
                }
                let end = matches!(
                    e,
                    SupervisorToClient::Done(_) | SupervisorToClient::Error(_)
                );
                events.push((Instant::now(), e));
                if end {
                    break;
                }
            }
            // Nothing more comes for an ended request, not even a late copy.
            let late = tokio::time::timeout(Duration::from_millis(500), req.next()).await;
            assert!(late.is_err(), "an event after the end: {late:?}");
            events
        }));
    }
    first_rx.recv().await.unwrap();
    cluster.nats.restart();
    let restarted = Instant::now();
    let mut done = 0;
    for task in tasks {
        let events = task.await.unwrap();
        let text = done_text(&events);
        assert_eq!(streamed(&events), text, "{events:?}");
        done += 1;
    }
    assert_eq!(done, 6);
    println!(
        "all 6 answered once, {:?} after the restart",
        restarted.elapsed()
    );
    // After the restart the cluster still takes work.
    let mut req = cluster
        .link
        .submit(user_msg("Say hi."), greedy(4))
        .await
        .unwrap();
    let events = collect(&mut req, Duration::from_secs(120)).await;
    done_text(&events);
    let _ = cluster.board("board-1");
}

/// Per path: times to reach a worker, to the first token, between tokens.
type Samples = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

/// Median of a list of durations in milliseconds.
fn median_ms(xs: &[Duration]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort();
    xs.get(xs.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Time to `Started` (the request reached a worker: the transport's own
/// cost, without the prefill), to the first token, and the gaps between
/// tokens of one request.
async fn timing(link: &SupervisorLink, prompt: &str) -> (Duration, Duration, Vec<Duration>) {
    let sent = Instant::now();
    let mut req = link.submit(user_msg(prompt), greedy(24)).await.unwrap();
    let events = collect(&mut req, Duration::from_secs(120)).await;
    let tokens: Vec<Instant> = events
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorToClient::Token(_)))
        .map(|(at, _)| *at)
        .collect();
    let ttft = tokens.first().map_or(Duration::ZERO, |t| *t - sent);
    let started = events
        .iter()
        .find(|(_, e)| matches!(e, SupervisorToClient::Started(_)))
        .map_or(Duration::ZERO, |(at, _)| *at - sent);
    let gaps = tokens.windows(2).map(|w| w[1] - w[0]).collect();
    (started, ttft, gaps)
}

/// Figures, printed: the NATS path against the Unix socket on one board.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_nats_path_against_the_unix_socket() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 5000).await;
    let socket = cluster.boards[0].dir.path().join("run/client.sock");
    let unix = SupervisorLink::start(socket, "figures", cluster.shutdown.clone());
    // One unmeasured request per path: the first pays for cold caches.
    for link in [&unix, &cluster.link] {
        timing(link, "Say hi.").await;
    }
    let mut by: BTreeMap<&str, Samples> = BTreeMap::new();
    for round in 0..6 {
        // Alternate which path goes first: the second of a pair finds warmer caches.
        let mut pair = [("unix", &unix), ("nats", &cluster.link)];
        if round % 2 == 1 {
            pair.reverse();
        }
        for (name, link) in pair {
            let (started, ttft, gaps) = timing(link, "Write one sentence about rivers.").await;
            let e = by.entry(name).or_default();
            e.0.push(started);
            e.1.push(ttft);
            e.2.extend(gaps);
        }
    }
    println!(
        "FIGURES cluster: medians over 6 requests per path (1 board, 135M model, 1 CPU thread)"
    );
    println!("path  to_worker_ms  ttft_ms  token_gap_ms");
    for (name, (started, ttfts, gaps)) in &by {
        println!(
            "{name:5} {:12.2} {:8.1} {:12.2}",
            median_ms(started),
            median_ms(ttfts),
            median_ms(gaps)
        );
    }
    let (u, n) = (&by["unix"], &by["nats"]);
    println!(
        "NATS path adds {:.2} ms before the request reaches a worker, {:.1} ms to the first token and {:.2} ms per token",
        median_ms(&n.0) - median_ms(&u.0),
        median_ms(&n.1) - median_ms(&u.1),
        median_ms(&n.2) - median_ms(&u.2)
    );
    let seen: BTreeSet<_> = by.keys().collect();
    assert_eq!(seen.len(), 2);
}

/// Boards and front door log in with nkeys into an account of their own: a
/// client without credentials is refused, and a user of another account
/// sees none of the requests or replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_cluster_keeps_its_requests_from_other_accounts() {
    let _serial = SERIAL.lock().await;
    let user = nkeys::KeyPair::new_user();
    let keys = tempfile::tempdir().unwrap();
    let seed = keys.path().join("nats-nkey");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let nats = NatsServer::start_with_config(&format!(
        "accounts {{\n  ROCKSTEADY {{ jetstream: enabled, users: [ {{ nkey: {} }} ] }}\n  OTHER {{ users: [ {{ user: other, password: other-pw }} ] }}\n}}\n",
        user.public_key()
    ));
    let url = nats.url();
    assert!(
        async_nats::ConnectOptions::new()
            .connect(url.as_str())
            .await
            .is_err(),
        "a client without credentials must be refused"
    );
    let other =
        async_nats::ConnectOptions::with_user_and_password("other".into(), "other-pw".into())
            .connect(url.as_str())
            .await
            .unwrap();
    let mut spy = other.subscribe("it.>").await.unwrap();
    let cluster = Cluster::start_on(nats, 1, 5000, &format!("&nkey={}", seed.display())).await;
    let mut req = cluster
        .link
        .submit(user_msg("Say hi."), greedy(4))
        .await
        .unwrap();
    let events = collect(&mut req, Duration::from_secs(120)).await;
    assert!(!done_text(&events).is_empty());
    let spied = tokio::time::timeout(Duration::from_millis(500), spy.next()).await;
    assert!(spied.is_err(), "another account saw {spied:?}");
}

/// The OpenAI-compatible front door, unchanged but for `supervisor =
/// "nats://..."`, lists the cluster's class and answers through a board.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_front_door_answers_through_the_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 5000).await;
    let port = test_kit::nats::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[openai]\nlisten = \"127.0.0.1:{port}\"\nsupervisor = \"{}?prefix=it&class={CLASS}\"\nsupervisor_http = \"\"\n",
            cluster.nats.url()
        ),
    )
    .unwrap();
    let mut api = Command::new(bin("rocksteady-openai"))
        .arg("--config")
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let models = loop {
        let answer = tokio::task::block_in_place(|| http(port, "GET", "/v1/models", ""));
        if answer.contains(CLASS) || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(models.contains(&format!("\"{CLASS}\"")), "{models}");
    let body = format!(
        "{{\"model\":\"{CLASS}\",\"max_tokens\":4,\"temperature\":0,\"messages\":[{{\"role\":\"user\",\"content\":\"Say hi.\"}}]}}"
    );
    let answer = tokio::task::block_in_place(|| http(port, "POST", "/v1/chat/completions", &body));
    let _ = api.kill();
    let _ = api.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"chat.completion\""), "{answer}");
}

/// One HTTP/1.1 exchange on loopback; "" when it fails.
fn http(port: u16, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let exchange = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    exchange().unwrap_or_default()
}
