//! Sign-in at the gateway: what the user is shown during the device flow,
//! and what is remembered afterwards (the identity, and the client key bound
//! to it for `ssh.key_binding_ttl`).

use russh::keys::PublicKey;

use crate::gateway::Gateway;
use crate::keys::fingerprint;
use crate::oidc::{DeviceAuthorization, VerifiedIdentity};
use crate::store::{AuditEvent, Identity, KeyBinding, StoreResult, blocking};

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

/// Identity and key binding after a successful sign-in. Returns the identity
/// as stored (with its first-seen time preserved).
pub async fn remember(
    gateway: &Gateway,
    verified: &VerifiedIdentity,
    key: Option<&PublicKey>,
    client_ip: &str,
    audit_kind: &'static str,
) -> StoreResult<Identity> {
    let now = gateway.clock.now_ms();
    let id = Identity::id_for(&verified.issuer, &verified.subject);
    let verified = verified.clone();
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
    blocking(&gateway.store, move |s| {
        let first_seen = s.identity(&id)?.map_or(now, |i| i.first_seen_ms);
        let identity = Identity {
            id: id.clone(),
            issuer: verified.issuer,
            subject: verified.subject,
            user: verified.user,
            login_name: verified.login_name,
            display_name: verified.display_name,
            groups: verified.groups,
            first_seen_ms: first_seen,
            last_sign_in_ms: now,
        };
        s.upsert_identity(&identity)?;
        if let Some(b) = &binding {
            s.bind_key(b)?;
        }
        s.append_audit(&audit, now)?;
        Ok(identity)
    })
    .await
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
