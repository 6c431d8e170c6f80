//! The embedded store: one redb file owned by one gateway process, holding
//! identities, key bindings, grants (with an expiry index), sessions, the
//! recordings index, TOFU host keys and the audit hash chain.
//!
//! Callers see the `Store` trait so a shared database can replace redb when
//! several gateways run side by side. Methods are synchronous (redb is);
//! async code calls them through `blocking()` so a commit's fsync never
//! stalls a runtime worker.

mod model;
mod redb_store;

use std::sync::Arc;

pub use model::*;
pub use redb_store::RedbStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Database(String),
    #[error("store record `{key}` is unreadable: {message}")]
    Corrupt { key: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store task failed: {0}")]
    Task(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Filter for listing grants.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    pub user: Option<String>,
    pub target: Option<String>,
}

pub trait Store: Send + Sync + 'static {
    fn upsert_identity(&self, identity: &Identity) -> StoreResult<()>;
    fn identity(&self, id: &str) -> StoreResult<Option<Identity>>;
    fn identities(&self) -> StoreResult<Vec<Identity>>;

    /// Records a sign-in at the identity provider in one transaction: pins the
    /// person's user name (case-insensitive) to their `(issuer, subject)` when it
    /// is free, stores the identity (keeping its first-seen time), binds the key
    /// and appends the audit record. When the name is pinned to another identity,
    /// nothing is written and the owner is returned: a name never moves to
    /// another account at the provider by itself.
    fn record_sign_in(
        &self,
        identity: &Identity,
        binding: Option<&KeyBinding>,
        audit: &AuditEvent,
        at_ms: i64,
    ) -> StoreResult<SignInRecord>;
    /// The identity a user name is pinned to, if any.
    fn user_name_owner(&self, user: &str) -> StoreResult<Option<String>>;

    fn identity_check(&self, identity_id: &str) -> StoreResult<Option<IdentityCheck>>;
    fn put_identity_check(&self, check: &IdentityCheck) -> StoreResult<()>;
    /// Ends everything a person's past sign-ins gave them, in one transaction:
    /// their key bindings and API sessions, and the stored refresh token; the
    /// audit record says why. Returns (keys unbound, API sessions ended).
    fn end_sign_ins(&self, identity_id: &str, audit: &AuditEvent, at_ms: i64) -> StoreResult<(usize, usize)>;

    /// Binds a key to an identity (replacing that pair's earlier binding). One key may be
    /// bound to several identities; the SSH user name chooses among them.
    fn bind_key(&self, binding: &KeyBinding) -> StoreResult<()>;
    fn key_bindings(&self, fingerprint: &str) -> StoreResult<Vec<KeyBinding>>;
    /// Removes every binding of a key; returns how many there were.
    fn remove_key_bindings(&self, fingerprint: &str) -> StoreResult<usize>;

    fn insert_grant(&self, grant: &Grant) -> StoreResult<()>;
    fn grant(&self, id: &str) -> StoreResult<Option<Grant>>;
    /// Applies `change` to a grant atomically and returns the new value.
    fn update_grant(&self, id: &str, change: &mut dyn FnMut(&mut Grant) -> StoreResult<()>) -> StoreResult<Grant>;
    /// Every grant naming `user` (any status), newest first.
    fn grants_for_user(&self, user: &str) -> StoreResult<Vec<Grant>>;
    fn list_grants(&self, filter: &GrantFilter) -> StoreResult<Vec<Grant>>;
    /// Grants whose end (expiry or revocation) has come but that were not processed yet.
    fn grants_due(&self, now_ms: i64) -> StoreResult<Vec<Grant>>;
    /// The earliest end among unprocessed grants, to sleep until.
    fn next_grant_end(&self) -> StoreResult<Option<i64>>;
    /// Claims a grant's end: sets `ended_ms`, takes it out of the end index and
    /// appends `event`, in one transaction. `false` when it was claimed before
    /// (a concurrent run), and then nothing is written.
    fn finish_grant(&self, id: &str, now_ms: i64, event: &AuditEvent) -> StoreResult<bool>;

    fn upsert_session(&self, session: &SessionRecord) -> StoreResult<()>;
    fn sessions(&self, limit: usize) -> StoreResult<Vec<SessionRecord>>;

    fn upsert_recording(&self, recording: &RecordingRecord) -> StoreResult<()>;
    fn recording(&self, id: &str) -> StoreResult<Option<RecordingRecord>>;
    fn recordings(&self, limit: usize) -> StoreResult<Vec<RecordingRecord>>;
    /// Writes a sealed recording's index entry and its `recording.sealed` audit record together,
    /// so the index and the audit log never disagree about a seal.
    fn seal_recording(&self, recording: &RecordingRecord, audit: &AuditEvent, at_ms: i64) -> StoreResult<()> {
        self.upsert_recording(recording)?;
        self.append_audit(audit, at_ms).map(|_| ())
    }

    fn pinned_host_key(&self, target: &str) -> StoreResult<Option<String>>;
    fn pin_host_key(&self, target: &str, key: &str) -> StoreResult<()>;
    /// Marks a single-use ticket as used. `false`: it was used before.
    /// Entries past their expiry are forgotten (an expired ticket is refused anyway).
    fn use_ticket(&self, id: &str, expires_ms: i64, now_ms: i64) -> StoreResult<bool>;

    fn append_audit(&self, event: &AuditEvent, at_ms: i64) -> StoreResult<AuditRecord>;
    fn audit_records(&self, from_seq: u64, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// The last record's hash and sequence number, signed by the gateway.
    fn audit_head(&self) -> StoreResult<Option<AuditHead>>;

    fn request(&self, id: &str) -> StoreResult<Option<AccessRequest>>;
    fn requests(&self) -> StoreResult<Vec<AccessRequest>>;
    /// Writes a request (new or changed), the grant it produced if any, and
    /// their audit records in one transaction. `expected` is the request as
    /// the caller read it (None for a new one): if the stored one differs, a
    /// concurrent decision won and nothing is written.
    fn save_request(
        &self,
        request: &AccessRequest,
        expected: Option<&AccessRequest>,
        grant: Option<&Grant>,
        audit: &[AuditEvent],
        at_ms: i64,
    ) -> StoreResult<()>;

    fn upsert_lease(&self, lease: &Lease) -> StoreResult<()>;
    fn remove_lease(&self, id: &str) -> StoreResult<()>;
    fn leases(&self) -> StoreResult<Vec<Lease>>;

    fn upsert_api_session(&self, session: &ApiSession) -> StoreResult<()>;
    fn api_session(&self, id: &str) -> StoreResult<Option<ApiSession>>;
}

/// The signed head of the audit chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
    /// SSHSIG over `head_text(seq, hash)`.
    pub signature: String,
}

/// The bytes an audit head signature covers.
pub fn head_text(seq: u64, hash: &str) -> Vec<u8> {
    format!("jit-gateway audit head\n{seq}\n{hash}\n").into_bytes()
}

/// Signs audit heads (the gateway's signing key); the store calls it on every append.
pub type HeadSigner = Box<dyn Fn(&[u8]) -> Result<String, String> + Send + Sync>;

pub type SharedStore = Arc<dyn Store>;

/// Runs a store call on the blocking pool.
pub async fn blocking<T, F>(store: &SharedStore, f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref())).await.map_err(|e| StoreError::Task(e.to_string()))?
}

/// The hash of an audit record: SHA-256 over its fields in a fixed order.
pub fn audit_hash(
    seq: u64,
    at_ms: i64,
    kind: &str,
    actor: &str,
    target: Option<&str>,
    details: &serde_json::Value,
    prev_hash: &str,
) -> String {
    let canonical = serde_json::json!([seq, at_ms, kind, actor, target, details, prev_hash]);
    crate::secret::sha256_hex(canonical.to_string().as_bytes())
}

/// The `prev_hash` of the first audit record.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
