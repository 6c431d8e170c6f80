//! Unit tests of `audit`.

use super::*;
use crate::keys::KeyMaterial;
use crate::store::{AuditEvent, RedbStore, Store};

fn filled() -> (tempfile::TempDir, RedbStore, std::sync::Arc<KeyMaterial>) {
    let dir = tempfile::tempdir().unwrap();
    let keys = std::sync::Arc::new(KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap());
    let k = std::sync::Arc::clone(&keys);
    let store = RedbStore::open(&dir.path().join("db.redb"))
        .unwrap()
        .with_head_signer(Box::new(move |d| k.sign(d).map_err(|e| e.to_string())));
    for i in 0..5 {
        let e = AuditEvent::new(
            "grant.created",
            format!("user{i}"),
            serde_json::json!({"user": "bob@example.test", "n": i}),
        )
        .on("vm1");
        store.append_audit(&e, 1000 + i).unwrap();
    }
    (dir, store, keys)
}

#[test]
fn an_intact_chain_verifies() {
    let (_d, store, keys) = filled();
    let records = store.audit_records(1, 100).unwrap();
    let head = store.audit_head().unwrap();
    let ok = verify(&records, head.as_ref(), keys.signing_public()).unwrap();
    assert_eq!((ok.records, ok.head_seq), (5, 5));
}

#[test]
fn an_altered_record_is_named() {
    let (_d, store, keys) = filled();
    let mut records = store.audit_records(1, 100).unwrap();
    records[2].actor = "mallory".into();
    let head = store.audit_head().unwrap();
    assert_eq!(verify(&records, head.as_ref(), keys.signing_public()), Err(ChainBroken::Altered { seq: 3 }));
}

#[test]
fn a_rewritten_chain_fails_at_the_link_or_the_signed_head() {
    let (_d, store, keys) = filled();
    let records = store.audit_records(1, 100).unwrap();
    let head = store.audit_head().unwrap();
    // Remove record 3 and renumber: the link from 4 to 2 is wrong.
    let mut removed: Vec<AuditRecord> = records.iter().filter(|r| r.seq != 3).cloned().collect();
    for (i, r) in removed.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
        r.hash = audit_hash(r.seq, r.at_ms, &r.kind, &r.actor, r.target.as_deref(), &r.details, &r.prev_hash);
    }
    assert!(matches!(
        verify(&removed, head.as_ref(), keys.signing_public()),
        Err(ChainBroken::Unlinked { seq: 3, .. })
    ));
    // Drop the last record: only the signed head notices.
    assert_eq!(
        verify(&records[..4], head.as_ref(), keys.signing_public()),
        Err(ChainBroken::HeadMismatch { signed_seq: 5, last: 4 })
    );
    // A head signed by someone else.
    let other = KeyMaterial::load_or_generate(&_d.path().join("other")).unwrap();
    assert!(matches!(verify(&records, head.as_ref(), other.signing_public()), Err(ChainBroken::HeadSignature(_))));
}

#[test]
fn queries_filter_by_user_target_kind_and_time() {
    let (_d, store, _k) = filled();
    let records = store.audit_records(1, 100).unwrap();
    let q = AuditQuery { user: Some("user1".into()), ..Default::default() };
    assert_eq!(records.iter().filter(|r| q.matches(r)).count(), 1);
    let q = AuditQuery {
        user: Some("bob@example.test".into()),
        target: Some("vm1".into()),
        kind: Some("grant".into()),
        since_ms: Some(1002),
        until_ms: Some(1004),
    };
    assert_eq!(records.iter().filter(|r| q.matches(r)).map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
}
