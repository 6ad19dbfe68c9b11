//! The admin API: HTTP and JSON on a listener of its own, behind a bearer token.
//!
//! | request                | answer                                                        |
//! |------------------------|---------------------------------------------------------------|
//! | `GET /v1/directory`    | the directory ([`crate::directory::DirectoryView`])           |
//! | `POST /v1/changes`     | applies one [`Change`]: `{"change_id": N}`, or an error       |
//! | `GET /healthz`         | `ok` (no token needed)                                        |
//! | `GET /metrics`         | the portal's metrics, Prometheus text (no token needed)       |
//!
//! Errors are `{"error": "..."}` with 400 (malformed request), 401 (token), 409 (the change does
//! not apply to the directory: unknown id, token or address in use, ...), 503 (database). A
//! refused change changes nothing. Every change goes through [`Replica::submit`]: committed,
//! then applied to the core, so the nodes concerned have been told when the answer arrives.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::directory::{Change, TokenDigest};
use crate::replica::Replica;
use crate::store::{Store, StoreError};

/// Renders the portal's metrics for `GET /metrics`.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

struct AdminState<S> {
    replica: Arc<Replica<S>>,
    token: TokenDigest,
    metrics: RenderMetrics,
}

/// The admin API's routes over `replica`, for requests carrying `Authorization: Bearer
/// <token>`.
pub fn router<S: Store>(replica: Arc<Replica<S>>, token: &str, metrics: RenderMetrics) -> Router {
    let state = Arc::new(AdminState {
        replica,
        token: TokenDigest::of(token.as_bytes()),
        metrics,
    });
    Router::new()
        .route("/v1/directory", get(directory::<S>))
        .route("/v1/changes", post(change::<S>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics::<S>))
        .with_state(state)
}

/// Admin connections served at once, at most; the next is accepted when one ends. The
/// listener is reachable before any token is checked, so this is what an unauthenticated peer
/// can hold.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a connection may take to send a request's headers (and its TLS handshake) before
/// it is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` (TLS first when `tls` is given) until the listener fails, at
/// most [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
) -> io::Result<()> {
    serve_limited(listener, tls, router, MAX_CONNECTIONS).await
}

/// [`serve`] with another connection limit (for tests of the limit).
pub async fn serve_limited(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    max_connections: usize,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(()); // never closed
        };
        let (tcp, peer) = listener.accept().await?;
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = match tls {
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                        .map_err(|e| e.to_string()),
                    Ok(Err(error)) => Err(format!("TLS: {error}")),
                    Err(_) => Err("TLS handshake too slow".to_owned()),
                },
                None => builder
                    .serve_connection(TokioIo::new(tcp), service)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "Admin connection failed");
            }
            drop(slot);
        });
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

fn authorized<S>(state: &AdminState<S>, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    presented
        .is_some_and(|token| bool::from(TokenDigest::of(token.as_bytes()).0.ct_eq(&state.token.0)))
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token (Authorization: Bearer <token>)",
    )
}

async fn directory<S: Store>(
    State(state): State<Arc<AdminState<S>>>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let view = state
        .replica
        .server()
        .with_portal(|portal, _| portal.directory().view());
    Json(view).into_response()
}

async fn change<S: Store>(
    State(state): State<Arc<AdminState<S>>>,
    headers: HeaderMap,
    body: Result<Json<Change>, JsonRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let change = match body {
        Ok(Json(change)) => change,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match state.replica.submit(&change).await {
        Ok(id) => Json(json!({ "change_id": id.0 })).into_response(),
        Err(StoreError::Refused(refused)) => error(StatusCode::CONFLICT, refused),
        Err(failure) => {
            tracing::warn!(error = %failure, "Admin change failed");
            error(StatusCode::SERVICE_UNAVAILABLE, failure)
        }
    }
}

async fn render_metrics<S: Store>(State(state): State<Arc<AdminState<S>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (state.metrics)(),
    )
        .into_response()
}
