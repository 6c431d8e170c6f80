//! The request workflow: ask, approve or deny, cancel, revoke. Each step asks
//! the pure policy (src/policy.rs), then writes the request, the grant it
//! produces and the audit records in one store transaction, wakes the grant
//! enforcer, and notifies the webhook in the background.
//!
//! Both the HTTPS API and the local admin socket go through here; neither
//! makes access decisions of its own.

use serde_json::json;

use crate::clock::{format_duration_ms, format_ms};
use crate::gateway::Gateway;
use crate::policy::{self, Actor, Approval, ApprovalDenied, RequestDenied, RequestSpec};
use crate::store::{
    AccessRequest, AuditEvent, Decision, Grant, GrantStatus, Identity, RequestState, Revocation, StoreError, blocking,
};

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{0}")]
    Refused(#[from] RequestDenied),
    #[error("{0}")]
    Approval(#[from] ApprovalDenied),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the gateway's store is unavailable: {0}")]
    Store(String),
}

impl From<StoreError> for WorkflowError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => WorkflowError::Conflict(m),
            StoreError::NotFound(m) => WorkflowError::NotFound(m),
            other => WorkflowError::Store(other.to_string()),
        }
    }
}

pub type WorkflowResult<T> = Result<T, WorkflowError>;

/// The actor for a signed-in identity: their roles from their groups.
pub fn actor_for(gateway: &Gateway, identity: &Identity) -> Actor {
    Actor { user: identity.user.clone(), roles: gateway.config.policy.roles_for(&identity.groups) }
}

fn is_admin(gateway: &Gateway, who: &Actor) -> bool {
    who.roles.iter().any(|r| gateway.config.policy.admin_roles.contains(r))
}

/// May `who` see everything (admins and auditors)?
pub fn sees_all(gateway: &Gateway, who: &Actor) -> bool {
    is_admin(gateway, who) || who.roles.iter().any(|r| gateway.config.policy.auditor_roles.contains(r))
}

async fn load(gateway: &Gateway, id: &str) -> WorkflowResult<AccessRequest> {
    let key = id.to_string();
    blocking(&gateway.store, move |s| s.request(&key))
        .await?
        .ok_or_else(|| WorkflowError::NotFound(format!("request {id}")))
}

fn grant_from(request: &AccessRequest, not_before_ms: i64, expires_at_ms: i64, now_ms: i64) -> Grant {
    Grant {
        id: crate::ids::new_id("g"),
        user: request.requester.clone(),
        target: request.target.clone(),
        protocol: request.protocol,
        logins: request.logins.clone(),
        port_forwarding: request.port_forwarding,
        rdp_redirect: Vec::new(),
        not_before_ms,
        expires_at_ms,
        reason: request.reason.clone(),
        created_by: request.approvals.last().map_or_else(|| "policy".into(), |d| d.by.clone()),
        created_at_ms: now_ms,
        request_id: Some(request.id.clone()),
        approved_by: request.approvals.iter().map(|d| d.by.clone()).collect(),
        revocation: None,
        ended_ms: None,
    }
}

fn grant_event(grant: &Grant) -> AuditEvent {
    AuditEvent::new(
        "grant.created",
        grant.created_by.clone(),
        json!({"grant": grant.id, "user": grant.user, "request": grant.request_id, "logins": grant.logins,
               "not_before": format_ms(grant.not_before_ms), "expires": format_ms(grant.expires_at_ms), "approved_by": grant.approved_by}),
    )
    .on(grant.target.clone())
}

/// Refuses text with control characters: it would forge lines wherever it is shown (logs, CLI tables, webhooks).
fn printable(what: &str, text: &str) -> WorkflowResult<()> {
    if crate::logging::has_control_chars(text) {
        return Err(WorkflowError::Invalid(format!(
            "the {what} contains control characters (newlines, tabs or escapes); write it on one line"
        )));
    }
    Ok(())
}

/// Files a request. Auto-approved requests come back approved with their grant.
pub async fn request(
    gateway: &Gateway,
    who: &Actor,
    spec: RequestSpec,
) -> WorkflowResult<(AccessRequest, Option<Grant>)> {
    let now = gateway.clock.now_ms();
    if spec.reason.len() > 1000 {
        return Err(WorkflowError::Invalid("the reason is longer than 1000 characters".into()));
    }
    printable("target name", &spec.target)?;
    printable("reason", &spec.reason)?;
    if let Some(bad) = spec.logins.iter().find(|l| !crate::access::valid_login(l)) {
        return Err(WorkflowError::Invalid(format!("`{bad}` is not a valid login name")));
    }
    let config = &gateway.config;
    let inventory = gateway.inventory.snapshot();
    let plan = match policy::check_request(&config.policy, &inventory, who, &spec, now) {
        Ok(plan) => plan,
        Err(refused) => {
            let details = json!({"user": who.user, "logins": spec.logins, "duration": format_duration_ms(spec.duration.as_millis() as i64),
                                 "reason": spec.reason, "refused": refused.to_string()});
            gateway
                .audit(
                    AuditEvent::new("request.refused", who.user.clone(), details).on(spec
                        .target
                        .chars()
                        .take(64)
                        .collect::<String>()),
                )
                .await;
            return Err(refused.into());
        }
    };
    let mut request = AccessRequest {
        id: crate::ids::new_id("q"),
        requester: who.user.clone(),
        requester_roles: who.roles.clone(),
        target: spec.target.clone(),
        protocol: spec.protocol,
        logins: spec.logins.clone(),
        port_forwarding: spec.port_forwarding,
        duration_secs: spec.duration.as_secs(),
        starts_at_ms: spec.starts_at_ms,
        reason: spec.reason.trim().to_string(),
        created_ms: now,
        expires_ms: now + config.policy.request_ttl.as_millis() as i64,
        rule: plan.rule.clone(),
        approver_roles: plan.approver_roles.clone(),
        approvals_needed: plan.approvals_needed,
        approvals: vec![],
        denial: None,
        cancelled: None,
        auto_approved: plan.auto_approved,
        grant_id: None,
    };
    let mut events = vec![
        AuditEvent::new(
            "request.created",
            who.user.clone(),
            json!({"request": request.id, "user": who.user, "logins": request.logins, "duration": format_duration_ms(request.duration_secs as i64 * 1000),
                   "reason": request.reason, "rule": request.rule, "approvers": request.approver_roles, "approvals_needed": request.approvals_needed}),
        )
        .on(request.target.clone()),
    ];
    let mut grant = None;
    if plan.auto_approved {
        let (start, end) = policy::window(&request, now)
            .ok_or_else(|| WorkflowError::Invalid("the requested window has already passed".into()))?;
        let g = grant_from(&request, start, end, now);
        request.grant_id = Some(g.id.clone());
        events.push(
            AuditEvent::new(
                "request.auto-approved",
                "policy",
                json!({"request": request.id, "user": who.user, "rule": request.rule, "grant": g.id}),
            )
            .on(request.target.clone()),
        );
        events.push(grant_event(&g));
        grant = Some(g);
    }
    let (saved, stored_grant) = (request.clone(), grant.clone());
    blocking(&gateway.store, move |s| s.save_request(&saved, None, stored_grant.as_ref(), &events, now)).await?;
    if grant.is_some() {
        gateway.enforcer.grants_changed();
    }
    let status = if plan.auto_approved {
        "was approved automatically".to_string()
    } else {
        format!("waits for approval by {}", request.approver_roles.join(" or "))
    };
    gateway.notifier.send(format!(
        "Access request {} by {}: {} on {} for {} ({}). It {status}.",
        request.id,
        request.requester,
        request.logins.join(", "),
        request.target,
        format_duration_ms(request.duration_secs as i64 * 1000),
        request.reason
    ));
    tracing::info!(request = %request.id, user = %request.requester, target = %request.target, auto = plan.auto_approved, "access requested");
    Ok((request, grant))
}

/// Approves; the last needed approval creates the grant.
pub async fn approve(
    gateway: &Gateway,
    who: &Actor,
    id: &str,
    comment: &str,
) -> WorkflowResult<(AccessRequest, Option<Grant>)> {
    printable("comment", comment)?;
    let before = load(gateway, id).await?;
    let now = gateway.clock.now_ms();
    let outcome = policy::check_approval(&before, who, now)?;
    let mut after = before.clone();
    after.approvals.push(Decision {
        by: who.user.clone(),
        at_ms: now,
        comment: comment.trim().chars().take(1000).collect(),
    });
    let mut events = vec![
        AuditEvent::new(
            "request.approved",
            who.user.clone(),
            json!({"request": id, "user": before.requester, "comment": comment.trim()}),
        )
        .on(before.target.clone()),
    ];
    let grant = match outcome {
        Approval::Granted { not_before_ms, expires_at_ms } => {
            let g = grant_from(&after, not_before_ms, expires_at_ms, now);
            after.grant_id = Some(g.id.clone());
            events.push(grant_event(&g));
            Some(g)
        }
        Approval::Recorded { .. } => None,
    };
    let (saved, stored_grant) = (after.clone(), grant.clone());
    blocking(&gateway.store, move |s| s.save_request(&saved, Some(&before), stored_grant.as_ref(), &events, now))
        .await?;
    if let Some(g) = &grant {
        gateway.enforcer.grants_changed();
        gateway.notifier.send(format!(
            "Request {id} approved by {}: {} may reach {} as {} until {}.",
            who.user,
            g.user,
            g.target,
            g.logins.join(", "),
            format_ms(g.expires_at_ms)
        ));
    } else {
        gateway.notifier.send(format!("Request {id} approved by {}; it needs more approvals.", who.user));
    }
    Ok((after, grant))
}

/// Denies a pending request (approvers and admins).
pub async fn deny(gateway: &Gateway, who: &Actor, id: &str, reason: &str) -> WorkflowResult<AccessRequest> {
    if reason.trim().is_empty() {
        return Err(WorkflowError::Invalid("--reason is required: tell the requester why".into()));
    }
    printable("reason", reason)?;
    let before = load(gateway, id).await?;
    let now = gateway.clock.now_ms();
    let state = before.state(now);
    if state != RequestState::Pending {
        return Err(ApprovalDenied::NotPending { id: id.into(), state }.into());
    }
    let approver = who.roles.iter().any(|r| before.approver_roles.contains(r));
    if !approver && !is_admin(gateway, who) {
        return Err(WorkflowError::Forbidden(format!(
            "denying this request needs one of the roles {}",
            before.approver_roles.join(" or ")
        )));
    }
    let mut after = before.clone();
    after.denial =
        Some(Decision { by: who.user.clone(), at_ms: now, comment: reason.trim().chars().take(1000).collect() });
    let events = [AuditEvent::new(
        "request.denied",
        who.user.clone(),
        json!({"request": id, "user": before.requester, "reason": reason.trim()}),
    )
    .on(before.target.clone())];
    let saved = after.clone();
    blocking(&gateway.store, move |s| s.save_request(&saved, Some(&before), None, &events, now)).await?;
    gateway.notifier.send(format!("Request {id} by {} was denied by {}: {}", after.requester, who.user, reason.trim()));
    Ok(after)
}

/// The requester withdraws a pending request.
pub async fn cancel(gateway: &Gateway, who: &Actor, id: &str) -> WorkflowResult<AccessRequest> {
    let before = load(gateway, id).await?;
    let now = gateway.clock.now_ms();
    if !before.requester.eq_ignore_ascii_case(&who.user) {
        return Err(WorkflowError::Forbidden("only the requester can cancel a request".into()));
    }
    let state = before.state(now);
    if state != RequestState::Pending {
        return Err(ApprovalDenied::NotPending { id: id.into(), state }.into());
    }
    let mut after = before.clone();
    after.cancelled = Some(Decision { by: who.user.clone(), at_ms: now, comment: String::new() });
    let events =
        [AuditEvent::new("request.cancelled", who.user.clone(), json!({"request": id})).on(before.target.clone())];
    let saved = after.clone();
    blocking(&gateway.store, move |s| s.save_request(&saved, Some(&before), None, &events, now)).await?;
    Ok(after)
}

/// Revokes a grant: its holder (ending their own access early), an approver
/// of the request it came from, or an admin. `by_local_admin` is the
/// break-glass admin socket, which may revoke anything.
pub async fn revoke(
    gateway: &Gateway,
    who: &Actor,
    by_local_admin: bool,
    id: &str,
    reason: &str,
) -> WorkflowResult<Grant> {
    if reason.trim().is_empty() {
        return Err(WorkflowError::Invalid("--reason is required for a revocation".into()));
    }
    printable("reason", reason)?;
    let key = id.to_string();
    let grant = blocking(&gateway.store, move |s| s.grant(&key))
        .await?
        .ok_or_else(|| WorkflowError::NotFound(format!("grant {id}")))?;
    if !by_local_admin && !grant.user.eq_ignore_ascii_case(&who.user) && !is_admin(gateway, who) {
        let approver = match &grant.request_id {
            Some(rid) => load(gateway, rid)
                .await
                .ok()
                .is_some_and(|r| who.roles.iter().any(|role| r.approver_roles.contains(role))),
            None => false,
        };
        if !approver {
            return Err(WorkflowError::Forbidden(
                "only the grant's holder, its approvers or an admin can revoke it".into(),
            ));
        }
    }
    let now = gateway.clock.now_ms();
    let (by, why) = (who.user.clone(), reason.trim().chars().take(1000).collect::<String>());
    let event =
        AuditEvent::new("grant.revoked", who.user.clone(), json!({"grant": id, "user": grant.user, "reason": why}))
            .on(grant.target.clone());
    let key = id.to_string();
    let revoked = blocking(&gateway.store, move |s| {
        let g = s.update_grant(&key, &mut |g| match g.status(now) {
            GrantStatus::Revoked => Err(StoreError::Conflict(format!("grant {} is already revoked", g.id))),
            GrantStatus::Expired => Err(StoreError::Conflict(format!("grant {} has already expired", g.id))),
            _ => {
                g.revocation = Some(Revocation { at_ms: now, by: by.clone(), reason: why.clone() });
                Ok(())
            }
        })?;
        s.append_audit(&event, now)?;
        Ok(g)
    })
    .await?;
    // End its sessions now rather than at the enforcer's next wake-up.
    gateway.enforcer.enforce_now().await?;
    gateway.notifier.send(format!(
        "Grant {id} of {} on {} was revoked by {}: {}",
        revoked.user,
        revoked.target,
        who.user,
        reason.trim()
    ));
    Ok(revoked)
}
