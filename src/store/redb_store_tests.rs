//! Unit tests of `redb_store`.

use super::*;

fn grant(id: &str, user: &str, end: i64) -> Grant {
    Grant {
        id: id.into(),
        user: user.into(),
        target: "vm1".into(),
        protocol: Protocol::Ssh,
        logins: vec!["admin".into()],
        port_forwarding: false,
        rdp_redirect: Vec::new(),
        not_before_ms: 0,
        expires_at_ms: end,
        reason: "r".into(),
        created_by: "root".into(),
        created_at_ms: end,
        request_id: None,
        approved_by: vec![],
        revocation: None,
        ended_ms: None,
    }
}

fn open() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("state/gateway.redb")).unwrap();
    (dir, store)
}

#[test]
fn grants_index_by_user_and_end() {
    let (_dir, store) = open();
    store.insert_grant(&grant("g-1", "alice@example.test", 1000)).unwrap();
    store.insert_grant(&grant("g-2", "Alice@Example.test", 3000)).unwrap();
    store.insert_grant(&grant("g-3", "bob@example.test", 2000)).unwrap();
    assert!(matches!(store.insert_grant(&grant("g-1", "x", 1)), Err(StoreError::Conflict(_))));

    let alice: Vec<String> = store.grants_for_user("alice@example.test").unwrap().into_iter().map(|g| g.id).collect();
    assert_eq!(alice, ["g-2", "g-1"]);
    assert_eq!(store.next_grant_end().unwrap(), Some(1000));
    let due: Vec<String> = store.grants_due(2000).unwrap().into_iter().map(|g| g.id).collect();
    assert_eq!(due, ["g-1", "g-3"]);

    // Revoking moves the grant's end; processing it removes it from the index.
    let g = store
        .update_grant("g-2", &mut |g| {
            g.revocation = Some(Revocation { at_ms: 500, by: "root".into(), reason: "done".into() });
            Ok(())
        })
        .unwrap();
    assert_eq!(g.status(600), GrantStatus::Revoked);
    assert_eq!(store.next_grant_end().unwrap(), Some(500));
    store
        .update_grant("g-2", &mut |g| {
            g.ended_ms = Some(600);
            Ok(())
        })
        .unwrap();
    assert_eq!(store.next_grant_end().unwrap(), Some(1000));
    assert!(matches!(store.update_grant("nope", &mut |_| Ok(())), Err(StoreError::NotFound(_))));
}

#[test]
fn audit_records_form_a_chain() {
    let (_dir, store) = open();
    let a =
        store.append_audit(&AuditEvent::new("grant.created", "root", serde_json::json!({"grant": "g-1"})), 10).unwrap();
    let b = store
        .append_audit(&AuditEvent::new("grant.revoked", "root", serde_json::json!({"grant": "g-1"})).on("vm1"), 20)
        .unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(a.prev_hash, AUDIT_GENESIS);
    assert_eq!(b.prev_hash, a.hash);
    assert_eq!(b.hash, audit_hash(2, 20, "grant.revoked", "root", Some("vm1"), &b.details, &a.hash));
    assert_eq!(store.audit_records(2, 10).unwrap(), vec![b]);
}

#[test]
fn one_key_can_be_bound_to_several_identities() {
    let (_dir, store) = open();
    let binding = |identity: &str, user: &str| KeyBinding {
        fingerprint: "SHA256:abc".into(),
        identity_id: identity.into(),
        user: user.into(),
        algorithm: "ssh-ed25519".into(),
        bound_at_ms: 1,
        expires_at_ms: 2,
        client_ip: None,
    };
    store.bind_key(&binding("oidc-a", "alice@example.test")).unwrap();
    store.bind_key(&binding("oidc-b", "bob@example.test")).unwrap();
    store.bind_key(&binding("oidc-a", "alice@example.test")).unwrap();
    let mut other = binding("oidc-a", "alice@example.test");
    other.fingerprint = "SHA256:abd".into();
    store.bind_key(&other).unwrap();
    let users: Vec<String> = store.key_bindings("SHA256:abc").unwrap().into_iter().map(|b| b.user).collect();
    assert_eq!(users, ["alice@example.test", "bob@example.test"]);
    assert_eq!(store.remove_key_bindings("SHA256:abc").unwrap(), 2);
    assert!(store.key_bindings("SHA256:abc").unwrap().is_empty());
    assert_eq!(store.key_bindings("SHA256:abd").unwrap().len(), 1);
}

#[test]
fn host_keys_are_pinned_once() {
    let (_dir, store) = open();
    assert_eq!(store.pinned_host_key("vm1").unwrap(), None);
    store.pin_host_key("vm1", "ssh-ed25519 AAA").unwrap();
    store.pin_host_key("vm1", "ssh-ed25519 AAA").unwrap();
    assert!(store.pin_host_key("vm1", "ssh-ed25519 BBB").is_err());
    assert_eq!(store.pinned_host_key("vm1").unwrap().as_deref(), Some("ssh-ed25519 AAA"));
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        store.insert_grant(&grant("g-1", "alice@example.test", 1000)).unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert!(store.grant("g-1").unwrap().is_some());
}

fn binding(identity: &str, user: &str) -> KeyBinding {
    KeyBinding {
        fingerprint: format!("SHA256:{identity}"),
        identity_id: identity.into(),
        user: user.into(),
        algorithm: "ssh-ed25519".into(),
        bound_at_ms: 1,
        expires_at_ms: 2,
        client_ip: None,
    }
}

fn person(issuer: &str, subject: &str, user: &str, at: i64) -> Identity {
    Identity {
        id: Identity::id_for(issuer, subject),
        issuer: issuer.into(),
        subject: subject.into(),
        user: user.into(),
        login_name: None,
        display_name: None,
        groups: vec![],
        first_seen_ms: at,
        last_sign_in_ms: at,
    }
}

#[test]
fn a_user_name_stays_with_the_first_subject_that_signed_in_with_it() {
    let (_dir, store) = open();
    let alice = person("https://idp", "user-alice", "alice@example.test", 1000);
    let audit = AuditEvent::new("signin.device-flow", "alice@example.test", serde_json::json!({}));
    assert_eq!(store.record_sign_in(&alice, None, &audit, 1000).unwrap(), SignInRecord::Recorded(alice.clone()));

    // Another subject (or the same subject at another issuer) sending the same name, in any case: refused, nothing written.
    for (issuer, subject) in [("https://idp", "user-eve"), ("https://other-idp", "user-alice")] {
        let eve = person(issuer, subject, "Alice@Example.TEST", 2000);
        let key = binding(&eve.id, "alice@example.test");
        let got = store.record_sign_in(&eve, Some(&key), &audit, 2000).unwrap();
        assert_eq!(got, SignInRecord::NameTaken { owner: alice.id.clone() });
        assert!(store.identity(&eve.id).unwrap().is_none());
        assert!(store.key_bindings(&key.fingerprint).unwrap().is_empty());
    }
    assert_eq!(store.audit_records(1, 10).unwrap().len(), 1, "only alice's sign-in was recorded");

    // Alice again, later: first-seen kept, the binding written with the same transaction.
    let again = person("https://idp", "user-alice", "alice@example.test", 5000);
    let key = binding(&alice.id, "alice@example.test");
    match store.record_sign_in(&again, Some(&key), &audit, 5000).unwrap() {
        SignInRecord::Recorded(stored) => assert_eq!((stored.first_seen_ms, stored.last_sign_in_ms), (1000, 5000)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.key_bindings(&key.fingerprint).unwrap().len(), 1);
    assert_eq!(store.user_name_owner("ALICE@example.test").unwrap(), Some(alice.id));
}

#[test]
fn names_of_a_store_written_before_pinning_go_to_the_first_identity_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.redb");
    let (early, late) =
        (person("https://idp", "a", "alice@example.test", 10), person("https://idp", "b", "alice@example.test", 20));
    let admin = person(LOCAL_ADMIN_ISSUER, "bob@example.test", "bob@example.test", 1);
    {
        let store = RedbStore::open(&path).unwrap();
        for i in [&late, &early, &admin] {
            store.upsert_identity(i).unwrap();
        }
        // Simulate the older layout: no pins yet.
        let txn = store.db.begin_write().unwrap();
        txn.delete_table(USER_NAMES).unwrap();
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.user_name_owner("alice@example.test").unwrap(), Some(early.id));
    assert_eq!(store.user_name_owner("bob@example.test").unwrap(), None, "automation identities are not pinned");
}
