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
            r.actor.eq_ignore_ascii_case(u)
                || r.details.get("user").and_then(|v| v.as_str()).is_some_and(|d| d.eq_ignore_ascii_case(u))
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
    #[error(
        "record {seq} does not follow record {previous}: the chain is broken there (a record was removed or replaced)"
    )]
    Unlinked { seq: u64, previous: u64 },
    #[error("records are missing before {seq} (expected {expected})")]
    Gap { seq: u64, expected: u64 },
    #[error(
        "the signed head says record {signed_seq} is last, but the log ends at {last} (records were added or removed at the end)"
    )]
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
    verify_signature(signer, &head_text(head.seq, &head.hash), &head.signature)
        .map_err(|e| ChainBroken::HeadSignature(e.to_string()))?;
    if head.seq != last.seq || head.hash != last.hash {
        return Err(ChainBroken::HeadMismatch { signed_seq: head.seq, last: last.seq });
    }
    Ok(ChainVerified { records: last.seq, head_seq: head.seq, head_hash: head.hash.clone() })
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
