//! `Store` on redb: one file, ACID transactions, crash-safe. Values are JSON
//! (readable with any tool, tolerant of added fields); keys are strings or
//! sequence numbers. Secondary indexes live in their own tables and are
//! written in the same transaction as the record they point to.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

const IDENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("identities");
const KEY_BINDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("key_bindings");
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
/// `user \0 grant id` → ()
const GRANTS_BY_USER: TableDefinition<&str, ()> = TableDefinition::new("grants_by_user");
/// `end ms (20 digits) / grant id` → () for grants whose end is not processed yet.
const GRANT_ENDS: TableDefinition<&str, ()> = TableDefinition::new("grant_ends");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const RECORDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("recordings");
const HOST_KEYS: TableDefinition<&str, &str> = TableDefinition::new("host_keys");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const API_SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_sessions");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// Single-use tickets already presented (ID -> expiry), kept until they expire.
const USED_TICKETS: TableDefinition<&str, i64> = TableDefinition::new("used_tickets");
/// Lower-cased user name → the identity ID it is pinned to (first `(issuer, subject)` seen).
const USER_NAMES: TableDefinition<&str, &str> = TableDefinition::new("user_names");
/// Identity ID → `IdentityCheck` (last confirmation with the provider, refresh token).
const IDENTITY_CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("identity_checks");
/// Single values: `audit_head`.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub struct RedbStore {
    db: Database,
    head_signer: Option<HeadSigner>,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(db_err)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), message: e.to_string() })
}

fn end_key(grant: &Grant) -> String {
    format!("{:020}/{}", grant.end_ms().max(0), grant.id)
}

fn user_key(user: &str, grant_id: &str) -> String {
    format!("{}\0{grant_id}", user.to_ascii_lowercase())
}

/// Creates the store file 0600 before redb opens it (redb would create it
/// 0644 under the usual umask), and narrows an existing one to 0600.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tracing::warn!(path = %path.display(), mode = format!("{mode:04o}"), "narrowed the store file to mode 0600");
    }
    Ok(())
}

impl RedbStore {
    pub fn open(path: &Path) -> StoreResult<RedbStore> {
        if let Some(parent) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| db_err(format!("{}: {e}", parent.display())))?;
        }
        private_file(path).map_err(|e| db_err(format!("{}: {e}", path.display())))?;
        let db = Database::builder()
            .set_cache_size(32 << 20)
            .create(path)
            .map_err(|e| db_err(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(IDENTITIES).map_err(db_err)?;
            txn.open_table(KEY_BINDINGS).map_err(db_err)?;
            txn.open_table(GRANTS).map_err(db_err)?;
            txn.open_table(GRANTS_BY_USER).map_err(db_err)?;
            txn.open_table(GRANT_ENDS).map_err(db_err)?;
            txn.open_table(SESSIONS).map_err(db_err)?;
            txn.open_table(RECORDINGS).map_err(db_err)?;
            txn.open_table(HOST_KEYS).map_err(db_err)?;
            txn.open_table(USED_TICKETS).map_err(db_err)?;
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(REQUESTS).map_err(db_err)?;
            txn.open_table(API_SESSIONS).map_err(db_err)?;
            txn.open_table(LEASES).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
            txn.open_table(IDENTITY_CHECKS).map_err(db_err)?;
            pin_existing_names(&txn)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(RedbStore { db, head_signer: None })
    }

    /// Signs the audit head on every append from now on.
    pub fn with_head_signer(mut self, signer: HeadSigner) -> Self {
        self.head_signer = Some(signer);
        self
    }

    /// Appends one audit record inside `txn` and moves the signed head.
    fn append_in(&self, txn: &redb::WriteTransaction, event: &AuditEvent, at_ms: i64) -> StoreResult<AuditRecord> {
        let mut table = txn.open_table(AUDIT).map_err(db_err)?;
        let (seq, prev_hash) = match table.last().map_err(db_err)? {
            Some((k, v)) => {
                let prev: AuditRecord = decode(&k.value().to_string(), v.value())?;
                (k.value() + 1, prev.hash)
            }
            None => (1, AUDIT_GENESIS.to_string()),
        };
        let hash =
            audit_hash(seq, at_ms, event.kind, &event.actor, event.target.as_deref(), &event.details, &prev_hash);
        let record = AuditRecord {
            seq,
            at_ms,
            kind: event.kind.to_string(),
            actor: event.actor.clone(),
            target: event.target.clone(),
            details: event.details.clone(),
            prev_hash,
            hash,
        };
        table.insert(seq, encode(&record)?.as_slice()).map_err(db_err)?;
        if let Some(sign) = &self.head_signer {
            let signature = sign(&head_text(seq, &record.hash)).map_err(StoreError::Database)?;
            let head = AuditHead { seq, hash: record.hash.clone(), signature };
            txn.open_table(META).map_err(db_err)?.insert("audit_head", encode(&head)?.as_slice()).map_err(db_err)?;
        }
        Ok(record)
    }

    fn put<T: Serialize>(&self, table: TableDefinition<&str, &[u8]>, key: &str, value: &T) -> StoreResult<()> {
        let bytes = encode(value)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(table).map_err(db_err)?.insert(key, bytes.as_slice()).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    fn get<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> StoreResult<Option<T>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(v) => decode(key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// All values of a table, in key order.
    fn all<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>) -> StoreResult<Vec<T>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

/// Stores written before names were pinned: pin each name to the identity
/// that signed in with it first. Runs once (while the table is empty).
fn pin_existing_names(txn: &redb::WriteTransaction) -> StoreResult<()> {
    let mut names = txn.open_table(USER_NAMES).map_err(db_err)?;
    if !names.is_empty().map_err(db_err)? {
        return Ok(());
    }
    let mut identities: Vec<Identity> = Vec::new();
    for entry in txn.open_table(IDENTITIES).map_err(db_err)?.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        identities.push(decode(k.value(), v.value())?);
    }
    identities.retain(|i| i.issuer != LOCAL_ADMIN_ISSUER);
    identities.sort_by_key(|i| i.first_seen_ms);
    for identity in identities {
        let name = identity.user.to_lowercase();
        if names.get(name.as_str()).map_err(db_err)?.is_none() {
            names.insert(name.as_str(), identity.id.as_str()).map_err(db_err)?;
        }
    }
    Ok(())
}

impl Store for RedbStore {
    fn record_sign_in(
        &self,
        identity: &Identity,
        binding: Option<&KeyBinding>,
        audit: &AuditEvent,
        at_ms: i64,
    ) -> StoreResult<SignInRecord> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let stored = {
            let name = identity.user.to_lowercase();
            let mut names = txn.open_table(USER_NAMES).map_err(db_err)?;
            let owner = names.get(name.as_str()).map_err(db_err)?.map(|v| v.value().to_string());
            match owner {
                Some(owner) if owner != identity.id => return Ok(SignInRecord::NameTaken { owner }),
                Some(_) => {}
                None => {
                    names.insert(name.as_str(), identity.id.as_str()).map_err(db_err)?;
                }
            }
            let mut identities = txn.open_table(IDENTITIES).map_err(db_err)?;
            let first_seen = match identities.get(identity.id.as_str()).map_err(db_err)? {
                Some(v) => decode::<Identity>(&identity.id, v.value())?.first_seen_ms,
                None => identity.first_seen_ms,
            };
            let stored = Identity { first_seen_ms: first_seen, ..identity.clone() };
            identities.insert(identity.id.as_str(), encode(&stored)?.as_slice()).map_err(db_err)?;
            if let Some(b) = binding {
                txn.open_table(KEY_BINDINGS)
                    .map_err(db_err)?
                    .insert(format!("{}\0{}", b.fingerprint, b.identity_id).as_str(), encode(b)?.as_slice())
                    .map_err(db_err)?;
            }
            stored
        };
        self.append_in(&txn, audit, at_ms)?;
        txn.commit().map_err(db_err)?;
        Ok(SignInRecord::Recorded(stored))
    }

    fn identity_check(&self, identity_id: &str) -> StoreResult<Option<IdentityCheck>> {
        self.get(IDENTITY_CHECKS, identity_id)
    }

    fn put_identity_check(&self, check: &IdentityCheck) -> StoreResult<()> {
        self.put(IDENTITY_CHECKS, &check.identity_id, check)
    }

    fn end_sign_ins(&self, identity_id: &str, audit: &AuditEvent, at_ms: i64) -> StoreResult<(usize, usize)> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let counts = {
            let suffix = format!("\0{identity_id}");
            let mut bindings = txn.open_table(KEY_BINDINGS).map_err(db_err)?;
            let mut unbound = Vec::new();
            for entry in bindings.iter().map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                if k.value().ends_with(&suffix) {
                    unbound.push(k.value().to_string());
                }
            }
            for k in &unbound {
                bindings.remove(k.as_str()).map_err(db_err)?;
            }
            let mut sessions = txn.open_table(API_SESSIONS).map_err(db_err)?;
            let mut ended = Vec::new();
            for entry in sessions.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let session: ApiSession = decode(k.value(), v.value())?;
                if session.identity_id == identity_id && !session.revoked {
                    ended.push(ApiSession { revoked: true, ..session });
                }
            }
            for session in &ended {
                sessions.insert(session.id.as_str(), encode(session)?.as_slice()).map_err(db_err)?;
            }
            txn.open_table(IDENTITY_CHECKS).map_err(db_err)?.remove(identity_id).map_err(db_err)?;
            (unbound.len(), ended.len())
        };
        self.append_in(&txn, audit, at_ms)?;
        txn.commit().map_err(db_err)?;
        Ok(counts)
    }

    fn user_name_owner(&self, user: &str) -> StoreResult<Option<String>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(USER_NAMES).map_err(db_err)?;
        Ok(table.get(user.to_lowercase().as_str()).map_err(db_err)?.map(|v| v.value().to_string()))
    }

    fn upsert_identity(&self, identity: &Identity) -> StoreResult<()> {
        self.put(IDENTITIES, &identity.id, identity)
    }

    fn identity(&self, id: &str) -> StoreResult<Option<Identity>> {
        self.get(IDENTITIES, id)
    }

    fn identities(&self) -> StoreResult<Vec<Identity>> {
        self.all(IDENTITIES)
    }

    fn bind_key(&self, binding: &KeyBinding) -> StoreResult<()> {
        self.put(KEY_BINDINGS, &format!("{}\0{}", binding.fingerprint, binding.identity_id), binding)
    }

    fn key_bindings(&self, fingerprint: &str) -> StoreResult<Vec<KeyBinding>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(KEY_BINDINGS).map_err(db_err)?;
        let (from, to) = (format!("{fingerprint}\0"), format!("{fingerprint}\u{1}"));
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn remove_key_bindings(&self, fingerprint: &str) -> StoreResult<usize> {
        let keys: Vec<String> =
            self.key_bindings(fingerprint)?.iter().map(|b| format!("{}\0{}", b.fingerprint, b.identity_id)).collect();
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(KEY_BINDINGS).map_err(db_err)?;
            for k in &keys {
                table.remove(k.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(keys.len())
    }

    fn insert_grant(&self, grant: &Grant) -> StoreResult<()> {
        let bytes = encode(grant)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut grants = txn.open_table(GRANTS).map_err(db_err)?;
            if grants.get(grant.id.as_str()).map_err(db_err)?.is_some() {
                return Err(StoreError::Conflict(format!("grant {} exists already", grant.id)));
            }
            grants.insert(grant.id.as_str(), bytes.as_slice()).map_err(db_err)?;
            txn.open_table(GRANTS_BY_USER)
                .map_err(db_err)?
                .insert(user_key(&grant.user, &grant.id).as_str(), ())
                .map_err(db_err)?;
            if grant.ended_ms.is_none() {
                txn.open_table(GRANT_ENDS).map_err(db_err)?.insert(end_key(grant).as_str(), ()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    fn grant(&self, id: &str) -> StoreResult<Option<Grant>> {
        self.get(GRANTS, id)
    }

    fn update_grant(&self, id: &str, change: &mut dyn FnMut(&mut Grant) -> StoreResult<()>) -> StoreResult<Grant> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let updated = {
            let mut grants = txn.open_table(GRANTS).map_err(db_err)?;
            let before: Grant = match grants.get(id).map_err(db_err)? {
                Some(v) => decode(id, v.value())?,
                None => return Err(StoreError::NotFound(format!("grant {id}"))),
            };
            let mut after = before.clone();
            change(&mut after)?;
            if after.id != before.id || after.user != before.user {
                return Err(StoreError::Conflict("a grant's id and user cannot change".into()));
            }
            grants.insert(id, encode(&after)?.as_slice()).map_err(db_err)?;
            let mut ends = txn.open_table(GRANT_ENDS).map_err(db_err)?;
            ends.remove(end_key(&before).as_str()).map_err(db_err)?;
            if after.ended_ms.is_none() {
                ends.insert(end_key(&after).as_str(), ()).map_err(db_err)?;
            }
            after
        };
        txn.commit().map_err(db_err)?;
        Ok(updated)
    }

    fn grants_for_user(&self, user: &str) -> StoreResult<Vec<Grant>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let index = txn.open_table(GRANTS_BY_USER).map_err(db_err)?;
        let grants = txn.open_table(GRANTS).map_err(db_err)?;
        let from = user_key(user, "");
        let to = format!("{}\u{1}", user.to_ascii_lowercase());
        let mut out: Vec<Grant> = Vec::new();
        for entry in index.range(from.as_str()..to.as_str()).map_err(db_err)? {
            let (key, _) = entry.map_err(db_err)?;
            let Some((_, id)) = key.value().split_once('\0') else { continue };
            if let Some(v) = grants.get(id).map_err(db_err)? {
                out.push(decode(id, v.value())?);
            }
        }
        out.sort_by_key(|g| std::cmp::Reverse(g.created_at_ms));
        Ok(out)
    }

    fn list_grants(&self, filter: &GrantFilter) -> StoreResult<Vec<Grant>> {
        let mut all: Vec<Grant> = match &filter.user {
            Some(user) => self.grants_for_user(user)?,
            None => self.all(GRANTS)?,
        };
        if let Some(target) = &filter.target {
            all.retain(|g| &g.target == target);
        }
        all.sort_by_key(|g| std::cmp::Reverse(g.created_at_ms));
        Ok(all)
    }

    fn grants_due(&self, now_ms: i64) -> StoreResult<Vec<Grant>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let ends = txn.open_table(GRANT_ENDS).map_err(db_err)?;
        let grants = txn.open_table(GRANTS).map_err(db_err)?;
        let until = format!("{:020}/\u{7f}", now_ms.max(0));
        let mut out = Vec::new();
        for entry in ends.range(..until.as_str()).map_err(db_err)? {
            let (key, _) = entry.map_err(db_err)?;
            let Some((_, id)) = key.value().split_once('/') else { continue };
            if let Some(v) = grants.get(id).map_err(db_err)? {
                out.push(decode(id, v.value())?);
            }
        }
        Ok(out)
    }

    fn next_grant_end(&self) -> StoreResult<Option<i64>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let ends = txn.open_table(GRANT_ENDS).map_err(db_err)?;
        let first = ends.first().map_err(db_err)?;
        Ok(first.and_then(|(k, _)| k.value().split_once('/').and_then(|(ms, _)| ms.parse().ok())))
    }

    fn finish_grant(&self, id: &str, now_ms: i64, event: &AuditEvent) -> StoreResult<bool> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut grants = txn.open_table(GRANTS).map_err(db_err)?;
            let mut grant: Grant = match grants.get(id).map_err(db_err)? {
                Some(v) => decode(id, v.value())?,
                None => return Err(StoreError::NotFound(format!("grant {id}"))),
            };
            if grant.ended_ms.is_some() {
                return Ok(false);
            }
            txn.open_table(GRANT_ENDS).map_err(db_err)?.remove(end_key(&grant).as_str()).map_err(db_err)?;
            grant.ended_ms = Some(now_ms);
            grants.insert(id, encode(&grant)?.as_slice()).map_err(db_err)?;
        }
        self.append_in(&txn, event, now_ms)?;
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    fn upsert_session(&self, session: &SessionRecord) -> StoreResult<()> {
        self.put(SESSIONS, &session.id, session)
    }

    fn sessions(&self, limit: usize) -> StoreResult<Vec<SessionRecord>> {
        let mut all: Vec<SessionRecord> = self.all(SESSIONS)?;
        all.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
        all.truncate(limit);
        Ok(all)
    }

    fn upsert_recording(&self, recording: &RecordingRecord) -> StoreResult<()> {
        self.put(RECORDINGS, &recording.id, recording)
    }

    fn recording(&self, id: &str) -> StoreResult<Option<RecordingRecord>> {
        self.get(RECORDINGS, id)
    }

    fn recordings(&self, limit: usize) -> StoreResult<Vec<RecordingRecord>> {
        let mut all: Vec<RecordingRecord> = self.all(RECORDINGS)?;
        all.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
        all.truncate(limit);
        Ok(all)
    }

    fn seal_recording(&self, recording: &RecordingRecord, audit: &AuditEvent, at_ms: i64) -> StoreResult<()> {
        let bytes = encode(recording)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(RECORDINGS).map_err(db_err)?.insert(recording.id.as_str(), bytes.as_slice()).map_err(db_err)?;
        self.append_in(&txn, audit, at_ms)?;
        txn.commit().map_err(db_err)
    }

    fn pinned_host_key(&self, target: &str) -> StoreResult<Option<String>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(HOST_KEYS).map_err(db_err)?;
        Ok(table.get(target).map_err(db_err)?.map(|v| v.value().to_string()))
    }

    fn pin_host_key(&self, target: &str, key: &str) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(HOST_KEYS).map_err(db_err)?;
            if let Some(existing) = table.get(target).map_err(db_err)?
                && existing.value() != key
            {
                return Err(StoreError::Conflict(format!("a different host key is recorded for {target}")));
            }
            table.insert(target, key).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    fn use_ticket(&self, id: &str, expires_ms: i64, now_ms: i64) -> StoreResult<bool> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let fresh;
        {
            let mut table = txn.open_table(USED_TICKETS).map_err(db_err)?;
            table.retain(|_, until| until >= now_ms).map_err(db_err)?;
            fresh = table.get(id).map_err(db_err)?.is_none();
            if fresh {
                table.insert(id, expires_ms).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(fresh)
    }

    fn append_audit(&self, event: &AuditEvent, at_ms: i64) -> StoreResult<AuditRecord> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = self.append_in(&txn, event, at_ms)?;
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    fn audit_records(&self, from_seq: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range(from_seq..).map_err(db_err)?.take(limit) {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode(&k.value().to_string(), v.value())?);
        }
        Ok(out)
    }

    fn audit_head(&self) -> StoreResult<Option<AuditHead>> {
        self.get(META, "audit_head")
    }

    fn request(&self, id: &str) -> StoreResult<Option<AccessRequest>> {
        self.get(REQUESTS, id)
    }

    fn requests(&self) -> StoreResult<Vec<AccessRequest>> {
        let mut all: Vec<AccessRequest> = self.all(REQUESTS)?;
        all.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        Ok(all)
    }

    fn save_request(
        &self,
        request: &AccessRequest,
        expected: Option<&AccessRequest>,
        grant: Option<&Grant>,
        audit: &[AuditEvent],
        at_ms: i64,
    ) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut requests = txn.open_table(REQUESTS).map_err(db_err)?;
            let stored: Option<AccessRequest> = match requests.get(request.id.as_str()).map_err(db_err)? {
                Some(v) => Some(decode(&request.id, v.value())?),
                None => None,
            };
            if stored.as_ref() != expected {
                return Err(StoreError::Conflict(format!(
                    "request {} changed meanwhile; look at it again",
                    request.id
                )));
            }
            requests.insert(request.id.as_str(), encode(request)?.as_slice()).map_err(db_err)?;
        }
        if let Some(grant) = grant {
            let mut grants = txn.open_table(GRANTS).map_err(db_err)?;
            if grants.get(grant.id.as_str()).map_err(db_err)?.is_some() {
                return Err(StoreError::Conflict(format!("grant {} exists already", grant.id)));
            }
            grants.insert(grant.id.as_str(), encode(grant)?.as_slice()).map_err(db_err)?;
            txn.open_table(GRANTS_BY_USER)
                .map_err(db_err)?
                .insert(user_key(&grant.user, &grant.id).as_str(), ())
                .map_err(db_err)?;
            txn.open_table(GRANT_ENDS).map_err(db_err)?.insert(end_key(grant).as_str(), ()).map_err(db_err)?;
        }
        for event in audit {
            self.append_in(&txn, event, at_ms)?;
        }
        txn.commit().map_err(db_err)
    }

    fn upsert_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.put(LEASES, &lease.id, lease)
    }

    fn remove_lease(&self, id: &str) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(LEASES).map_err(db_err)?.remove(id).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    fn leases(&self) -> StoreResult<Vec<Lease>> {
        self.all(LEASES)
    }

    fn upsert_api_session(&self, session: &ApiSession) -> StoreResult<()> {
        self.put(API_SESSIONS, &session.id, session)
    }

    fn api_session(&self, id: &str) -> StoreResult<Option<ApiSession>> {
        self.get(API_SESSIONS, id)
    }
}

#[cfg(test)]
#[path = "redb_store_tests.rs"]
mod tests;
