//! Unit tests of `access`.

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
        rdp_redirect: Vec::new(),
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
    let t = TargetConfig {
        address: "10.0.0.4".into(),
        ssh_port: 2201,
        host_key: None,
        tags: vec![],
        description: String::new(),
        azure_vm: None,
        ..TargetConfig::default()
    };
    BTreeMap::from([("vm1".to_string(), t)])
}

#[test]
fn only_inventory_names_on_their_port_resolve() {
    let inv = inventory();
    assert_eq!(resolve_target(&inv, "vm1", 22).unwrap().0, "vm1");
    assert_eq!(resolve_target(&inv, "vm1", 2201).unwrap().0, "vm1");
    let wrong = resolve_target(&inv, "vm1", 8080).unwrap_err();
    assert_eq!(wrong, Denied::WrongPort { target: "vm1".into(), requested: 8080, expected: 2201 });
    assert_eq!(wrong.to_string(), "vm1 is reached on port 2201 through this gateway, not 8080");
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
    let grants =
        [grant("g-short", &["admin"], NOW - HOUR, NOW + HOUR), grant("g-long", &["admin"], NOW - HOUR, NOW + 2 * HOUR)];
    assert_eq!(
        check_login(&grants, "alice@example.test", "vm1", Protocol::Ssh, "admin", NOW).unwrap().grant_id,
        "g-long"
    );
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
    assert!(matches!(
        check_target(&[other, rdp, bob], "alice@example.test", "vm1", Protocol::Ssh, NOW),
        Err(Denied::NoGrant { .. })
    ));
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
    let grants =
        [grant("g-1", &["admin", "deploy"], NOW - HOUR, NOW + HOUR), grant("g-2", &["admin"], NOW - HOUR, NOW + HOUR)];
    let err = check_login(&grants, "alice@example.test", "vm1", Protocol::Ssh, "root", NOW).unwrap_err();
    assert_eq!(
        err,
        Denied::LoginNotAllowed {
            target: "vm1".into(),
            login: "root".into(),
            allowed: vec!["admin".into(), "deploy".into()]
        }
    );
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
