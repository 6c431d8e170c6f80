//! The `/api/v1` endpoints. Each checks who is calling, hands the decision to
//! the workflow or the policy, and answers JSON. Request bodies reject
//! unknown fields; see docs/api.md for every shape.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::auth::{self, Caller, ClientAddr};
use super::error::{ApiError, ApiResult};
use crate::audit::AuditQuery;
use crate::policy::RequestSpec;
use crate::store::{AccessRequest, Grant, GrantFilter, GrantStatus, Protocol, RequestState, blocking};
use crate::workflow::{self, sees_all};

type Body<T> = Result<Json<T>, JsonRejection>;

fn body<T>(b: Body<T>) -> ApiResult<T> {
    b.map(|Json(v)| v).map_err(ApiError::from)
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store error behind an API call");
    ApiError::unavailable("the gateway's store is unavailable")
}

pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

// ---- sign-in ---------------------------------------------------------------

/// The caller's address (always set by the server loop; "unspecified" only when called without it).
fn client_ip(addr: Option<axum::Extension<ClientAddr>>) -> std::net::IpAddr {
    addr.map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.0.0.ip())
}

pub async fn login_device(
    State(state): State<AppState>,
    addr: Option<axum::Extension<ClientAddr>>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(auth::start_device(&state, client_ip(addr)).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginWait {
    login_id: String,
}

pub async fn login_device_wait(State(state): State<AppState>, b: Body<LoginWait>) -> ApiResult<Response> {
    let req = body(b)?;
    Ok(match auth::wait_device(&state, &req.login_id).await? {
        Some(issued) => Json(issued).into_response(),
        None => (StatusCode::ACCEPTED, Json(json!({"status": "pending"}))).into_response(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeStart {
    redirect_uri: String,
}

pub async fn login_code(
    State(state): State<AppState>,
    addr: Option<axum::Extension<ClientAddr>>,
    b: Body<CodeStart>,
) -> ApiResult<Response> {
    let req = body(b)?;
    Ok((StatusCode::CREATED, Json(auth::start_code(&state, &req.redirect_uri, client_ip(addr)).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeFinish {
    login_id: String,
    code: String,
    state: String,
}

pub async fn login_code_finish(
    State(state): State<AppState>,
    addr: Option<axum::Extension<ClientAddr>>,
    b: Body<CodeFinish>,
) -> ApiResult<Response> {
    let req = body(b)?;
    let ip = addr.map(|a| a.0.0.ip().to_string()).unwrap_or_default();
    Ok(Json(auth::finish_code(&state, &req.login_id, &req.code, &req.state, &ip).await?).into_response())
}

pub async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    auth::sign_out(&state.gateway, &caller.session).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn me(caller: Caller) -> Json<serde_json::Value> {
    Json(json!({
        "user": caller.identity.user, "login_name": caller.identity.login_name, "name": caller.identity.display_name,
        "groups": caller.identity.groups, "roles": caller.actor.roles, "session_expires_ms": caller.session.expires_ms,
    }))
}

pub async fn targets(State(state): State<AppState>, _caller: Caller) -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = state
        .gateway
        .inventory
        .snapshot()
        .iter()
        .map(|(name, t)| json!({"name": name, "tags": t.tags, "description": t.description}))
        .collect();
    Json(json!(list))
}

// ---- requests --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewRequest {
    target: String,
    #[serde(default = "ssh")]
    protocol: Protocol,
    logins: Vec<String>,
    /// `2h`, `30m`, ...
    duration: String,
    /// RFC 3339; absent: from the approval.
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    port_forwarding: bool,
    reason: String,
}

fn ssh() -> Protocol {
    Protocol::Ssh
}

/// A request as the API shows it: the record, its state now, and who can approve it.
#[derive(Serialize)]
pub struct RequestView {
    #[serde(flatten)]
    request: AccessRequest,
    state: RequestState,
    /// People known to the gateway who hold an approver role (never the requester).
    approvers: Vec<String>,
}

async fn view(state: &AppState, request: AccessRequest) -> ApiResult<RequestView> {
    let gateway = &state.gateway;
    let identities = blocking(&gateway.store, |s| s.identities()).await.map_err(store_err)?;
    let mut approvers: Vec<String> = identities
        .iter()
        .filter(|i| !i.user.eq_ignore_ascii_case(&request.requester))
        .filter(|i| gateway.config.policy.roles_for(&i.groups).iter().any(|r| request.approver_roles.contains(r)))
        .map(|i| i.user.clone())
        .collect();
    approvers.sort();
    let now = gateway.clock.now_ms();
    Ok(RequestView { state: request.state(now), request, approvers })
}

/// A request's `duration` and `starts_at`, parsed, or a 422 that quotes them.
pub(crate) fn parse_request_times(duration: &str, starts_at: Option<&str>) -> ApiResult<(Duration, Option<i64>)> {
    let duration: Duration = humantime::parse_duration(duration.trim()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("duration `{}`: {e} (write e.g. 2h or 30m)", duration.escape_debug()),
        )
    })?;
    let starts_at_ms = match starts_at {
        Some(text) => Some(
            humantime::parse_rfc3339_weak(text.trim())
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("starts_at `{}`: {e} (RFC 3339, e.g. 2026-11-27T14:00:00Z)", text.escape_debug()),
                    )
                })?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        ),
        None => None,
    };
    Ok((duration, starts_at_ms))
}

pub async fn create_request(State(state): State<AppState>, caller: Caller, b: Body<NewRequest>) -> ApiResult<Response> {
    let req = body(b)?;
    let (duration, starts_at_ms) = parse_request_times(&req.duration, req.starts_at.as_deref())?;
    let spec = RequestSpec {
        target: req.target,
        protocol: req.protocol,
        logins: req.logins,
        duration,
        starts_at_ms,
        port_forwarding: req.port_forwarding,
        reason: req.reason,
    };
    let (request, grant) = workflow::request(&state.gateway, &caller.actor, spec).await?;
    let view = view(&state, request).await?;
    Ok((StatusCode::CREATED, Json(json!({"request": view, "grant": grant}))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// mine (default), to-approve, all
    #[serde(default)]
    scope: Option<String>,
    /// Include ended grants.
    #[serde(default)]
    all: Option<bool>,
}

pub async fn list_requests(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<Scope>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let gateway = &state.gateway;
    let now = gateway.clock.now_ms();
    let all = blocking(&gateway.store, |s| s.requests()).await.map_err(store_err)?;
    let me = &caller.actor;
    let chosen: Vec<AccessRequest> = match q.scope.as_deref().unwrap_or("mine") {
        "mine" => all.into_iter().filter(|r| r.requester.eq_ignore_ascii_case(&me.user)).collect(),
        "to-approve" => all
            .into_iter()
            .filter(|r| r.state(now) == RequestState::Pending)
            .filter(|r| !r.requester.eq_ignore_ascii_case(&me.user))
            .filter(|r| me.roles.iter().any(|role| r.approver_roles.contains(role)))
            .filter(|r| !r.approvals.iter().any(|a| a.by.eq_ignore_ascii_case(&me.user)))
            .collect(),
        "all" if sees_all(gateway, me) => all,
        "all" => return Err(ApiError::forbidden("listing every request needs an admin or auditor role")),
        other => return Err(ApiError::bad_request(format!("scope `{other}`: use mine, to-approve or all"))),
    };
    let mut views = Vec::new();
    for r in chosen {
        views.push(view(&state, r).await?);
    }
    Ok(Json(views).into_response())
}

async fn visible_request(state: &AppState, caller: &Caller, id: &str) -> ApiResult<AccessRequest> {
    let key = id.to_string();
    let request = blocking(&state.gateway.store, move |s| s.request(&key)).await.map_err(store_err)?;
    let request = request.ok_or_else(|| ApiError::not_found(format!("request {id} not found")))?;
    let me = &caller.actor;
    let involved =
        request.requester.eq_ignore_ascii_case(&me.user) || me.roles.iter().any(|r| request.approver_roles.contains(r));
    if !involved && !sees_all(&state.gateway, me) {
        return Err(ApiError::not_found(format!("request {id} not found")));
    }
    Ok(request)
}

pub async fn get_request(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let request = visible_request(&state, &caller, &id).await?;
    Ok(Json(view(&state, request).await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Comment {
    #[serde(default)]
    comment: String,
}

pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    b: Body<Comment>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let c = body(b)?;
    let (request, grant) = workflow::approve(&state.gateway, &caller.actor, &id, &c.comment).await?;
    let view = view(&state, request).await?;
    Ok(Json(json!({"request": view, "grant": grant})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[serde(default)]
    reason: String,
}

pub async fn deny(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    b: Body<Reason>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let r = body(b)?;
    let request = workflow::deny(&state.gateway, &caller.actor, &id, &r.reason).await?;
    Ok(Json(view(&state, request).await?).into_response())
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let request = workflow::cancel(&state.gateway, &caller.actor, &id).await?;
    Ok(Json(view(&state, request).await?).into_response())
}

// ---- grants and sessions ---------------------------------------------------

#[derive(Serialize)]
pub struct GrantView {
    #[serde(flatten)]
    grant: Grant,
    status: GrantStatus,
}

pub async fn list_grants(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<Scope>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let gateway = &state.gateway;
    let now = gateway.clock.now_ms();
    let me = &caller.actor;
    let filter = match q.scope.as_deref().unwrap_or("mine") {
        "mine" => GrantFilter { user: Some(me.user.clone()), target: None },
        "all" if sees_all(gateway, me) => GrantFilter::default(),
        "all" => return Err(ApiError::forbidden("listing every grant needs an admin or auditor role")),
        other => return Err(ApiError::bad_request(format!("scope `{other}`: use mine or all"))),
    };
    let grants = blocking(&gateway.store, move |s| s.list_grants(&filter)).await.map_err(store_err)?;
    // Live and scheduled, plus what ended in the last 7 days (or everything with all=true).
    let recent = now - 7 * 86_400_000;
    let views: Vec<GrantView> = grants
        .into_iter()
        .map(|g| GrantView { status: g.status(now), grant: g })
        .filter(|v| {
            q.all.unwrap_or(false)
                || matches!(v.status, GrantStatus::Live | GrantStatus::Scheduled)
                || v.grant.end_ms() >= recent
        })
        .collect();
    Ok(Json(views).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    b: Body<Reason>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let r = body(b)?;
    let grant = workflow::revoke(&state.gateway, &caller.actor, false, &id, &r.reason).await?;
    let now = state.gateway.clock.now_ms();
    Ok(Json(GrantView { status: grant.status(now), grant }).into_response())
}

pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<Scope>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let gateway = &state.gateway;
    let live = gateway.sessions.list();
    let me = &caller.actor;
    let chosen: Vec<_> = match q.scope.as_deref().unwrap_or("mine") {
        "mine" => live.into_iter().filter(|s| s.user.eq_ignore_ascii_case(&me.user)).collect(),
        "all" if sees_all(gateway, me) => live,
        "all" => return Err(ApiError::forbidden("listing every session needs an admin or auditor role")),
        other => return Err(ApiError::bad_request(format!("scope `{other}`: use mine or all"))),
    };
    Ok(Json(chosen).into_response())
}

pub async fn kill_session(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    b: Body<Reason>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let r = body(b)?;
    let gateway = &state.gateway;
    let me = &caller.actor;
    let session = gateway
        .sessions
        .list()
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no live session {id}")))?;
    let admin = me.roles.iter().any(|role| gateway.config.policy.admin_roles.contains(role));
    if !admin && !session.user.eq_ignore_ascii_case(&me.user) {
        return Err(ApiError::forbidden("ending someone else's session needs an admin role"));
    }
    let reason = if r.reason.trim().is_empty() {
        format!("ended by {}", me.user)
    } else {
        format!("ended by {}: {}", me.user, r.reason.trim())
    };
    gateway.sessions.end_session(&id, &reason);
    gateway
        .audit(
            crate::store::AuditEvent::new(
                "session.killed",
                me.user.clone(),
                json!({"session": id, "user": session.user, "reason": reason}),
            )
            .on(session.target),
        )
        .await;
    Ok(Json(json!({"session": id, "ended": true})).into_response())
}

// ---- audit -----------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    user: Option<String>,
    target: Option<String>,
    kind: Option<String>,
    /// RFC 3339
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

fn time_param(name: &str, text: &Option<String>) -> ApiResult<Option<i64>> {
    text.as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .map(|st| st.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
                .map_err(|e| ApiError::bad_request(format!("{name} `{t}`: {e}")))
        })
        .transpose()
}

pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = q?;
    if !sees_all(&state.gateway, &caller.actor) {
        return Err(ApiError::forbidden("reading the audit log needs an admin or auditor role"));
    }
    let query = AuditQuery {
        user: p.user,
        target: p.target,
        kind: p.kind,
        since_ms: time_param("since", &p.since)?,
        until_ms: time_param("until", &p.until)?,
    };
    let limit = p.limit.unwrap_or(1000).clamp(1, 100_000);
    let records = blocking(&state.gateway.store, |s| s.audit_records(1, usize::MAX)).await.map_err(store_err)?;
    let matching: Vec<_> = records.into_iter().filter(|r| query.matches(r)).collect();
    let skip = matching.len().saturating_sub(limit);
    Ok(Json(&matching[skip..]).into_response())
}

pub async fn audit_verify(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    if !sees_all(&state.gateway, &caller.actor) {
        return Err(ApiError::forbidden("verifying the audit log needs an admin or auditor role"));
    }
    let (records, head) = blocking(&state.gateway.store, |s| Ok((s.audit_records(1, usize::MAX)?, s.audit_head()?)))
        .await
        .map_err(store_err)?;
    Ok(match crate::audit::verify(&records, head.as_ref(), state.gateway.keys.signing_public()) {
        Ok(ok) => Json(json!({"ok": true, "records": ok.records, "head_hash": ok.head_hash})).into_response(),
        Err(broken) => Json(json!({"ok": false, "broken": broken.to_string(), "detail": broken})).into_response(),
    })
}

/// Anything else under /api.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint").hint("see docs/api.md")
}

// ---- RDP -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRdpTicket {
    pub target: String,
    #[serde(default)]
    pub login: Option<String>,
}

/// A single-use RDP ticket and the `.rdp` file that carries it.
pub async fn rdp_ticket(State(state): State<AppState>, caller: Caller, b: Body<NewRdpTicket>) -> ApiResult<Response> {
    let req = body(b)?;
    if let Some(login) = &req.login
        && !crate::access::valid_login(login)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("`{}` is not a valid login name", login.chars().take(64).collect::<String>()),
        ));
    }
    let issued = crate::rdp::issue_ticket(&state.gateway, &caller.actor.user, req.target.trim(), req.login.as_deref())
        .await
        .map_err(|refused| match refused {
            crate::rdp::TicketRefused::Store => ApiError::unavailable(refused.to_string()),
            other => ApiError::forbidden(other.to_string()),
        })?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}
