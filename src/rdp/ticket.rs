//! RDP tickets: what `jit-gateway rdp` puts in the `.rdp` file as the
//! pre-connection blob. A ticket names the person, grant, target and login,
//! expires after `rdp.ticket_ttl`, is used once, and is signed with the
//! gateway's token key (HMAC-SHA256): only this gateway can mint or check it.
//!
//! Format: `jgwrdp1.<base64url(JSON claims)>.<base64url(HMAC)>`.

use data_encoding::BASE64URL_NOPAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "jgwrdp1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Ticket ID (single use).
    pub jti: String,
    pub user: String,
    pub grant: String,
    pub target: String,
    pub login: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the pre-connection blob is not a jit-gateway RDP ticket")]
    Malformed,
    #[error("the ticket's signature is not this gateway's")]
    BadSignature,
    #[error("the ticket expired (tickets are valid for a short time: run `jit-gateway rdp` again)")]
    Expired,
}

fn key(secret: &[u8]) -> hmac::Key {
    // Domain-separated from API session tokens, which use the same secret.
    let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), b"jit-gateway rdp ticket v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let body = BASE64URL_NOPAD.encode(&serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{PREFIX}.{body}");
    let tag = hmac::sign(&key(secret), signed.as_bytes());
    format!("{signed}.{}", BASE64URL_NOPAD.encode(tag.as_ref()))
}

/// Checks the signature and expiry. Single use and the grant are the caller's.
pub fn verify(secret: &[u8], ticket: &str, now_ms: i64) -> Result<Claims, TicketError> {
    let ticket = ticket.trim();
    if ticket.len() > 4096 {
        return Err(TicketError::Malformed);
    }
    let mut parts = ticket.split('.');
    let (Some(PREFIX), Some(body), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TicketError::Malformed);
    };
    let tag = BASE64URL_NOPAD.decode(tag.as_bytes()).map_err(|_| TicketError::Malformed)?;
    hmac::verify(&key(secret), format!("{PREFIX}.{body}").as_bytes(), &tag).map_err(|_| TicketError::BadSignature)?;
    let json = BASE64URL_NOPAD.decode(body.as_bytes()).map_err(|_| TicketError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TicketError::Malformed)?;
    if now_ms >= claims.expires_ms {
        return Err(TicketError::Expired);
    }
    Ok(claims)
}

/// The `.rdp` file a client opens (mstsc, FreeRDP, Remmina).
pub fn rdp_file(address: &str, ticket: &str, login: &str) -> String {
    [
        format!("full address:s:{address}"),
        format!("pcb:s:{ticket}"),
        format!("username:s:{login}"),
        "prompt for credentials:i:0".into(),
        "authentication level:i:2".into(),
        "enablecredsspsupport:i:0".into(),
        "redirectclipboard:i:0".into(),
        "drivestoredirect:s:".into(),
        String::new(),
    ]
    .join("\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_ms: i64) -> Claims {
        Claims {
            jti: "t-1".into(),
            user: "alice@example.test".into(),
            grant: "g-1".into(),
            target: "vm2".into(),
            login: "demo".into(),
            issued_ms: 0,
            expires_ms,
        }
    }

    #[test]
    fn a_ticket_verifies_until_it_expires() {
        let t = mint(b"secret", &claims(1000));
        assert_eq!(verify(b"secret", &t, 999), Ok(claims(1000)));
        assert_eq!(verify(b"secret", &t, 1000), Err(TicketError::Expired));
    }

    #[test]
    fn another_key_or_a_changed_claim_fails_the_signature() {
        let t = mint(b"secret", &claims(1000));
        assert_eq!(verify(b"other", &t, 0), Err(TicketError::BadSignature));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            BASE64URL_NOPAD.encode(&serde_json::to_vec(&Claims { target: "vm9".into(), ..claims(1000) }).unwrap());
        parts[1] = &forged;
        assert_eq!(verify(b"secret", &parts.join("."), 0), Err(TicketError::BadSignature));
        assert_eq!(verify(b"secret", "hello", 0), Err(TicketError::Malformed));
        assert_eq!(verify(b"secret", "jgwrdp1.x.y.z", 0), Err(TicketError::Malformed));
    }
}
