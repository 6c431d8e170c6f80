//! The audit log's reading side: queries, and proving the hash chain.
//!
//! Every record carries the SHA-256 of the one before (`prev_hash`) and its
//! own hash over all its fields; the head (last sequence number and hash) is
//! signed with the gateway's signing key. `verify` walks the chain from the
//! first record, recomputes every hash, checks every link and the signed
//! head, and names the first record that does not fit. Pure: records in,
//! verdict out.

use serde::{Deserialize, Serialize};

use crate::keys::verify_signature;
use crate::store::{AUDIT_GENESIS, AuditHead, AuditRecord, audit_hash, head_text};

/// What `audit` can filter on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Records whose actor or `details.user` is this person.
    pub user: Option<String>,
    pub target: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl AuditQuery {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let user_ok = self.user.as_deref().is_none_or(|u| {
            r.actor.eq_ignore_ascii_case(u) || r.details.get("user").and_then(|v| v.as_str()).is_some_and(|d| d.eq_ignore_ascii_case(u))
        });
        user_ok
            && self.target.as_deref().is_none_or(|t| r.target.as_deref() == Some(t))
            && self.kind.as_deref().is_none_or(|k| r.kind == k || r.kind.starts_with(&format!("{k}.")))
            && self.since_ms.is_none_or(|s| r.at_ms >= s)
            && self.until_ms.is_none_or(|u| r.at_ms < u)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainVerified {
    pub records: u64,
    pub head_seq: u64,
    pub head_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ChainBroken {
    #[error("record {seq} was altered: its contents do not match its hash")]
    Altered { seq: u64 },
    #[error("record {seq} does not follow record {previous}: the chain is broken there (a record was removed or replaced)")]
    Unlinked { seq: u64, previous: u64 },
    #[error("records are missing before {seq} (expected {expected})")]
    Gap { seq: u64, expected: u64 },
    #[error("the signed head says record {signed_seq} is last, but the log ends at {last} (records were added or removed at the end)")]
    HeadMismatch { signed_seq: u64, last: u64 },
    #[error("the head signature does not verify: {0}")]
    HeadSignature(String),
    #[error("the log has records but no signed head")]
    NoHead,
}

/// Verifies the whole chain. `records` must be every record in order.
pub fn verify<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    head: Option<&AuditHead>,
    signer: &russh::keys::PublicKey,
) -> Result<ChainVerified, ChainBroken> {
    let mut prev_hash = AUDIT_GENESIS.to_string();
    let mut last: Option<&AuditRecord> = None;
    for (expected_seq, r) in (1u64..).zip(records) {
        if r.seq != expected_seq {
            return Err(ChainBroken::Gap { seq: r.seq, expected: expected_seq });
        }
        let recomputed = audit_hash(r.seq, r.at_ms, &r.kind, &r.actor, r.target.as_deref(), &r.details, &r.prev_hash);
        if recomputed != r.hash {
            return Err(ChainBroken::Altered { seq: r.seq });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainBroken::Unlinked { seq: r.seq, previous: r.seq - 1 });
        }
        prev_hash = r.hash.clone();
        last = Some(r);
    }
    let Some(last) = last else {
        return Ok(ChainVerified { records: 0, head_seq: 0, head_hash: AUDIT_GENESIS.into() });
    };
    let head = head.ok_or(ChainBroken::NoHead)?;
    verify_signature(signer, &head_text(head.seq, &head.hash), &head.signature).map_err(|e| ChainBroken::HeadSignature(e.to_string()))?;
    if head.seq != last.seq || head.hash != last.hash {
        return Err(ChainBroken::HeadMismatch { signed_seq: head.seq, last: last.seq });
    }
    Ok(ChainVerified { records: last.seq, head_seq: head.seq, head_hash: head.hash.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyMaterial;
    use crate::store::{AuditEvent, RedbStore, Store};

    fn filled() -> (tempfile::TempDir, RedbStore, std::sync::Arc<KeyMaterial>) {
        let dir = tempfile::tempdir().unwrap();
        let keys = std::sync::Arc::new(KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap());
        let k = std::sync::Arc::clone(&keys);
        let store = RedbStore::open(&dir.path().join("db.redb")).unwrap().with_head_signer(Box::new(move |d| k.sign(d).map_err(|e| e.to_string())));
        for i in 0..5 {
            let e = AuditEvent::new("grant.created", format!("user{i}"), serde_json::json!({"user": "bob@example.test", "n": i})).on("vm1");
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
        assert!(matches!(verify(&removed, head.as_ref(), keys.signing_public()), Err(ChainBroken::Unlinked { seq: 3, .. })));
        // Drop the last record: only the signed head notices.
        assert_eq!(verify(&records[..4], head.as_ref(), keys.signing_public()), Err(ChainBroken::HeadMismatch { signed_seq: 5, last: 4 }));
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
        let q = AuditQuery { user: Some("bob@example.test".into()), target: Some("vm1".into()), kind: Some("grant".into()), since_ms: Some(1002), until_ms: Some(1004) };
        assert_eq!(records.iter().filter(|r| q.matches(r)).map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    }
}
