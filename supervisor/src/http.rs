//! The local HTTP endpoint: `GET /health` (200 or 503 with a JSON reason)
//! and `GET /metrics` (OpenMetrics when the scraper asks for it, else the
//! Prometheus text format), both served from what the supervisor loop
//! publishes and the counters its connection tasks keep.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::observe::{render_metrics, Format, Health, Observed};

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    observed: Arc<Observed>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(observed);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!("HTTP endpoint failed: {e}");
    }
}

async fn health(State(observed): State<Arc<Observed>>) -> impl IntoResponse {
    let json = |code: StatusCode, body: serde_json::Value| {
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
    };
    match observed.latest() {
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unhealthy", "reason": "starting"}),
        ),
        Some(snap) => {
            let active = snap.status.active_backend.map(proto::chat::Backend::as_str);
            match snap.health {
                Health::Ok => json(
                    StatusCode::OK,
                    serde_json::json!({"status": "ok", "active_backend": active}),
                ),
                Health::Unhealthy(reason) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "unhealthy", "reason": reason, "active_backend": active}),
                ),
            }
        }
    }
}

async fn metrics(State(observed): State<Arc<Observed>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let body = render_metrics(observed.latest().as_ref(), &observed, format);
    ([(header::CONTENT_TYPE, format.content_type())], body)
}
