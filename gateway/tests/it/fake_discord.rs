//! A fake Discord on 127.0.0.1 for the real twilight clients: a WebSocket
//! gateway (hello, identify, ready, heartbeat ack, dispatches, reconnect and
//! resume) and the REST routes the bot uses, recording every request with
//! the time it arrived and the time it was answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

/// The bot's user id in READY.
pub const BOT_ID: u64 = 900;
/// The application id in READY.
pub const APP_ID: u64 = 901;
/// Guild of test messages.
pub const GUILD: u64 = 500;
/// Default channel of test messages.
pub const CHANNEL: u64 = 600;
/// The timestamp every object carries (twilight needs a numeric offset).
const TS: &str = "2024-01-01T00:00:00+00:00";

/// One REST request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// HTTP method.
    pub method: Method,
    /// Path without the `/api/v10` prefix.
    pub path: String,
    /// JSON body (Null when empty).
    pub body: Value,
    /// When the request arrived.
    pub start: Instant,
    /// When it was answered.
    pub end: Instant,
    /// Status answered.
    pub status: u16,
}

/// What the test tells a gateway session to do.
#[derive(Debug)]
enum Command {
    Dispatch { t: String, d: Value },
    Reconnect,
}

#[derive(Default)]
struct Inner {
    addr: Mutex<Option<SocketAddr>>,
    records: Mutex<Vec<Record>>,
    messages: Mutex<HashMap<u64, Value>>,
    webhook_originals: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    seq: AtomicU64,
    sessions: Mutex<Vec<mpsc::UnboundedSender<Command>>>,
    identifies: AtomicUsize,
    live_sessions: AtomicUsize,
    resumes: AtomicUsize,
    /// Answer every Nth channel message edit with 429 (0: never).
    rate_limit_every: AtomicUsize,
    channel_edits: AtomicUsize,
    /// Time the fake takes to answer an edit, in ms.
    edit_latency_ms: AtomicU64,
    /// Close the gateway with this code on IDENTIFY (0: accept).
    close_on_identify: AtomicU64,
    changed: Notify,
}

/// The running fake.
#[derive(Clone)]
pub struct FakeDiscord {
    inner: Arc<Inner>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl FakeDiscord {
    /// Starts the fake on an ephemeral port.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            next_id: AtomicU64::new(10_000),
            seq: AtomicU64::new(1),
            edit_latency_ms: AtomicU64::new(40),
            ..Inner::default()
        });
        let app = Router::new()
            .route("/", any(gateway))
            .fallback(rest)
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *inner.addr.lock().unwrap() = Some(addr);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, addr }
    }

    /// Every Nth edit of a channel message is answered with 429.
    pub fn rate_limit_every(&self, n: usize) {
        self.inner.rate_limit_every.store(n, Ordering::SeqCst);
    }

    /// Closes the gateway with `code` when the bot identifies.
    pub fn close_on_identify(&self, code: u16) {
        self.inner
            .close_on_identify
            .store(u64::from(code), Ordering::SeqCst);
    }

    /// REST requests so far.
    pub fn records(&self) -> Vec<Record> {
        self.inner.records.lock().unwrap().clone()
    }

    /// IDENTIFYs received.
    pub fn identifies(&self) -> usize {
        self.inner.identifies.load(Ordering::SeqCst)
    }

    /// RESUMEs received.
    pub fn resumes(&self) -> usize {
        self.inner.resumes.load(Ordering::SeqCst)
    }

    /// Gateway sessions currently open.
    pub fn live_sessions(&self) -> usize {
        self.inner.live_sessions.load(Ordering::SeqCst)
    }

    /// A stored message (as the bot last wrote it).
    pub fn message(&self, id: u64) -> Option<Value> {
        self.inner.messages.lock().unwrap().get(&id).cloned()
    }

    /// Waits until `check` holds on the records, or panics after `timeout`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&FakeDiscord) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            if let Some(value) = check(self) {
                return value;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if let Some(value) = check(self) {
                    return value;
                }
                panic!(
                    "timed out waiting for {what}; requests: {:#?}",
                    self.records()
                        .iter()
                        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Waits for a connected, identified gateway session.
    pub async fn wait_ready(&self) {
        self.wait_for("the bot to identify", Duration::from_secs(20), |f| {
            (f.identifies() > 0 && !f.inner.sessions.lock().unwrap().is_empty()).then_some(())
        })
        .await;
    }

    fn broadcast(&self, command: impl Fn() -> Command) {
        let mut sessions = self.inner.sessions.lock().unwrap();
        sessions.retain(|s| s.send(command()).is_ok());
    }

    /// Sends a dispatch event to the bot.
    pub fn dispatch(&self, t: &str, d: &Value) {
        if t == "MESSAGE_CREATE" {
            if let Some(id) = d["id"].as_str().and_then(|s| s.parse().ok()) {
                self.inner.messages.lock().unwrap().insert(id, d.clone());
            }
        }
        self.broadcast(|| Command::Dispatch {
            t: t.to_owned(),
            d: d.clone(),
        });
    }

    /// Sends op 7 (reconnect).
    pub fn reconnect(&self) {
        self.broadcast(|| Command::Reconnect);
    }

    /// A fresh snowflake.
    pub fn new_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Dispatches a guild message from `user` in `channel`; returns its id.
    pub fn user_message(&self, channel: u64, user: u64, content: &str, mention: bool) -> u64 {
        let id = self.new_id();
        let mut d = user_message_json(id, channel, user, content, mention);
        d["guild_id"] = json!(GUILD.to_string());
        self.dispatch("MESSAGE_CREATE", &d);
        id
    }

    /// Dispatches a message from `user` in `channel` of another `guild`; returns its id.
    pub fn guild_message(
        &self,
        guild: u64,
        channel: u64,
        user: u64,
        content: &str,
        mention: bool,
    ) -> u64 {
        let id = self.new_id();
        let mut d = user_message_json(id, channel, user, content, mention);
        d["guild_id"] = json!(guild.to_string());
        self.dispatch("MESSAGE_CREATE", &d);
        id
    }

    /// Every REST request about `channel` (messages, edits, typing, reactions).
    pub fn channel_requests(&self, channel: u64) -> Vec<Record> {
        let prefix = format!("/channels/{channel}/");
        self.records()
            .into_iter()
            .filter(|r| r.path.starts_with(&prefix))
            .collect()
    }

    /// Dispatches a direct message from `user`; returns its id.
    pub fn direct_message(&self, channel: u64, user: u64, content: &str) -> u64 {
        let id = self.new_id();
        let d = user_message_json(id, channel, user, content, false);
        self.dispatch("MESSAGE_CREATE", &d);
        id
    }

    /// Dispatches a reply by `user` to message `parent` (included in full, as
    /// Discord does); returns its id.
    pub fn user_reply(&self, channel: u64, user: u64, content: &str, parent: u64) -> u64 {
        let id = self.new_id();
        let mut d = user_message_json(id, channel, user, content, false);
        d["guild_id"] = json!(GUILD.to_string());
        d["type"] = json!(19);
        d["message_reference"] = json!({
            "type": 0,
            "message_id": parent.to_string(),
            "channel_id": channel.to_string(),
            "guild_id": GUILD.to_string(),
        });
        if let Some(parent) = self.message(parent) {
            d["referenced_message"] = parent;
        }
        self.dispatch("MESSAGE_CREATE", &d);
        id
    }

    /// Replays a message already dispatched (as Discord may after a resume).
    pub fn replay_message(&self, id: u64) {
        let d = self.message(id).expect("message to replay");
        self.broadcast(|| Command::Dispatch {
            t: "MESSAGE_CREATE".to_owned(),
            d: d.clone(),
        });
    }

    /// Dispatches a `/command` interaction from `user`; returns its token.
    pub fn slash_command(&self, channel: u64, user: u64, name: &str, options: &Value) -> String {
        let id = self.new_id();
        let token = format!("itoken-{id}");
        let d = json!({
            "id": id.to_string(),
            "application_id": APP_ID.to_string(),
            "type": 2,
            "token": token,
            "version": 1,
            "channel": {"id": channel.to_string(), "type": 0},
            "channel_id": channel.to_string(),
            "guild_id": GUILD.to_string(),
            "member": {
                "user": user_json(user, false),
                "roles": [],
                "joined_at": TS,
                "deaf": false,
                "mute": false,
                "flags": 0,
                "permissions": "0",
            },
            "data": {"id": "1", "name": name, "type": 1, "options": options},
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 8_388_608,
            "authorizing_integration_owners": {},
            "app_permissions": "0",
            "context": 0,
        });
        self.dispatch("INTERACTION_CREATE", &d);
        token
    }

    /// Message creates (POST .../messages) in `channel`.
    pub fn creates(&self, channel: u64) -> Vec<Record> {
        let path = format!("/channels/{channel}/messages");
        self.records()
            .into_iter()
            .filter(|r| r.method == Method::POST && r.path == path && r.status == 200)
            .collect()
    }

    /// Successful writes (creates and edits) in `channel`, in arrival order.
    pub fn writes(&self, channel: u64) -> Vec<Record> {
        let prefix = format!("/channels/{channel}/messages");
        self.records()
            .into_iter()
            .filter(|r| {
                r.path.starts_with(&prefix)
                    && (r.method == Method::POST || r.method == Method::PATCH)
            })
            .collect()
    }

    /// Reactions the bot put on messages in `channel`: (message id, emoji as
    /// it appears in the path, percent-encoded).
    pub fn reactions(&self, channel: u64) -> Vec<(u64, String)> {
        let prefix = format!("/channels/{channel}/messages/");
        self.records()
            .into_iter()
            .filter(|r| r.method == Method::PUT && r.path.starts_with(&prefix))
            .filter_map(|r| {
                let rest = r.path.strip_prefix(&prefix)?;
                let (id, rest) = rest.split_once("/reactions/")?;
                let emoji = rest.strip_suffix("/@me")?;
                Some((id.parse().ok()?, emoji.to_owned()))
            })
            .collect()
    }

    /// Edits of message `id` in `channel` (including ones answered 429).
    pub fn edits(&self, channel: u64, id: u64) -> Vec<Record> {
        let path = format!("/channels/{channel}/messages/{id}");
        self.records()
            .into_iter()
            .filter(|r| r.method == Method::PATCH && r.path == path)
            .collect()
    }

    /// Bot messages in `channel` that reply (directly or through earlier
    /// bot messages) to `user_message`, in creation order, with their content.
    pub fn answer_messages(&self, channel: u64, user_message: u64) -> Vec<(u64, String)> {
        let messages = self.inner.messages.lock().unwrap();
        let mut out = Vec::new();
        let mut parent = user_message;
        loop {
            let next = messages.values().find(|m| {
                m["author"]["id"] == json!(BOT_ID.to_string())
                    && m["channel_id"] == json!(channel.to_string())
                    && m["message_reference"]["message_id"] == json!(parent.to_string())
            });
            match next {
                Some(m) => {
                    let id: u64 = m["id"].as_str().unwrap().parse().unwrap();
                    out.push((id, m["content"].as_str().unwrap_or_default().to_owned()));
                    parent = id;
                }
                None => break,
            }
        }
        out
    }
}

fn user_json(id: u64, bot: bool) -> Value {
    json!({
        "id": id.to_string(),
        "username": if bot { "rocksteady".to_owned() } else { format!("user{id}") },
        "discriminator": "0000",
        "avatar": null,
        "bot": bot,
        "public_flags": 0,
    })
}

fn user_message_json(id: u64, channel: u64, user: u64, content: &str, mention: bool) -> Value {
    let content = if mention {
        format!("<@{BOT_ID}> {content}")
    } else {
        content.to_owned()
    };
    json!({
        "id": id.to_string(),
        "channel_id": channel.to_string(),
        "author": user_json(user, false),
        "content": content,
        "timestamp": TS,
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": if mention { json!([user_json(BOT_ID, true)]) } else { json!([]) },
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
    })
}

/// The gateway envelope: `op`, `s`, `t` before `d`, compact (twilight scans
/// the raw text for them).
fn envelope(op: u8, s: Option<u64>, t: Option<&str>, d: &Value) -> String {
    let s = s.map_or_else(|| "null".to_owned(), |s| s.to_string());
    let t = t.map_or_else(|| "null".to_owned(), |t| format!("\"{t}\""));
    format!(r#"{{"op":{op},"s":{s},"t":{t},"d":{d}}}"#)
}

async fn gateway(ws: WebSocketUpgrade, State(inner): State<Arc<Inner>>) -> Response {
    ws.on_upgrade(move |socket| session(socket, inner))
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(WsMessage::Text(text.into())).await.is_ok()
}

async fn session(mut socket: WebSocket, inner: Arc<Inner>) {
    if !send(
        &mut socket,
        envelope(10, None, None, &json!({"heartbeat_interval": 41250})),
    )
    .await
    {
        return;
    }
    // Handshake: IDENTIFY or RESUME.
    loop {
        let Some(Ok(WsMessage::Text(text))) = socket.recv().await else {
            return;
        };
        let payload: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match payload["op"].as_u64() {
            Some(2) => {
                inner.identifies.fetch_add(1, Ordering::SeqCst);
                inner.changed.notify_waiters();
                let code = inner.close_on_identify.load(Ordering::SeqCst);
                if code != 0 {
                    let _ = socket
                        .send(WsMessage::Close(Some(CloseFrame {
                            code: u16::try_from(code).unwrap(),
                            reason: "refused by the fake".into(),
                        })))
                        .await;
                    return;
                }
                let addr = inner.addr.lock().unwrap().unwrap();
                let ready = json!({
                    "v": 10,
                    "user": {
                        "id": BOT_ID.to_string(),
                        "username": "rocksteady",
                        "discriminator": "0000",
                        "avatar": null,
                        "bot": true,
                        "mfa_enabled": false,
                    },
                    "guilds": [],
                    "session_id": format!("session-{}", inner.identifies.load(Ordering::SeqCst)),
                    "resume_gateway_url": format!("ws://{addr}"),
                    "application": {"id": APP_ID.to_string(), "flags": 0},
                    "shard": [0, 1],
                });
                let s = inner.seq.fetch_add(1, Ordering::SeqCst);
                if !send(&mut socket, envelope(0, Some(s), Some("READY"), &ready)).await {
                    return;
                }
                break;
            }
            Some(6) => {
                inner.resumes.fetch_add(1, Ordering::SeqCst);
                let s = inner.seq.fetch_add(1, Ordering::SeqCst);
                if !send(
                    &mut socket,
                    envelope(0, Some(s), Some("RESUMED"), &Value::Null),
                )
                .await
                {
                    return;
                }
                break;
            }
            Some(1) => {
                let _ = send(&mut socket, r#"{"op":11}"#.to_owned()).await;
            }
            _ => {}
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    inner.sessions.lock().unwrap().push(tx);
    inner.live_sessions.fetch_add(1, Ordering::SeqCst);
    inner.changed.notify_waiters();
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let payload: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if payload["op"].as_u64() == Some(1)
                        && !send(&mut socket, r#"{"op":11}"#.to_owned()).await
                    {
                        break;
                    }
                }
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            command = rx.recv() => match command {
                Some(Command::Dispatch { t, d }) => {
                    let s = inner.seq.fetch_add(1, Ordering::SeqCst);
                    if !send(&mut socket, envelope(0, Some(s), Some(&t), &d)).await {
                        break;
                    }
                }
                Some(Command::Reconnect) => {
                    let _ = send(&mut socket, envelope(7, None, None, &Value::Null)).await;
                    // The client closes and resumes on a new connection.
                }
                None => break,
            },
        }
    }
    inner.live_sessions.fetch_sub(1, Ordering::SeqCst);
    inner.changed.notify_waiters();
}

fn bot_message(
    inner: &Inner,
    id: u64,
    channel: u64,
    content: &str,
    reply_to: Option<u64>,
) -> Value {
    let mut m = json!({
        "id": id.to_string(),
        "channel_id": channel.to_string(),
        "author": user_json(BOT_ID, true),
        "content": content,
        "timestamp": TS,
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": if reply_to.is_some() { 19 } else { 0 },
        "flags": 4096,
    });
    if let Some(parent) = reply_to {
        m["message_reference"] = json!({
            "type": 0,
            "message_id": parent.to_string(),
            "channel_id": channel.to_string(),
        });
    }
    inner.messages.lock().unwrap().insert(id, m.clone());
    m
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn too_many(path: &str) -> Response {
    let mut headers = HeaderMap::new();
    let bucket = format!("fake-{}", path.len());
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("retry-after", HeaderValue::from_static("1"));
    headers.insert("x-ratelimit-scope", HeaderValue::from_static("user"));
    headers.insert(
        "x-ratelimit-bucket",
        HeaderValue::from_str(&bucket).unwrap(),
    );
    headers.insert("x-ratelimit-limit", HeaderValue::from_static("5"));
    headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
    headers.insert("x-ratelimit-reset-after", HeaderValue::from_static("0.400"));
    (
        StatusCode::TOO_MANY_REQUESTS,
        headers,
        json!({"message": "You are being rate limited.", "retry_after": 0.4, "global": false})
            .to_string(),
    )
        .into_response()
}

async fn rest(State(inner): State<Arc<Inner>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let start = Instant::now();
    let path = uri
        .path()
        .strip_prefix("/api/v10")
        .unwrap_or(uri.path())
        .to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = route(&inner, &method, &path, &body).await;
    inner.records.lock().unwrap().push(Record {
        method,
        path,
        body,
        start,
        end: Instant::now(),
        status: response.status().as_u16(),
    });
    inner.changed.notify_waiters();
    response
}

async fn route(inner: &Inner, method: &Method, path: &str, body: &Value) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let content = body["content"].as_str().unwrap_or_default();
    let latency = Duration::from_millis(inner.edit_latency_ms.load(Ordering::SeqCst));
    match (method.clone(), segments.as_slice()) {
        (Method::POST, ["channels", channel, "typing"]) => {
            let _ = channel;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["channels", channel, "messages"]) => {
            let channel: u64 = channel.parse().unwrap();
            let reply_to = body["message_reference"]["message_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| body["message_reference"]["message_id"].as_u64());
            let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(latency).await;
            let message = bot_message(inner, id, channel, content, reply_to);
            // Like Discord, echo the bot's own message back through the gateway.
            let mut echo = message.clone();
            echo["guild_id"] = json!(GUILD.to_string());
            inner.sessions.lock().unwrap().retain(|s| {
                s.send(Command::Dispatch {
                    t: "MESSAGE_CREATE".to_owned(),
                    d: echo.clone(),
                })
                .is_ok()
            });
            json_response(StatusCode::OK, &message)
        }
        (Method::PATCH, ["channels", channel, "messages", id]) => {
            let every = inner.rate_limit_every.load(Ordering::SeqCst);
            let n = inner.channel_edits.fetch_add(1, Ordering::SeqCst) + 1;
            if every > 0 && n.is_multiple_of(every) {
                return too_many(path);
            }
            tokio::time::sleep(latency).await;
            let (_channel, id): (u64, u64) = (channel.parse().unwrap(), id.parse().unwrap());
            let mut messages = inner.messages.lock().unwrap();
            match messages.get_mut(&id) {
                Some(m) => {
                    m["content"] = json!(content);
                    m["edited_timestamp"] = json!(TS);
                    json_response(StatusCode::OK, m)
                }
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"message": "Unknown Message", "code": 10008}),
                ),
            }
        }
        (Method::PUT, ["channels", _channel, "messages", _id, "reactions", _emoji, "@me"]) => {
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["channels", _channel, "messages", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            match inner.messages.lock().unwrap().get(&id) {
                Some(m) => json_response(StatusCode::OK, m),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"message": "Unknown Message", "code": 10008}),
                ),
            }
        }
        (Method::PUT, ["applications", app, "commands"]) => {
            let commands: Vec<Value> = body
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, mut c)| {
                    c["id"] = json!((7000 + i).to_string());
                    c["application_id"] = json!((*app).to_owned());
                    c["version"] = json!("1");
                    if c.get("type").is_none() {
                        c["type"] = json!(1);
                    }
                    c
                })
                .collect();
            json_response(StatusCode::OK, &Value::Array(commands))
        }
        (Method::POST, ["interactions", _id, _token, "callback"]) => {
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::PATCH, ["webhooks", _app, token, "messages", "@original"]) => {
            tokio::time::sleep(latency).await;
            let id = *inner
                .webhook_originals
                .lock()
                .unwrap()
                .entry((*token).to_owned())
                .or_insert_with(|| inner.next_id.fetch_add(1, Ordering::SeqCst));
            json_response(
                StatusCode::OK,
                &bot_message(inner, id, CHANNEL, content, None),
            )
        }
        (Method::POST, ["webhooks", _app, _token]) => {
            tokio::time::sleep(latency).await;
            let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
            json_response(
                StatusCode::OK,
                &bot_message(inner, id, CHANNEL, content, None),
            )
        }
        (Method::PATCH, ["webhooks", _app, _token, "messages", id]) => {
            tokio::time::sleep(latency).await;
            let id: u64 = id.parse().unwrap_or(0);
            json_response(
                StatusCode::OK,
                &bot_message(inner, id, CHANNEL, content, None),
            )
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"message": "404: Not Found", "code": 0}),
        ),
    }
}
