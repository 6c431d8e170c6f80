//! What each admin request does. Input is validated here with messages that
//! say what to fix; nothing is changed when a request is refused.

use std::time::Duration;

use serde_json::json;

use super::protocol::{GrantView, Request, Response};
use crate::access::valid_login;
use crate::clock::format_ms;
use crate::gateway::Gateway;
use crate::store::{AuditEvent, Grant, GrantFilter, GrantStatus, Protocol, StoreError, blocking};

/// Longest grant the local admin can give (the request workflow has its own policy).
const MAX_GRANT: Duration = Duration::from_secs(7 * 86400);

pub async fn execute(gateway: &Gateway, account: &str, request: Request) -> Response {
    match run(gateway, account, request).await {
        Ok(data) => Response::ok(data),
        Err(message) => Response::error(message),
    }
}

async fn run(gateway: &Gateway, account: &str, request: Request) -> Result<serde_json::Value, String> {
    let store_err = |e: StoreError| e.to_string();
    let now = gateway.clock.now_ms();
    match request {
        Request::GrantAdd {
            user,
            target,
            protocol,
            logins,
            duration_secs,
            starts_in_secs,
            port_forwarding,
            rdp_redirect,
            reason,
        } => {
            let user = user.trim().to_string();
            if user.is_empty() || user.len() > 254 || user.contains(char::is_whitespace) {
                return Err(
                    "--user must name one person as the identity provider does (for example alice@example.test)".into(),
                );
            }
            let inventory = gateway.inventory.snapshot();
            if !inventory.contains_key(&target) {
                let known: Vec<&str> = inventory.keys().map(String::as_str).collect();
                return Err(format!("unknown target `{target}`; the inventory has: {}", known.join(", ")));
            }
            if logins.is_empty() {
                return Err("give at least one --login".into());
            }
            if let Some(bad) = logins.iter().find(|l| !valid_login(l)) {
                return Err(format!("`{bad}` is not a valid login name"));
            }
            if duration_secs == 0 || Duration::from_secs(duration_secs) > MAX_GRANT {
                return Err("--for must be between 1s and 7d".into());
            }
            if reason.trim().is_empty() {
                return Err("--reason is required: say what the access is for".into());
            }
            if let Some(bad) = rdp_redirect.iter().find(|r| !matches!(r.as_str(), "clipboard" | "drives")) {
                return Err(format!("--allow-redirect: `{bad}` is not one of clipboard, drives"));
            }
            if !rdp_redirect.is_empty() && protocol != Protocol::Rdp {
                return Err("--allow-redirect is for RDP grants (--protocol rdp)".into());
            }
            let not_before_ms = now + (starts_in_secs as i64) * 1000;
            let grant = Grant {
                id: crate::ids::new_id("g"),
                user,
                target,
                protocol,
                logins,
                port_forwarding,
                rdp_redirect,
                not_before_ms,
                expires_at_ms: not_before_ms + duration_secs as i64 * 1000,
                reason: reason.trim().chars().take(1000).collect(),
                created_by: account.to_string(),
                created_at_ms: now,
                request_id: None,
                approved_by: vec![account.to_string()],
                revocation: None,
                ended_ms: None,
            };
            let event = AuditEvent::new(
                "grant.created",
                account,
                json!({"grant": grant.id, "user": grant.user, "protocol": grant.protocol, "logins": grant.logins,
                       "port_forwarding": grant.port_forwarding, "not_before": format_ms(grant.not_before_ms),
                       "expires": format_ms(grant.expires_at_ms), "reason": grant.reason}),
            )
            .on(grant.target.clone());
            let stored = grant.clone();
            blocking(&gateway.store, move |s| {
                s.insert_grant(&stored)?;
                s.append_audit(&event, now).map(|_| ())
            })
            .await
            .map_err(store_err)?;
            gateway.enforcer.grants_changed();
            tracing::info!(grant = %grant.id, user = %grant.user, target = %grant.target, by = account, "grant added");
            Ok(json!(GrantView { status: grant.status(now), grant }))
        }
        Request::GrantList { user, target, all } => {
            let filter = GrantFilter { user, target };
            let grants = blocking(&gateway.store, move |s| s.list_grants(&filter)).await.map_err(store_err)?;
            let views: Vec<GrantView> = grants
                .into_iter()
                .map(|g| GrantView { status: g.status(now), grant: g })
                .filter(|v| all || matches!(v.status, GrantStatus::Live | GrantStatus::Scheduled))
                .collect();
            Ok(json!(views))
        }
        Request::GrantRevoke { id, reason } => {
            let who = crate::policy::Actor { user: account.to_string(), roles: vec![] };
            let grant = crate::workflow::revoke(gateway, &who, true, &id, &reason).await.map_err(|e| e.to_string())?;
            tracing::info!(grant = %grant.id, by = account, "grant revoked");
            Ok(json!(GrantView { status: grant.status(now), grant }))
        }
        Request::Sessions => Ok(json!(gateway.sessions.list())),
        Request::SessionKill { id, reason } => {
            let reason = if reason.trim().is_empty() {
                format!("ended by {account}")
            } else {
                format!("ended by {account}: {}", reason.trim())
            };
            if !gateway.sessions.end_session(&id, &reason) {
                return Err(format!("no live session `{id}` (see `jit-gateway sessions`)"));
            }
            gateway.audit(AuditEvent::new("session.killed", account, json!({"session": id, "reason": reason}))).await;
            Ok(json!({"session": id, "ended": true}))
        }
        Request::KeyBind { user, login_name, public_key, duration_secs } => {
            let key = russh::keys::PublicKey::from_openssh(public_key.trim())
                .map_err(|e| format!("not an OpenSSH public key: {e}"))?;
            let user = user.trim().to_string();
            if user.is_empty() || user.contains(char::is_whitespace) {
                return Err("--user must name one person".into());
            }
            if duration_secs == 0 || Duration::from_secs(duration_secs) > MAX_GRANT {
                return Err("--for must be between 1s and 7d".into());
            }
            let identity = crate::store::Identity {
                id: crate::store::Identity::id_for(crate::store::LOCAL_ADMIN_ISSUER, &user),
                issuer: crate::store::LOCAL_ADMIN_ISSUER.into(),
                subject: user.clone(),
                user: user.clone(),
                login_name: login_name.clone(),
                display_name: None,
                groups: vec![],
                first_seen_ms: now,
                last_sign_in_ms: now,
            };
            let binding = crate::store::KeyBinding {
                fingerprint: crate::keys::fingerprint(&key),
                identity_id: identity.id.clone(),
                user: user.clone(),
                algorithm: key.algorithm().to_string(),
                bound_at_ms: now,
                expires_at_ms: now + duration_secs as i64 * 1000,
                client_ip: None,
            };
            let event = AuditEvent::new(
                "key.bound",
                account,
                json!({"user": user, "key": binding.fingerprint, "expires": format_ms(binding.expires_at_ms)}),
            );
            let shown = json!({"user": user, "fingerprint": binding.fingerprint, "expires_ms": binding.expires_at_ms});
            blocking(&gateway.store, move |s| {
                if s.identity(&identity.id)?.is_none() {
                    s.upsert_identity(&identity)?;
                }
                s.bind_key(&binding)?;
                s.append_audit(&event, now).map(|_| ())
            })
            .await
            .map_err(store_err)?;
            Ok(shown)
        }
        Request::KeyUnbind { public_key } => {
            let key = russh::keys::PublicKey::from_openssh(public_key.trim())
                .map_err(|e| format!("not an OpenSSH public key: {e}"))?;
            let fp = crate::keys::fingerprint(&key);
            let event = AuditEvent::new("key.unbound", account, json!({"key": fp}));
            let removed = blocking(&gateway.store, move |s| {
                let n = s.remove_key_bindings(&fp)?;
                s.append_audit(&event, now)?;
                Ok(n)
            })
            .await
            .map_err(store_err)?;
            Ok(json!({"removed": removed}))
        }
        Request::RecordingEvidence { recording } => {
            let keys = std::sync::Arc::clone(&gateway.keys);
            let evidence = blocking(&gateway.store, move |s| {
                crate::recording::crosscheck::collect(s, recording.as_deref(), keys.signing_public())
            })
            .await
            .map_err(store_err)?;
            Ok(json!(evidence))
        }
        Request::Recordings { limit } => {
            let limit = limit.clamp(1, 10_000);
            let recordings = blocking(&gateway.store, move |s| s.recordings(limit)).await.map_err(store_err)?;
            Ok(json!(recordings))
        }
    }
}
