//! The HTTP side: routes, key check, CORS, and the chat-completion handler
//! that relays a supervisor request as one JSON body or as server-sent events.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use client::link::{LinkEvent, Request as LinkRequest, SupervisorLink};
use proto::admin::SlotState;
use proto::client::{ErrorKind, ModelSlot, SupervisorToClient};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{Chat, ChatRequest, Usage};
use crate::config::Config;
use crate::error::ApiError;
use crate::idle::Peer;
use crate::keys::Keys;
use crate::limits::{Limits, Refusal};
use crate::metrics::{Format, Metrics};
use crate::stop::StopFilter;

/// How long a models query may take.
const MODELS_TIMEOUT: Duration = Duration::from_secs(3);
/// Key name used when no keys are configured (loopback only).
const ANONYMOUS: &str = "anonymous";

/// Everything the handlers share.
pub struct Shared {
    config: Config,
    keys: Keys,
    link: SupervisorLink,
    limits: Mutex<Limits>,
    /// The counters served on `/metrics`.
    pub metrics: Metrics,
    next_id: AtomicU64,
}

impl Shared {
    /// State for the handlers.
    pub fn new(config: Config, keys: Keys, link: SupervisorLink) -> Self {
        let limits = Limits::new(
            config.key_max_concurrent,
            config.key_rate_limit,
            Duration::from_secs(config.key_rate_window_secs),
        );
        Self {
            config,
            keys,
            link,
            limits: Mutex::new(limits),
            metrics: Metrics::default(),
            next_id: AtomicU64::new(1),
        }
    }

    fn completion_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("chatcmpl-{:x}{n:06x}", unix_now())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The name of the key a request came with (never the key).
#[derive(Debug, Clone)]
struct KeyName(Arc<str>);

/// Builds the router.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            authorize,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), cors))
        .layer(middleware::from_fn(busy))
        .with_state(shared)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound {
        message: format!("no such path {}", uri.path()),
        code: "unknown_url",
    }
}

/// Marks the connection busy while its request is answered, so a long
/// non-streamed answer is not cut by the idle timeout.
async fn busy(req: Request, next: Next) -> Response {
    let guard = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(peer)| peer.busy());
    let response = next.run(req).await;
    drop(guard);
    response
}

/// Checks the bearer key; counts refusals.
async fn authorize(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let name = if shared.keys.is_empty() {
        Some(ANONYMOUS.to_owned())
    } else {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|key| shared.keys.find(key.trim()))
            .map(str::to_owned)
    };
    let Some(name) = name else {
        tracing::info!(path = %req.uri().path(), "refused: missing or unknown API key");
        shared.metrics.request("unauthenticated", 401);
        shared.metrics.error("unauthenticated", "invalid_api_key");
        return ApiError::Unauthorized.into_response();
    };
    req.extensions_mut().insert(KeyName(name.into()));
    next.run(req).await
}

/// CORS: off unless origins are configured; answers preflights itself.
async fn cors(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let origins = &shared.config.cors_origins;
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|o| {
        let text = o.to_str().ok()?;
        origins
            .iter()
            .any(|a| a == "*" || a == text)
            .then(|| o.clone())
    });
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight && allowed.is_some() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = allowed {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
    response
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        shared.metrics.render(format),
    )
        .into_response()
}

/// The supervisor's own `/health`, passed through (status and JSON body).
async fn supervisor_health(addr: &str) -> Result<(StatusCode, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: supervisor\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        // A health answer is small; more is not a health answer.
        (&mut stream).take(64 * 1024).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(MODELS_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("the supervisor's /health at {addr} did not answer in time"))?
        .map_err(|e| format!("the supervisor's /health at {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("the supervisor's /health at {addr} sent no HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("the supervisor's /health at {addr} sent no status"))?;
    Ok((status, body.to_owned()))
}

/// Health: the supervisor's `/health` passed through when `supervisor_http`
/// is set, else ok while a slot is ready or busy.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let addr = &shared.config.supervisor_http;
    if !addr.is_empty() {
        return match supervisor_health(addr).await {
            Ok((status, body)) => {
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": reason})),
            )
                .into_response(),
        };
    }
    match shared.link.models(MODELS_TIMEOUT).await {
        Ok(slots) => {
            let ok = slots
                .iter()
                .any(|s| matches!(s.state, SlotState::Ready | SlotState::Busy));
            let list: Vec<Value> = slots
                .iter()
                .map(|s| json!({"name": s.name, "backend": s.backend.as_str(), "model": s.model, "state": s.state.as_str()}))
                .collect();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                status,
                Json(json!({"status": if ok { "ok" } else { "unavailable" }, "slots": list})),
            )
                .into_response()
        }
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": err.to_string()})),
        )
            .into_response(),
    }
}

/// The models the slots serve, one entry per name, owners = their backends.
fn model_entries(slots: &[ModelSlot]) -> Vec<Value> {
    let mut entries: Vec<(String, Vec<&'static str>)> = Vec::new();
    for s in slots {
        let backend = s.backend.as_str();
        match entries.iter_mut().find(|(id, _)| *id == s.model) {
            Some((_, owners)) if !owners.contains(&backend) => owners.push(backend),
            Some(_) => {}
            None => entries.push((s.model.clone(), vec![backend])),
        }
    }
    entries
        .into_iter()
        .map(|(id, owners)| {
            json!({"id": id, "object": "model", "created": 0, "owned_by": owners.join(",")})
        })
        .collect()
}

/// Whether a slot answers to `name` (the supervisor applies the same rule).
fn slot_serves(s: &ModelSlot, name: &str) -> bool {
    let stem = std::path::Path::new(&s.model_file)
        .file_stem()
        .map(|f| f.to_string_lossy().into_owned());
    s.model == name || s.model_file == name || stem.as_deref() == Some(name)
}

async fn fetch_models(shared: &Shared) -> Result<Vec<ModelSlot>, ApiError> {
    shared
        .link
        .models(MODELS_TIMEOUT)
        .await
        .map_err(|err| ApiError::Unavailable {
            message: format!("the model service is not reachable: {err}"),
        })
}

async fn models(State(shared): State<Arc<Shared>>, Extension(key): Extension<KeyName>) -> Response {
    let response = match fetch_models(&shared).await {
        Ok(slots) => Json(json!({"object": "list", "data": model_entries(&slots)})).into_response(),
        Err(err) => err.into_response(),
    };
    shared.metrics.request(&key.0, response.status().as_u16());
    response
}

async fn model(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<KeyName>,
    Path(id): Path<String>,
) -> Response {
    let response = match fetch_models(&shared).await {
        Ok(slots) => model_entries(&slots)
            .into_iter()
            .find(|m| m["id"] == id.as_str())
            .map_or_else(
                || unknown_model(&id).into_response(),
                |m| Json(m).into_response(),
            ),
        Err(err) => err.into_response(),
    };
    shared.metrics.request(&key.0, response.status().as_u16());
    response
}

fn unknown_model(name: &str) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "The model `{name}` does not exist or is not served here (see GET /v1/models)."
        ),
        code: "model_not_found",
    }
}

/// Releases the key's running slot when the request ends, however it ends.
struct Admitted {
    shared: Arc<Shared>,
    key: Arc<str>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(&self.key);
    }
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<KeyName>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match start_chat(&shared, &key, &headers, body).await {
        Ok(response) => response,
        Err(err) => {
            let kind = err.body()["error"]["type"]
                .as_str()
                .unwrap_or("error")
                .to_owned();
            shared.metrics.error(&key.0, &kind);
            err.into_response()
        }
    };
    let status = response.status().as_u16();
    shared.metrics.request(&key.0, status);
    // The key's name and the outcome only: never the key or the prompt.
    tracing::info!(key = %key.0, status, "chat completion");
    response
}

/// Reads and checks the body: content type, size, JSON, fields.
async fn read_chat(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Chat, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limit = shared.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge {
            message: format!("the request body is larger than {limit} bytes"),
        })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let request: ChatRequest = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::bad_request("body", format!("the body is not valid JSON: {inner}"))
        } else {
            ApiError::bad_request(&path, format!("invalid value for '{path}': {inner}"))
        }
    })?;
    let chat = request.check(shared.config.gen_defaults(), shared.config.max_tokens_limit)?;
    if !chat.model.is_empty() {
        let slots = fetch_models(shared).await?;
        if !slots.iter().any(|s| slot_serves(s, &chat.model)) {
            return Err(unknown_model(&chat.model));
        }
    }
    Ok(chat)
}

async fn start_chat(
    shared: &Arc<Shared>,
    key: &KeyName,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let conversation = crate::api::conversation_key(
        &key.0,
        headers
            .get(crate::api::CONVERSATION_HEADER)
            .map(HeaderValue::as_bytes),
    )?;
    let chat = read_chat(shared, headers, body).await?;
    let admitted = {
        let mut limits = shared.limits.lock().unwrap_or_else(PoisonError::into_inner);
        match limits.admit(&key.0, Instant::now()) {
            Ok(()) => Admitted {
                shared: Arc::clone(shared),
                key: Arc::clone(&key.0),
            },
            Err(Refusal::Concurrency) => {
                return Err(ApiError::TooMany {
                    message: format!(
                        "this key already has {} requests running; retry when one ends",
                        shared.config.key_max_concurrent
                    ),
                    retry_after: Duration::from_secs(1),
                })
            }
            Err(Refusal::Rate(wait)) => {
                return Err(ApiError::TooMany {
                    message: format!(
                        "this key started {} requests in {} s; retry in {} s",
                        shared.config.key_rate_limit,
                        shared.config.key_rate_window_secs,
                        wait.as_secs().max(1)
                    ),
                    retry_after: wait,
                })
            }
        }
    };
    let mut request = shared
        .link
        .submit_in(
            chat.messages.clone(),
            chat.params,
            chat.model.clone(),
            conversation,
        )
        .await
        .map_err(|err| ApiError::Unavailable {
            message: format!("the model service is not reachable: {err}"),
        })?;
    // The first event says whether the supervisor took the request: a
    // refusal (queue full, unknown model, too long) is an HTTP error even
    // for a stream, so clients can retry on the status.
    let first = request.next().await;
    let first = match first {
        LinkEvent::Event(SupervisorToClient::Error(e)) => {
            return Err(ApiError::from_supervisor(
                e.kind,
                e.message,
                Duration::from_secs(shared.config.busy_retry_after_secs),
            ))
        }
        LinkEvent::Lost => {
            return Err(ApiError::Unavailable {
                message: "the connection to the model service was lost".into(),
            })
        }
        LinkEvent::Event(event) => event,
    };
    let relay = Relay {
        shared: Arc::clone(shared),
        key: Arc::clone(&key.0),
        id: shared.completion_id(),
        created: unix_now(),
        model: chat.model.clone(),
        filter: StopFilter::new(chat.stops.clone()),
        max_tokens: chat.params.max_tokens,
        tokens_seen: 0,
        _admitted: admitted,
    };
    if chat.stream {
        Ok(stream(relay, request, first, chat.include_usage))
    } else {
        complete(relay, request, first).await
    }
}

/// One answer being relayed.
struct Relay {
    shared: Arc<Shared>,
    key: Arc<str>,
    id: String,
    created: u64,
    /// The model asked for; the serving model's name once known.
    model: String,
    filter: StopFilter,
    max_tokens: u32,
    /// Token events relayed (a lower bound on tokens when no Done comes).
    tokens_seen: u32,
    _admitted: Admitted,
}

/// How an answer ended.
enum End {
    /// Done: finish reason and usage.
    Finished(&'static str, Usage),
    /// The supervisor failed it.
    Failed(ApiError),
}

impl Relay {
    /// Applies one event: text to send now, the end if this was it, and
    /// whether a stop string was found just now (the caller then asks the
    /// supervisor to stop; its `Done` still brings the usage).
    fn apply(&mut self, event: LinkEvent) -> (String, Option<End>, bool) {
        match event {
            LinkEvent::Event(SupervisorToClient::Started(s)) => {
                if self.model.is_empty() {
                    self.model = s.model;
                }
                (String::new(), None, false)
            }
            LinkEvent::Event(SupervisorToClient::Token(t)) => {
                if self.filter.stopped() {
                    // Generated before the stop reached the worker: not sent.
                    return (String::new(), None, false);
                }
                self.tokens_seen += 1;
                let out = self.filter.push(&t.text);
                (out.text, None, out.stopped)
            }
            LinkEvent::Event(SupervisorToClient::Failover(_)) => {
                self.shared.metrics.failover(&self.key);
                (String::new(), None, false)
            }
            LinkEvent::Event(SupervisorToClient::Done(d)) => {
                let text = self.filter.finish();
                let usage = Usage::new(d.stats.prompt_tokens, d.stats.generated_tokens);
                let reason =
                    if !self.filter.stopped() && d.stats.generated_tokens >= self.max_tokens {
                        "length"
                    } else {
                        "stop"
                    };
                if self.model.is_empty() {
                    self.model = d.model;
                }
                (text, Some(End::Finished(reason, usage)), false)
            }
            LinkEvent::Event(SupervisorToClient::Error(e))
                if self.filter.stopped() && e.kind == ErrorKind::Cancelled =>
            {
                // Stopped while it moved between workers: no figures come;
                // count the tokens relayed.
                let usage = Usage::new(0, self.tokens_seen);
                (String::new(), Some(End::Finished("stop", usage)), false)
            }
            LinkEvent::Event(SupervisorToClient::Error(e)) => {
                let err = ApiError::from_supervisor(
                    e.kind,
                    e.message,
                    Duration::from_secs(self.shared.config.busy_retry_after_secs),
                );
                (String::new(), Some(End::Failed(err)), false)
            }
            LinkEvent::Lost => (
                String::new(),
                Some(End::Failed(ApiError::Unavailable {
                    message: "the connection to the model service was lost mid-answer".into(),
                })),
                false,
            ),
            LinkEvent::Event(SupervisorToClient::Queued(_) | SupervisorToClient::Models(_)) => {
                (String::new(), None, false)
            }
        }
    }

    fn count_usage(&self, usage: Usage) {
        self.shared
            .metrics
            .tokens(&self.key, usage.prompt_tokens, usage.completion_tokens);
    }

    fn chunk(&self, delta: &Value, finish: Option<&str>, include_usage: bool) -> Value {
        let mut v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

/// A non-streamed completion: one JSON body at the end.
async fn complete(
    mut relay: Relay,
    mut request: LinkRequest,
    first: SupervisorToClient,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut event = LinkEvent::Event(first);
    let (finish, usage) = loop {
        let (piece, end, stop) = relay.apply(event);
        text.push_str(&piece);
        if stop {
            request.stop().await;
        }
        match end {
            None => event = request.next().await,
            Some(End::Finished(reason, usage)) => break (reason, usage),
            Some(End::Failed(err)) => return Err(err),
        }
    };
    relay.count_usage(usage);
    Ok(Json(json!({
        "id": relay.id, "object": "chat.completion", "created": relay.created,
        "model": relay.model, "system_fingerprint": null,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                     "logprobs": null, "finish_reason": finish}],
        "usage": usage,
    }))
    .into_response())
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// A streamed completion: server-sent events from a task that stops (and so
/// cancels the request) as soon as the client goes away.
fn stream(
    relay: Relay,
    request: LinkRequest,
    first: SupervisorToClient,
    include_usage: bool,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    tokio::spawn(relay_stream(relay, request, first, include_usage, tx));
    let events = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| e.map(Ok::<Event, Infallible>))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

async fn relay_stream(
    mut relay: Relay,
    mut request: LinkRequest,
    first: SupervisorToClient,
    include_usage: bool,
    tx: mpsc::Sender<Event>,
) {
    let mut event = LinkEvent::Event(first);
    let mut sent_role = false;
    loop {
        let failover = match &event {
            LinkEvent::Event(SupervisorToClient::Failover(f)) => {
                Some(format!(" failover {}->{}", f.from, f.to))
            }
            _ => None,
        };
        let (piece, end, stop) = relay.apply(event);
        if stop {
            request.stop().await;
        }
        let mut out = Vec::new();
        if !sent_role {
            // The role comes first, as OpenAI sends it.
            out.push(data(&relay.chunk(
                &json!({"role": "assistant", "content": ""}),
                None,
                include_usage,
            )));
            sent_role = true;
        }
        if let Some(note) = failover {
            out.push(Event::default().comment(note));
        }
        if !piece.is_empty() {
            out.push(data(&relay.chunk(
                &json!({"content": piece}),
                None,
                include_usage,
            )));
        }
        let ended = end.is_some();
        match end {
            None => {}
            Some(End::Finished(reason, usage)) => {
                finish(&relay, reason, usage, include_usage, &mut out);
            }
            Some(End::Failed(err)) => {
                // Headers are gone: the error travels as an event, which the
                // openai client raises as an APIError.
                relay.shared.metrics.error(&relay.key, "stream_failed");
                out.push(data(&err.body()));
            }
        }
        for e in out {
            if tx.send(e).await.is_err() {
                relay.shared.metrics.disconnect(&relay.key);
                return;
            }
        }
        if ended {
            return;
        }
        event = tokio::select! {
            () = tx.closed() => {
                // The client went away: dropping the request cancels it.
                relay.shared.metrics.disconnect(&relay.key);
                tracing::info!(key = %relay.key, "client left the stream; request cancelled");
                return;
            }
            event = request.next() => event,
        };
    }
}

/// The last chunks: finish reason, usage when asked, and `[DONE]`.
fn finish(relay: &Relay, reason: &str, usage: Usage, include_usage: bool, out: &mut Vec<Event>) {
    relay.count_usage(usage);
    out.push(data(&relay.chunk(&json!({}), Some(reason), include_usage)));
    if include_usage {
        out.push(data(&json!({
            "id": relay.id, "object": "chat.completion.chunk", "created": relay.created,
            "model": relay.model, "system_fingerprint": null, "choices": [], "usage": usage,
        })));
    }
    out.push(Event::default().data("[DONE]"));
}
