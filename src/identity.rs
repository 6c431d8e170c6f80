//! Whether a signed-in person still stands at the identity provider.
//!
//! A sign-in gives a key binding (`ssh.key_binding_ttl`) and API sessions
//! (`api.session_ttl`) that last hours; deprovisioning at the provider must
//! not wait for them. So when a person starts a session or calls the API more
//! than `signin.revalidate` after the last check, the gateway asks the
//! provider again with the refresh token it kept from the sign-in. A refusal
//! (account disabled or deleted, session revoked) ends every binding and API
//! session of that person and is audited; a provider that cannot be reached
//! means no new session (fail closed) until it answers. Without a refresh
//! token the person must sign in again.
//!
//! This module never decides access to targets: that is `access`. It only
//! says whether the identity behind a request is still current.

use crate::gateway::Gateway;
use crate::oidc::OidcError;
use crate::secret::Secret;
use crate::store::{AuditEvent, Identity, IdentityCheck, LOCAL_ADMIN_ISSUER, blocking};

/// Why a person must sign in again (or wait) before going on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCurrent {
    /// The provider refused the refresh token; every binding and API session was ended.
    #[error("your account is no longer accepted by the identity provider; sign in again")]
    Disabled,
    /// The sign-in is older than `signin.revalidate` and there is no refresh token to renew it.
    #[error("your sign-in must be renewed: sign in again")]
    SignInAgain,
    /// The provider could not be asked; fail closed.
    #[error("the gateway cannot confirm your account with the identity provider right now; try again shortly")]
    ProviderUnavailable,
    #[error("the gateway cannot read its store right now; try again shortly")]
    Store,
}

/// One refresh at a time: providers that rotate refresh tokens refuse the old
/// one once the new one is issued, so two concurrent refreshes would look like
/// a disabled account.
static REFRESHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn last_checked(identity: &Identity, check: Option<&IdentityCheck>) -> i64 {
    check.map_or(identity.last_sign_in_ms, |c| c.checked_ms.max(identity.last_sign_in_ms))
}

/// Checks, at most every `signin.revalidate`, that `identity` still stands at
/// the provider. Identities the local admin made (automation keys) are the
/// admin's to end and are not checked.
pub async fn ensure_current(gateway: &Gateway, identity: &Identity) -> Result<(), NotCurrent> {
    if identity.issuer == LOCAL_ADMIN_ISSUER {
        return Ok(());
    }
    let window = gateway.config.signin.revalidate.as_millis() as i64;
    let fresh = |check: Option<&IdentityCheck>| gateway.clock.now_ms() - last_checked(identity, check) < window;
    let id = identity.id.clone();
    let read = |id: String| async move {
        blocking(&gateway.store, move |s| s.identity_check(&id)).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read an identity check");
            NotCurrent::Store
        })
    };
    if fresh(read(id.clone()).await?.as_ref()) {
        return Ok(());
    }
    let _turn = REFRESHING.lock().await;
    // Another task may have refreshed while this one waited.
    let check = read(id.clone()).await?;
    if fresh(check.as_ref()) {
        return Ok(());
    }
    let token = check.as_ref().and_then(|c| c.refresh_token.clone());
    let Some(token) = token.filter(|_| identity.issuer == gateway.oidc.issuer()) else {
        end_sign_ins(gateway, identity, "no_refresh_token").await;
        return Err(NotCurrent::SignInAgain);
    };
    match gateway.oidc.refresh(&Secret::new(token.clone())).await {
        Ok(refreshed) => {
            if let Some(now_says) = &refreshed.identity
                && (now_says.issuer != identity.issuer || now_says.subject != identity.subject)
            {
                tracing::warn!(identity = %identity.id, "the provider's refreshed token names another subject");
                end_sign_ins(gateway, identity, "subject_changed").await;
                return Err(NotCurrent::Disabled);
            }
            let now = gateway.clock.now_ms();
            let check = IdentityCheck {
                identity_id: id,
                checked_ms: now,
                refresh_token: Some(refreshed.refresh_token.map_or(token, |t| t.expose().clone())),
            };
            let event = AuditEvent::new(
                "identity.revalidated",
                identity.user.clone(),
                serde_json::json!({"identity": identity.id, "issuer": identity.issuer}),
            );
            blocking(&gateway.store, move |s| {
                s.put_identity_check(&check)?;
                s.append_audit(&event, now).map(|_| ())
            })
            .await
            .map_err(|_| NotCurrent::Store)?;
            tracing::debug!(user = %identity.user, "sign-in confirmed with the identity provider");
            Ok(())
        }
        Err(OidcError::Revoked) => {
            tracing::info!(user = %identity.user, identity = %identity.id, "the identity provider no longer accepts this person");
            end_sign_ins(gateway, identity, "refused_by_provider").await;
            Err(NotCurrent::Disabled)
        }
        Err(e) => {
            tracing::warn!(user = %identity.user, error = %e, "cannot re-check a sign-in with the identity provider");
            Err(NotCurrent::ProviderUnavailable)
        }
    }
}

async fn end_sign_ins(gateway: &Gateway, identity: &Identity, reason: &'static str) {
    let now = gateway.clock.now_ms();
    let id = identity.id.clone();
    let event = AuditEvent::new(
        "identity.signins_ended",
        identity.user.clone(),
        serde_json::json!({"identity": identity.id, "issuer": identity.issuer, "reason": reason}),
    );
    match blocking(&gateway.store, move |s| s.end_sign_ins(&id, &event, now)).await {
        Ok((keys, sessions)) => {
            tracing::info!(user = %identity.user, reason, keys, sessions, "sign-ins ended; the person must sign in again")
        }
        Err(e) => tracing::error!(error = %e, "cannot end the sign-ins of a person"),
    }
}
