//! Access decisions, as pure functions: given the inventory, a person's
//! grants and the time, may they reach this target, as this login? The answer
//! is a `Permit` naming the grant that allows it, or a `Denied` that says why
//! in words the user can act on. No I/O here; the SSH and RDP layers ask and
//! obey.

use std::collections::BTreeMap;

use crate::clock::{format_duration_ms, format_ms};
use crate::config::TargetConfig;
use crate::store::{Grant, GrantStatus, Protocol};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub grant_id: String,
    pub target: String,
    pub expires_at_ms: i64,
    pub port_forwarding: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "`{host}` is not a target of this gateway. Connect by target name (ask your administrator which targets exist)"
    )]
    UnknownTarget { host: String },
    #[error("{target} is reached on port {expected} through this gateway, not {requested}")]
    WrongPort { target: String, requested: u32, expected: u16 },
    #[error("you ({user}) have no grant for {target} over {protocol}. Ask for access to {target} with a reason")]
    NoGrant { user: String, target: String, protocol: Protocol },
    #[error("your grant {grant_id} for {target} expired at {} ({} ago). Ask for access again", format_ms(*.at_ms), format_duration_ms(*.now_ms - *.at_ms))]
    GrantExpired { grant_id: String, target: String, at_ms: i64, now_ms: i64 },
    #[error("your grant {grant_id} for {target} was revoked by {by}: {reason}")]
    GrantRevoked { grant_id: String, target: String, by: String, reason: String },
    #[error("your grant {grant_id} for {target} starts at {} (in {})", format_ms(*.starts_ms), format_duration_ms(*.starts_ms - *.now_ms))]
    NotYetValid { grant_id: String, target: String, starts_ms: i64, now_ms: i64 },
    #[error("your grant for {target} does not allow the login `{login}`; it allows: {}. Connect as one of those or ask for access as `{login}`", .allowed.join(", "))]
    LoginNotAllowed { target: String, login: String, allowed: Vec<String> },
    #[error("your grant for {target} does not allow port forwarding")]
    ForwardingNotAllowed { target: String },
}

/// Looks up the target a client asked for (`direct-tcpip` host and port).
/// Only inventory names are accepted: never raw addresses, never other ports.
pub fn resolve_target<'a>(
    inventory: &'a BTreeMap<String, TargetConfig>,
    host: &str,
    port: u32,
) -> Result<(&'a str, &'a TargetConfig), Denied> {
    let (name, target) =
        inventory.get_key_value(host).ok_or_else(|| Denied::UnknownTarget { host: host.chars().take(80).collect() })?;
    // Clients ask for port 22 unless told otherwise; the target's real port is accepted too.
    if port != 22 && port != u32::from(target.ssh_port) {
        return Err(Denied::WrongPort { target: name.clone(), requested: port, expected: target.ssh_port });
    }
    Ok((name.as_str(), target))
}

fn covers(grant: &Grant, user: &str, target: &str, protocol: Protocol) -> bool {
    grant.user.eq_ignore_ascii_case(user) && grant.target == target && grant.protocol == protocol
}

fn permit(grant: &Grant) -> Permit {
    Permit {
        grant_id: grant.id.clone(),
        target: grant.target.clone(),
        expires_at_ms: grant.expires_at_ms,
        port_forwarding: grant.port_forwarding,
    }
}

/// Explains why no live grant matched, from the most telling non-live one.
fn explain(relevant: &[&Grant], user: &str, target: &str, protocol: Protocol, now_ms: i64) -> Denied {
    if let Some(g) =
        relevant.iter().filter(|g| g.status(now_ms) == GrantStatus::Scheduled).min_by_key(|g| g.not_before_ms)
    {
        return Denied::NotYetValid {
            grant_id: g.id.clone(),
            target: target.into(),
            starts_ms: g.not_before_ms,
            now_ms,
        };
    }
    match relevant.iter().max_by_key(|g| g.end_ms()) {
        Some(g) => match &g.revocation {
            Some(r) => Denied::GrantRevoked {
                grant_id: g.id.clone(),
                target: target.into(),
                by: r.by.clone(),
                reason: r.reason.clone(),
            },
            None => {
                Denied::GrantExpired { grant_id: g.id.clone(), target: target.into(), at_ms: g.expires_at_ms, now_ms }
            }
        },
        None => Denied::NoGrant { user: user.into(), target: target.into(), protocol },
    }
}

/// May `user` reach `target` at all (any login)? Asked when a client opens
/// the channel, before it names its login.
pub fn check_target(
    grants: &[Grant],
    user: &str,
    target: &str,
    protocol: Protocol,
    now_ms: i64,
) -> Result<Permit, Denied> {
    let relevant: Vec<&Grant> = grants.iter().filter(|g| covers(g, user, target, protocol)).collect();
    relevant
        .iter()
        .filter(|g| g.status(now_ms) == GrantStatus::Live)
        .max_by_key(|g| g.expires_at_ms)
        .map(|g| permit(g))
        .ok_or_else(|| explain(&relevant, user, target, protocol, now_ms))
}

/// May `user` log in to `target` as `login`? The permit names the live grant
/// that lasts longest among those that allow it.
pub fn check_login(
    grants: &[Grant],
    user: &str,
    target: &str,
    protocol: Protocol,
    login: &str,
    now_ms: i64,
) -> Result<Permit, Denied> {
    let relevant: Vec<&Grant> = grants.iter().filter(|g| covers(g, user, target, protocol)).collect();
    let live: Vec<&&Grant> = relevant.iter().filter(|g| g.status(now_ms) == GrantStatus::Live).collect();
    if live.is_empty() {
        return Err(explain(&relevant, user, target, protocol, now_ms));
    }
    live.iter()
        .filter(|g| g.logins.iter().any(|l| l == login))
        .max_by_key(|g| g.expires_at_ms)
        .map(|g| permit(g))
        .ok_or_else(|| {
            let mut allowed: Vec<String> = live.iter().flat_map(|g| g.logins.iter().cloned()).collect();
            allowed.sort();
            allowed.dedup();
            Denied::LoginNotAllowed { target: target.into(), login: login.chars().take(64).collect(), allowed }
        })
}

/// A login name as SSH and RDP targets accept them (POSIX names, `DOMAIN$`-free Windows names).
pub fn valid_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 64
        && !login.starts_with('-')
        && login.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'$'))
}

/// May a session under `permit` open a `-L` forward?
pub fn check_forwarding(permit: &Permit) -> Result<(), Denied> {
    if permit.port_forwarding { Ok(()) } else { Err(Denied::ForwardingNotAllowed { target: permit.target.clone() }) }
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
