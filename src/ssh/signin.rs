//! Sign-in at the gateway: what the user is shown during the device flow,
//! and what is remembered afterwards (the identity, and the client key bound
//! to it for `ssh.key_binding_ttl`).

use russh::keys::PublicKey;

use crate::gateway::Gateway;
use crate::keys::fingerprint;
use crate::oidc::{DeviceAuthorization, VerifiedIdentity};
use crate::store::{AuditEvent, Identity, IdentityCheck, KeyBinding, SignInRecord, StoreResult, blocking};

/// The keyboard-interactive instructions. OpenSSH prints them with no prompt,
/// so nobody has to press a key, and also when there is no terminal.
pub fn instructions(auth: &DeviceAuthorization, gateway_name: &str) -> String {
    let code = auth.user_code.expose();
    let mut text = String::from("\nSign in to continue:\n\n");
    match &auth.verification_uri_complete {
        Some(complete) => {
            text.push_str(&format!("  open   {}\n", complete.expose()));
            text.push_str(&format!("  check  the code shown there is {code}\n"));
            text.push_str(&format!("  (or open {} and enter {code})\n", auth.verification_uri));
        }
        None => {
            text.push_str(&format!("  open   {}\n", auth.verification_uri));
            text.push_str(&format!("  enter  {code}\n"));
        }
    }
    let minutes = auth.expires_in.as_secs().div_ceil(60);
    text.push_str(&format!(
        "\nWaiting for approval (the code is valid for {minutes} min); {gateway_name} continues by itself.\n"
    ));
    text
}

/// Why a verified sign-in was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The user name the provider sent belongs to another account at the provider.
    #[error(
        "the identity provider names you `{user}`, but that name belongs to another account at this gateway; \
         ask an administrator (the refusal is in the audit log)"
    )]
    NameTaken { user: String },
    #[error("the gateway could not record your sign-in: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Identity and key binding after a successful sign-in. Returns the identity
/// as stored (with its first-seen time preserved). A person is their
/// `(issuer, subject)`: the user name is pinned to the first one seen with it,
/// and a sign-in by another account that sends the same name is refused and
/// audited (`signin.refused`).
pub async fn remember(
    gateway: &Gateway,
    verified: &VerifiedIdentity,
    key: Option<&PublicKey>,
    client_ip: &str,
    audit_kind: &'static str,
) -> Result<Identity, SignInError> {
    let now = gateway.clock.now_ms();
    let id = Identity::id_for(&verified.issuer, &verified.subject);
    let ttl_ms = gateway.config.ssh.key_binding_ttl.as_millis() as i64;
    let binding = key.map(|k| KeyBinding {
        fingerprint: fingerprint(k),
        identity_id: id.clone(),
        user: verified.user.clone(),
        algorithm: k.algorithm().to_string(),
        bound_at_ms: now,
        expires_at_ms: now + ttl_ms,
        client_ip: Some(client_ip.to_string()),
    });
    let audit = AuditEvent::new(
        audit_kind,
        verified.user.clone(),
        serde_json::json!({
            "identity": id, "issuer": verified.issuer, "groups": verified.groups, "client_ip": client_ip,
            "key_bound": binding.as_ref().map(|b| b.fingerprint.clone()),
            "binding_expires_ms": binding.as_ref().map(|b| b.expires_at_ms),
        }),
    );
    let identity = Identity {
        id: id.clone(),
        issuer: verified.issuer.clone(),
        subject: verified.subject.clone(),
        user: verified.user.clone(),
        login_name: verified.login_name.clone(),
        display_name: verified.display_name.clone(),
        groups: verified.groups.clone(),
        first_seen_ms: now,
        last_sign_in_ms: now,
    };
    let check = IdentityCheck {
        identity_id: id.clone(),
        checked_ms: now,
        refresh_token: verified.refresh_token.as_ref().map(|t| t.expose().clone()),
    };
    let recorded = blocking(&gateway.store, move |s| {
        let recorded = s.record_sign_in(&identity, binding.as_ref(), &audit, now)?;
        if matches!(recorded, SignInRecord::Recorded(_)) {
            s.put_identity_check(&check)?;
        }
        Ok(recorded)
    })
    .await?;
    match recorded {
        SignInRecord::Recorded(identity) => Ok(identity),
        SignInRecord::NameTaken { owner } => {
            tracing::warn!(identity = %id, %owner, client_ip, "sign-in refused: the user name belongs to another identity");
            let refusal = AuditEvent::new(
                "signin.refused",
                verified.user.clone(),
                serde_json::json!({
                    "reason": "user_name_taken", "identity": id, "issuer": verified.issuer,
                    "subject": verified.subject, "owner": owner, "client_ip": client_ip, "method": audit_kind,
                }),
            );
            gateway.audit(refusal).await;
            Err(SignInError::NameTaken { user: verified.user.clone() })
        }
    }
}

/// The identity a client key is bound to, if the binding is still valid and
/// the person answers to the SSH user name they typed.
pub async fn bound_identity(gateway: &Gateway, key: &PublicKey, ssh_user: &str) -> StoreResult<Option<Identity>> {
    let fp = fingerprint(key);
    let now = gateway.clock.now_ms();
    let user = ssh_user.to_string();
    blocking(&gateway.store, move |s| {
        for binding in s.key_bindings(&fp)?.into_iter().filter(|b| b.expires_at_ms > now) {
            if let Some(identity) = s.identity(&binding.identity_id)?.filter(|i| i.answers_to(&user)) {
                return Ok(Some(identity));
            }
        }
        Ok(None)
    })
    .await
}
