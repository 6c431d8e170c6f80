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
    #[error("`{host}` is not a target of this gateway. Connect by target name (ask your administrator which targets exist)")]
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
    let (name, target) = inventory
        .get_key_value(host)
        .ok_or_else(|| Denied::UnknownTarget { host: host.chars().take(80).collect() })?;
    // Clients ask for port 22 unless told otherwise; the target's real port is accepted too.
    if port != 22 && port != u32::from(target.ssh_port) {
        return Err(Denied::WrongPort { target: name.clone(), requested: port, expected: 22 });
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
    if let Some(g) = relevant.iter().filter(|g| g.status(now_ms) == GrantStatus::Scheduled).min_by_key(|g| g.not_before_ms) {
        return Denied::NotYetValid { grant_id: g.id.clone(), target: target.into(), starts_ms: g.not_before_ms, now_ms };
    }
    match relevant.iter().max_by_key(|g| g.end_ms()) {
        Some(g) => match &g.revocation {
            Some(r) => Denied::GrantRevoked { grant_id: g.id.clone(), target: target.into(), by: r.by.clone(), reason: r.reason.clone() },
            None => Denied::GrantExpired { grant_id: g.id.clone(), target: target.into(), at_ms: g.expires_at_ms, now_ms },
        },
        None => Denied::NoGrant { user: user.into(), target: target.into(), protocol },
    }
}

/// May `user` reach `target` at all (any login)? Asked when a client opens
/// the channel, before it names its login.
pub fn check_target(grants: &[Grant], user: &str, target: &str, protocol: Protocol, now_ms: i64) -> Result<Permit, Denied> {
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
pub fn check_login(grants: &[Grant], user: &str, target: &str, protocol: Protocol, login: &str, now_ms: i64) -> Result<Permit, Denied> {
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
mod tests {
    use super::*;
    use crate::store::Revocation;

    const NOW: i64 = 1_800_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn grant(id: &str, logins: &[&str], from: i64, until: i64) -> Grant {
        Grant {
            id: id.into(),
            user: "alice@example.test".into(),
            target: "vm1".into(),
            protocol: Protocol::Ssh,
            logins: logins.iter().map(|s| s.to_string()).collect(),
            port_forwarding: false,
            not_before_ms: from,
            expires_at_ms: until,
            reason: "INC-1".into(),
            created_by: "root".into(),
            created_at_ms: from,
            request_id: None,
            approved_by: vec![],
            revocation: None,
            ended_ms: None,
        }
    }

    fn inventory() -> BTreeMap<String, TargetConfig> {
        let t = TargetConfig { address: "10.0.0.4".into(), ssh_port: 2201, host_key: None, tags: vec![], description: String::new(), azure_vm: None };
        BTreeMap::from([("vm1".to_string(), t)])
    }

    #[test]
    fn only_inventory_names_on_their_port_resolve() {
        let inv = inventory();
        assert_eq!(resolve_target(&inv, "vm1", 22).unwrap().0, "vm1");
        assert_eq!(resolve_target(&inv, "vm1", 2201).unwrap().0, "vm1");
        assert!(matches!(resolve_target(&inv, "vm1", 8080), Err(Denied::WrongPort { .. })));
        assert!(matches!(resolve_target(&inv, "10.0.0.4", 22), Err(Denied::UnknownTarget { .. })));
        assert!(matches!(resolve_target(&inv, "127.0.0.1", 2201), Err(Denied::UnknownTarget { .. })));
        assert!(matches!(resolve_target(&inv, "VM1", 22), Err(Denied::UnknownTarget { .. })));
    }

    #[test]
    fn a_live_grant_permits_its_logins() {
        let grants = [grant("g-1", &["admin"], NOW - HOUR, NOW + HOUR)];
        let p = check_login(&grants, "Alice@example.test", "vm1", Protocol::Ssh, "admin", NOW).unwrap();
        assert_eq!(p.grant_id, "g-1");
        assert_eq!(p.expires_at_ms, NOW + HOUR);
        assert_eq!(check_target(&grants, "alice@example.test", "vm1", Protocol::Ssh, NOW).unwrap().grant_id, "g-1");
    }

    #[test]
    fn the_longest_lasting_grant_wins() {
        let grants = [grant("g-short", &["admin"], NOW - HOUR, NOW + HOUR), grant("g-long", &["admin"], NOW - HOUR, NOW + 2 * HOUR)];
        assert_eq!(check_login(&grants, "alice@example.test", "vm1", Protocol::Ssh, "admin", NOW).unwrap().grant_id, "g-long");
    }

    #[test]
    fn no_grant_is_explained() {
        let err = check_target(&[], "alice@example.test", "vm1", Protocol::Ssh, NOW).unwrap_err();
        assert!(matches!(err, Denied::NoGrant { .. }));
        assert!(err.to_string().contains("no grant for vm1"), "{err}");
        // A grant for another target, protocol or person does not count.
        let mut other = grant("g-1", &["admin"], NOW - HOUR, NOW + HOUR);
        other.target = "vm2".into();
        let mut rdp = grant("g-2", &["admin"], NOW - HOUR, NOW + HOUR);
        rdp.protocol = Protocol::Rdp;
        let mut bob = grant("g-3", &["admin"], NOW - HOUR, NOW + HOUR);
        bob.user = "bob@example.test".into();
        assert!(matches!(check_target(&[other, rdp, bob], "alice@example.test", "vm1", Protocol::Ssh, NOW), Err(Denied::NoGrant { .. })));
    }

    #[test]
    fn an_expired_grant_is_explained() {
        let grants = [grant("g-1", &["admin"], NOW - 2 * HOUR, NOW - HOUR)];
        let err = check_login(&grants, "alice@example.test", "vm1", Protocol::Ssh, "admin", NOW).unwrap_err();
        assert!(matches!(err, Denied::GrantExpired { ref grant_id, .. } if grant_id == "g-1"));
        assert!(err.to_string().contains("expired"), "{err}");
        // Expiry is exclusive: at the end instant the grant is over.
        let at_end = check_target(&grants, "alice@example.test", "vm1", Protocol::Ssh, NOW - HOUR);
        assert!(matches!(at_end, Err(Denied::GrantExpired { .. })));
    }

    #[test]
    fn a_revoked_grant_is_explained() {
        let mut g = grant("g-1", &["admin"], NOW - HOUR, NOW + HOUR);
        g.revocation = Some(Revocation { at_ms: NOW - 1, by: "secops".into(), reason: "incident closed".into() });
        let err = check_target(&[g], "alice@example.test", "vm1", Protocol::Ssh, NOW).unwrap_err();
        assert!(err.to_string().contains("revoked by secops: incident closed"), "{err}");
    }

    #[test]
    fn a_future_grant_is_explained() {
        let grants = [grant("g-1", &["admin"], NOW + HOUR, NOW + 2 * HOUR)];
        let err = check_target(&grants, "alice@example.test", "vm1", Protocol::Ssh, NOW).unwrap_err();
        assert!(matches!(err, Denied::NotYetValid { .. }));
        assert!(err.to_string().contains("in 1h"), "{err}");
    }

    #[test]
    fn a_login_outside_the_grant_names_the_allowed_ones() {
        let grants = [grant("g-1", &["admin", "deploy"], NOW - HOUR, NOW + HOUR), grant("g-2", &["admin"], NOW - HOUR, NOW + HOUR)];
        let err = check_login(&grants, "alice@example.test", "vm1", Protocol::Ssh, "root", NOW).unwrap_err();
        assert_eq!(err, Denied::LoginNotAllowed { target: "vm1".into(), login: "root".into(), allowed: vec!["admin".into(), "deploy".into()] });
        assert!(err.to_string().contains("allows: admin, deploy"), "{err}");
    }

    #[test]
    fn forwarding_needs_the_grant_to_say_so() {
        let mut g = grant("g-1", &["admin"], NOW - HOUR, NOW + HOUR);
        let p = check_target(std::slice::from_ref(&g), "alice@example.test", "vm1", Protocol::Ssh, NOW).unwrap();
        assert!(matches!(check_forwarding(&p), Err(Denied::ForwardingNotAllowed { .. })));
        g.port_forwarding = true;
        let p = check_target(&[g], "alice@example.test", "vm1", Protocol::Ssh, NOW).unwrap();
        assert!(check_forwarding(&p).is_ok());
    }
}
