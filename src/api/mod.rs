//! The HTTPS API (`/api/v1`): sign-in, requests and approvals, grants,
//! sessions and the audit log, as JSON over rustls with the certificate from
//! `certs/` (or `api.tls_cert`). The CLI uses it; docs/api.md describes it.
//!
//! Connections are limited per source address and overall, the TLS handshake
//! and each request head by `api.header_timeout`, the body by `api.max_body`
//! and `api.body_timeout` (it is read whole before a handler runs), and the
//! whole request by `api.request_timeout`. Every handler answers errors as
//! `{"error": ..., "hint": ...}` with a 4xx status; nothing a client sends can
//! panic the server.

pub(crate) mod auth;
mod error;
pub(crate) mod handlers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub use auth::{ClientAddr, Issued};

use crate::gateway::Gateway;
use crate::limits::{Full, Limiter, Reason, Source};

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    logins: Arc<auth::Logins>,
}

/// The API's limits, from `[api]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_source: usize,
    connections: usize,
    header_timeout: Duration,
    body_timeout: Duration,
    request_timeout: Duration,
    max_body: usize,
}

impl Limits {
    fn of(api: &crate::config::ApiConfig) -> Limits {
        Limits {
            per_source: api.max_connections_per_source,
            connections: api.max_connections,
            header_timeout: api.header_timeout,
            body_timeout: api.body_timeout,
            request_timeout: api.request_timeout,
            max_body: usize::try_from(api.max_body.0).unwrap_or(usize::MAX),
        }
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    let max_body = gateway.config.api.as_ref().map_or(64 << 10, |api| Limits::of(api).max_body);
    let logins = Arc::new(auth::Logins::new(&gateway.config));
    let state = AppState { gateway, logins };
    let v1 = Router::new()
        .route("/health", get(handlers::health))
        .route("/login/device", post(handlers::login_device))
        .route("/login/device/wait", post(handlers::login_device_wait))
        .route("/login/code", post(handlers::login_code))
        .route("/login/code/finish", post(handlers::login_code_finish))
        .route("/logout", post(handlers::logout))
        .route("/me", get(handlers::me))
        .route("/targets", get(handlers::targets))
        .route("/requests", get(handlers::list_requests).post(handlers::create_request))
        .route("/requests/{id}", get(handlers::get_request))
        .route("/requests/{id}/approve", post(handlers::approve))
        .route("/requests/{id}/deny", post(handlers::deny))
        .route("/requests/{id}/cancel", post(handlers::cancel))
        .route("/grants", get(handlers::list_grants))
        .route("/grants/{id}/revoke", post(handlers::revoke))
        .route("/sessions", get(handlers::list_sessions))
        .route("/rdp/tickets", post(handlers::rdp_ticket))
        .route("/sessions/{id}/kill", post(handlers::kill_session))
        .route("/audit", get(handlers::audit))
        .route("/audit/verify", get(handlers::audit_verify));
    Router::new()
        .nest("/api/v1", v1)
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("TLS certificate: {0}")]
    Tls(String),
}

/// The self-signed certificate in certs/ (made on first use) for the public host name.
pub fn default_identity(
    config: &crate::config::Config,
    keys: &crate::keys::KeyMaterial,
) -> Result<(String, crate::secret::Secret<String>), crate::keys::KeyError> {
    let mut hosts = vec![config.gateway.public_host.clone(), "localhost".into(), "127.0.0.1".into()];
    hosts.sort();
    hosts.dedup();
    keys.tls_identity(&hosts)
}

fn tls_config(gateway: &Gateway) -> Result<rustls::ServerConfig, ApiStartError> {
    let api = gateway.config.api.as_ref().ok_or_else(|| ApiStartError::Tls("no [api] section".into()))?;
    let (cert_pem, key_pem) = match (&api.tls_cert, &api.tls_key) {
        (Some(c), Some(k)) => (
            std::fs::read_to_string(c).map_err(|e| ApiStartError::Tls(format!("{}: {e}", c.display())))?,
            crate::keys::read_private(k).map_err(|e| ApiStartError::Tls(e.to_string()))?,
        ),
        _ => default_identity(&gateway.config, &gateway.keys).map_err(|e| ApiStartError::Tls(e.to_string()))?,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiStartError::Tls(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes())
        .map_err(|e| ApiStartError::Tls(format!("key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiStartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ApiStartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ApiStartError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&gateway)?));
    let api = gateway.config.api.as_ref().ok_or_else(|| ApiStartError::Tls("no [api] section".into()))?;
    let limits = Limits::of(api);
    let app = router(Arc::clone(&gateway));
    let slots = Limiter::new(limits.per_source, limits.connections);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let slot = match slots.try_acquire(Source::of(peer.ip())) {
            Ok(slot) => slot,
            Err(full) => {
                gateway.refused(
                    peer.ip(),
                    match full {
                        Full::Source => Reason::ApiConnectionsPerSource,
                        Full::Everyone => Reason::ApiConnectionsTotal,
                    },
                );
                continue;
            }
        };
        let (acceptor, app, stop, gw) = (acceptor.clone(), app.clone(), shutdown.clone(), Arc::clone(&gateway));
        connections.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let (app, gw) = (app.clone(), Arc::clone(&gw));
                async move {
                    let answer = tokio::time::timeout(limits.request_timeout, async {
                        let mut request = match read_body(request, &limits).await {
                            Ok(request) => request,
                            Err(refused) => {
                                if let Some(reason) = refused.reason() {
                                    gw.refused(peer.ip(), reason);
                                }
                                return Ok(refused.into_response());
                            }
                        };
                        request.extensions_mut().insert(ClientAddr(peer));
                        app.oneshot(request).await
                    })
                    .await;
                    answer.unwrap_or_else(|_| {
                        gw.refused(peer.ip(), Reason::ApiRequestTimeout);
                        Ok(RequestRefused::RequestTimeout(limits.request_timeout).into_response())
                    })
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), connections.wait()).await;
    Ok(())
}

/// A request refused before a handler saw it.
#[derive(Debug)]
enum RequestRefused {
    TooLarge(usize),
    Timeout(Duration),
    Broken,
    RequestTimeout(Duration),
}

impl RequestRefused {
    /// What it is counted under; a body broken off by the client is not a refusal.
    fn reason(&self) -> Option<Reason> {
        match self {
            RequestRefused::TooLarge(_) => Some(Reason::ApiBodyTooLarge),
            RequestRefused::Timeout(_) => Some(Reason::ApiBodyTimeout),
            RequestRefused::Broken => None,
            RequestRefused::RequestTimeout(_) => Some(Reason::ApiRequestTimeout),
        }
    }
}

impl IntoResponse for RequestRefused {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            RequestRefused::TooLarge(max) => {
                let size = if max % 1024 == 0 { format!("{} KiB", max / 1024) } else { format!("{max} bytes") };
                (StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {size} (api.max_body)"))
            }
            RequestRefused::Timeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} (api.body_timeout)",
                    humantime::format_duration(limit)
                ),
            ),
            RequestRefused::Broken => (StatusCode::BAD_REQUEST, "the request body could not be read".to_string()),
            RequestRefused::RequestTimeout(limit) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no answer within {} (api.request_timeout)", humantime::format_duration(limit)),
            ),
        };
        let mut response = error::ApiError::new(status, message).into_response();
        // What is left of the request is not read: the connection cannot carry another one.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The request with its whole body read: at most `max_body` bytes (a larger
/// `Content-Length` is refused before anything is read), within `body_timeout`.
async fn read_body(
    request: hyper::Request<hyper::body::Incoming>,
    limits: &Limits,
) -> Result<axum::extract::Request, RequestRefused> {
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(RequestRefused::TooLarge(limits.max_body));
    }
    let limited = http_body_util::Limited::new(body, limits.max_body);
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Err(_) => Err(RequestRefused::Timeout(limits.body_timeout)),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(RequestRefused::TooLarge(limits.max_body))
        }
        Ok(Err(_)) => Err(RequestRefused::Broken),
        Ok(Ok(collected)) => {
            Ok(axum::extract::Request::from_parts(parts, axum::body::Body::from(collected.to_bytes())))
        }
    }
}
