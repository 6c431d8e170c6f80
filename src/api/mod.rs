//! The HTTPS API (`/api/v1`): sign-in, requests and approvals, grants,
//! sessions and the audit log, as JSON over rustls with the certificate from
//! `certs/` (or `api.tls_cert`). The CLI uses it; docs/api.md describes it.
//!
//! Bodies are capped at 64 KiB, TLS handshakes at 10 s, and every handler
//! answers errors as `{"error": ..., "hint": ...}` with a 4xx status; nothing
//! a client sends can panic the server.

pub(crate) mod auth;
mod error;
pub(crate) mod handlers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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

const MAX_BODY: usize = 64 << 10;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections to the API at once, at most.
const MAX_CONNECTIONS: usize = 512;

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    logins: Arc<auth::Logins>,
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    let state = AppState { gateway, logins: Arc::default() };
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
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
    let app = router(gateway);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "too many API connections; dropping one");
            continue;
        };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ClientAddr(peer));
                app.clone().oneshot(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(15))
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
