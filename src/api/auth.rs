//! Signing in to the API and proving it on each call.
//!
//! `jit-gateway login` starts a device flow (or a browser sign-in with
//! authorization code + PKCE on a loopback redirect) *through the gateway*:
//! the gateway talks to the identity provider with its own client, verifies
//! the ID token, and issues its own session token. The CLI never sees the
//! provider's tokens, the PKCE verifier or the client secret.
//!
//! A session token is `jgw1.<session id>.<HMAC-SHA256>`; the session itself
//! (person, expiry, signed out) lives in the store, so a token can be
//! withdrawn. Tokens are never stored or logged, only session IDs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::gateway::Gateway;
use crate::limits::{Full, Limiter, Permit, Reason, Source};
use crate::oidc::{CodeLogin, DeviceAuthorization, OidcError, VerifiedIdentity};
use crate::policy::Actor;
use crate::store::{ApiSession, AuditEvent, Identity, blocking};

const PREFIX: &str = "jgw1";

/// The client's address, put on each request by the server loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

fn mac_key(gateway: &Gateway) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, gateway.keys.token_key())
}

fn mint(gateway: &Gateway, session_id: &str) -> String {
    let payload = format!("{PREFIX}.{session_id}");
    let tag = hmac::sign(&mac_key(gateway), payload.as_bytes());
    format!("{payload}.{}", data_encoding::BASE64URL_NOPAD.encode(tag.as_ref()))
}

/// The session ID inside a token whose MAC is right.
fn check(gateway: &Gateway, token: &str) -> Result<String, &'static str> {
    check_token(gateway.keys.token_key(), token)
}

/// `check` with the token key itself (pure: the fuzz target calls it).
pub(crate) fn check_token(secret: &[u8], token: &str) -> Result<String, &'static str> {
    let mut parts = token.split('.');
    let (Some(prefix), Some(id), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("not a gateway session token");
    };
    if prefix != PREFIX {
        return Err(if prefix.starts_with("ey") {
            "this is an identity provider's token, not a gateway session token"
        } else {
            "not a gateway session token"
        });
    }
    let tag = data_encoding::BASE64URL_NOPAD.decode(tag.as_bytes()).map_err(|_| "malformed token")?;
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), format!("{prefix}.{id}").as_bytes(), &tag)
        .map_err(|_| "the token's signature is not this gateway's")?;
    Ok(id.to_string())
}

/// What a successful sign-in returns to the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub token: String,
    pub user: String,
    pub expires_ms: i64,
}

/// Records the identity and opens an API session for it.
pub async fn issue(
    gateway: &Gateway,
    verified: &VerifiedIdentity,
    client_ip: &str,
    method: &'static str,
) -> ApiResult<Issued> {
    let identity =
        crate::ssh::signin::remember(gateway, verified, None, client_ip, method).await.map_err(|e| match e {
            crate::ssh::signin::SignInError::NameTaken { .. } => ApiError::forbidden(e.to_string()),
            crate::ssh::signin::SignInError::Store(_) => ApiError::unavailable(e.to_string()),
        })?;
    let now = gateway.clock.now_ms();
    let ttl = gateway.config.api.as_ref().map_or(Duration::from_secs(8 * 3600), |a| a.session_ttl);
    let session = ApiSession {
        id: crate::ids::new_id("a"),
        identity_id: identity.id.clone(),
        user: identity.user.clone(),
        created_ms: now,
        expires_ms: now + ttl.as_millis() as i64,
        revoked: false,
    };
    let token = mint(gateway, &session.id);
    let stored = session.clone();
    blocking(&gateway.store, move |s| s.upsert_api_session(&stored))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    tracing::info!(user = %identity.user, session = %session.id, "API session opened");
    Ok(Issued { token, user: identity.user, expires_ms: session.expires_ms })
}

/// A signed-in caller: who they are, their roles, and their API session.
pub struct Caller {
    pub identity: Identity,
    pub actor: Actor,
    pub session: ApiSession,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let gateway = &state.gateway;
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let token = header.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty());
        let token = token.ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let session_id = check(gateway, token).map_err(ApiError::unauthorized)?;
        let key = session_id.clone();
        let session = blocking(&gateway.store, move |s| s.api_session(&key))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::unauthorized("unknown session"))?;
        let now = gateway.clock.now_ms();
        if session.revoked {
            return Err(ApiError::unauthorized("this session was signed out"));
        }
        if session.expires_ms <= now {
            return Err(ApiError::unauthorized("your session has expired"));
        }
        let identity_id = session.identity_id.clone();
        let identity = blocking(&gateway.store, move |s| s.identity(&identity_id))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::unauthorized("unknown identity"))?;
        crate::identity::ensure_current(gateway, &identity).await.map_err(|e| match e {
            crate::identity::NotCurrent::Disabled | crate::identity::NotCurrent::SignInAgain => {
                ApiError::unauthorized(e.to_string())
            }
            crate::identity::NotCurrent::ProviderUnavailable | crate::identity::NotCurrent::Store => {
                ApiError::unavailable(e.to_string())
            }
        })?;
        let actor = crate::workflow::actor_for(gateway, &identity);
        Ok(Caller { identity, actor, session })
    }
}

/// Sign-ins in progress, by a random handle only their starter knows; at most
/// `api.max_pending_sign_ins`, and `api.max_pending_sign_ins_per_source` per address.
pub struct Logins {
    pending: Mutex<HashMap<String, Pending>>,
    places: Limiter,
}

/// How a device sign-in ended: the session, or an HTTP status and a message.
type DeviceOutcome = Arc<tokio::sync::Mutex<Option<Result<Issued, (u16, String)>>>>;

enum Pending {
    Device { outcome: DeviceOutcome, done: Arc<tokio::sync::Notify>, until: tokio::time::Instant, _place: Permit },
    Code { login: Box<CodeLogin>, until: tokio::time::Instant, _place: Permit },
}

impl Pending {
    fn until(&self) -> tokio::time::Instant {
        match self {
            Pending::Device { until, .. } | Pending::Code { until, .. } => *until,
        }
    }
}

impl Logins {
    pub fn new(config: &crate::config::Config) -> Logins {
        let (per_source, total) =
            config.api.as_ref().map_or((8, 128), |a| (a.max_pending_sign_ins_per_source, a.max_pending_sign_ins));
        Logins { pending: Mutex::default(), places: Limiter::new(per_source, total) }
    }

    /// A place for one more sign-in from `ip`, taken before anything is asked of
    /// the identity provider. Sign-ins past their time give their place back here.
    fn admit(&self, gateway: &Gateway, ip: IpAddr) -> ApiResult<Permit> {
        {
            let mut map = self.pending.lock().map_err(|_| ApiError::unavailable("login table poisoned"))?;
            let now = tokio::time::Instant::now();
            map.retain(|_, p| p.until() > now);
        }
        self.places.try_acquire(Source::of(ip)).map_err(|full| {
            let (reason, whose) = match full {
                Full::Source => (Reason::ApiSignInsPerSource, "from your address"),
                Full::Everyone => (Reason::ApiSignInsTotal, "at the gateway"),
            };
            gateway.refused(ip, reason);
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("too many sign-ins in progress {whose}; try again in a minute"),
            )
        })
    }

    fn insert(&self, id: String, pending: Pending) -> ApiResult<()> {
        let mut map = self.pending.lock().map_err(|_| ApiError::unavailable("login table poisoned"))?;
        map.insert(id, pending);
        Ok(())
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceStarted {
    pub login_id: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    pub expires_in: u64,
}

fn oidc_error(e: OidcError) -> ApiError {
    match e {
        OidcError::Denied => ApiError::forbidden("sign-in was denied at the identity provider"),
        OidcError::Expired => {
            ApiError::new(axum::http::StatusCode::GONE, "the sign-in code expired; run `jit-gateway login` again")
        }
        OidcError::InvalidToken(_) | OidcError::MissingClaim(..) => ApiError::forbidden(e.to_string()),
        OidcError::Refused(_) => ApiError::bad_request(e.to_string()),
        other => {
            tracing::error!(error = %other, "identity provider error during API sign-in");
            ApiError::unavailable(other.to_string())
        }
    }
}

/// Starts a device flow at the provider; a background task waits for approval.
pub async fn start_device(state: &AppState, client: IpAddr) -> ApiResult<DeviceStarted> {
    let gateway = Arc::clone(&state.gateway);
    let place = state.logins.admit(&gateway, client)?;
    let client_ip = client.to_string();
    let auth: DeviceAuthorization = gateway.oidc.start_device_flow().await.map_err(oidc_error)?;
    let login_id = crate::ids::new_id("l") + &crate::ids::new_id("");
    let started = DeviceStarted {
        login_id: login_id.clone(),
        verification_uri: auth.verification_uri.clone(),
        verification_uri_complete: auth.verification_uri_complete.as_ref().map(|u| u.expose().clone()),
        user_code: auth.user_code.expose().clone(),
        expires_in: auth.expires_in.as_secs(),
    };
    let outcome = Arc::new(tokio::sync::Mutex::new(None));
    let done = Arc::new(tokio::sync::Notify::new());
    let until = tokio::time::Instant::now() + auth.expires_in + Duration::from_secs(60);
    let pending = Pending::Device { outcome: Arc::clone(&outcome), done: Arc::clone(&done), until, _place: place };
    state.logins.insert(login_id, pending)?;
    tokio::spawn(async move {
        let result = match gateway.oidc.finish_device_flow(&auth, auth.expires_in).await {
            Ok(verified) => issue(&gateway, &verified, &client_ip, "signin.api.device-flow")
                .await
                .map_err(|e| (e.status.as_u16(), e.message)),
            Err(e) => {
                let err = oidc_error(e);
                Err((err.status.as_u16(), err.message))
            }
        };
        *outcome.lock().await = Some(result);
        done.notify_waiters();
    });
    Ok(started)
}

/// Waits (up to 25 s, and half of `api.request_timeout`) for a device sign-in to finish. `Ok(None)`: still pending.
pub async fn wait_device(state: &AppState, login_id: &str) -> ApiResult<Option<Issued>> {
    let limit = state.gateway.config.api.as_ref().map_or(Duration::from_secs(25), |a| a.request_timeout / 2);
    let (outcome, done) = {
        let map = state.logins.pending.lock().map_err(|_| ApiError::unavailable("login table poisoned"))?;
        match map.get(login_id) {
            Some(Pending::Device { outcome, done, .. }) => (Arc::clone(outcome), Arc::clone(done)),
            _ => return Err(ApiError::not_found("no such sign-in in progress (it may have expired)")),
        }
    };
    let notified = done.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if outcome.lock().await.is_none() {
        let _ = tokio::time::timeout(limit.min(Duration::from_secs(25)), notified).await;
    }
    let result = outcome.lock().await.clone();
    match result {
        None => Ok(None),
        Some(result) => {
            if let Ok(mut map) = state.logins.pending.lock() {
                map.remove(login_id);
            }
            result.map(Some).map_err(|(status, message)| {
                ApiError::new(
                    axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::FORBIDDEN),
                    message,
                )
            })
        }
    }
}

/// Only loopback redirects (RFC 8252): the browser hands the code to the CLI on this machine.
pub(crate) fn loopback_redirect(uri: &str) -> ApiResult<()> {
    let url = reqwest::Url::parse(uri).map_err(|e| ApiError::bad_request(format!("redirect_uri: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if url.scheme() != "http" || !loopback || url.port().is_none() {
        return Err(ApiError::bad_request(
            "redirect_uri must be http://127.0.0.1:<port>/... (a loopback listener of the CLI)",
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct CodeStarted {
    pub login_id: String,
    pub authorize_url: String,
}

pub async fn start_code(state: &AppState, redirect_uri: &str, client: IpAddr) -> ApiResult<CodeStarted> {
    loopback_redirect(redirect_uri)?;
    let place = state.logins.admit(&state.gateway, client)?;
    let login = state.gateway.oidc.start_code_login(redirect_uri).await.map_err(oidc_error)?;
    let login_id = crate::ids::new_id("l") + &crate::ids::new_id("");
    let started = CodeStarted { login_id: login_id.clone(), authorize_url: login.authorize_url.clone() };
    state.logins.insert(
        login_id,
        Pending::Code {
            login: Box::new(login),
            until: tokio::time::Instant::now() + Duration::from_secs(600),
            _place: place,
        },
    )?;
    Ok(started)
}

pub async fn finish_code(
    state: &AppState,
    login_id: &str,
    code: &str,
    returned_state: &str,
    client_ip: &str,
) -> ApiResult<Issued> {
    let login = {
        let mut map = state.logins.pending.lock().map_err(|_| ApiError::unavailable("login table poisoned"))?;
        match map.remove(login_id) {
            Some(Pending::Code { login, .. }) => login,
            Some(other) => {
                map.insert(login_id.to_string(), other);
                return Err(ApiError::not_found("no such browser sign-in in progress"));
            }
            None => return Err(ApiError::not_found("no such browser sign-in in progress (it may have expired)")),
        }
    };
    let expected = hmac::sign(&mac_key(&state.gateway), login.state.expose().as_bytes());
    if hmac::verify(&mac_key(&state.gateway), returned_state.as_bytes(), expected.as_ref()).is_err() {
        return Err(ApiError::forbidden("the sign-in's state does not match (a forged or stale redirect)"));
    }
    let verified = state.gateway.oidc.finish_code_login(*login, code).await.map_err(oidc_error)?;
    issue(&state.gateway, &verified, client_ip, "signin.api.browser").await
}

/// Signs a session out.
pub async fn sign_out(gateway: &Gateway, session: &ApiSession) -> ApiResult<()> {
    let mut ended = session.clone();
    ended.revoked = true;
    let event = AuditEvent::new("api.signout", session.user.clone(), serde_json::json!({"session": session.id}));
    let now = gateway.clock.now_ms();
    blocking(&gateway.store, move |s| {
        s.upsert_api_session(&ended)?;
        s.append_audit(&event, now).map(|_| ())
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))
}
