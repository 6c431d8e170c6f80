//! After a crash: recordings the index still lists as open were cut when the
//! gateway died. At the next start, before anything is served, the gateway
//! takes the list of them; then, in the background, it seals each one as
//! *interrupted*: what reached the disk, its size and SHA-256, how far its
//! hash chain goes, and why, in a signed manifest, the index and a
//! `recording.sealed` audit record. It never changes a recording's bytes.
//!
//! A chain that is already broken (the file was altered while the gateway was
//! down) is sealed as broken, so `verify` keeps failing on it.

use std::path::Path;
use std::sync::Arc;

use super::chain;
use super::seal::{self, Interrupted, Manifest, ManifestChain};
use super::{RecordingService, rdp_format, writer};
use crate::keys::KeyMaterial;
use crate::store::{RecordingKind, RecordingRecord, SharedStore, blocking};

/// Why an interrupted recording was sealed late.
pub const REASON: &str = "the gateway stopped before the recording ended (found open at the next start)";

/// The recordings a previous run left open. Call before serving: after that, open ones are live.
pub async fn left_open(store: &SharedStore) -> Vec<RecordingRecord> {
    match blocking(store, |s| s.recordings(usize::MAX)).await {
        Ok(all) => all.into_iter().filter(|r| r.ended_ms.is_none()).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot list recordings left open by a crash");
            Vec::new()
        }
    }
}

/// Seals each recording as interrupted (see the module comment).
pub async fn seal_interrupted(service: Arc<RecordingService>, records: Vec<RecordingRecord>) {
    for record in records {
        let id = record.id.clone();
        let (dir, keys, now) = (service.config.dir.clone(), Arc::clone(&service.keys), service.clock.now_ms());
        let examined = tokio::task::spawn_blocking(move || examine(&dir, &keys, record, now)).await;
        let Ok((record, interrupted)) = examined else {
            tracing::error!(recording = %id, "cannot examine an interrupted recording");
            continue;
        };
        let audit = writer::seal_audit(&record, interrupted.as_ref());
        let sealed = record.clone();
        match blocking(&service.store, move |s| s.seal_recording(&sealed, &audit, now)).await {
            Ok(()) => tracing::warn!(recording = %id, note = ?record.note, "sealed a recording left open by a crash"),
            Err(e) => tracing::error!(recording = %id, error = %e, "cannot index an interrupted recording"),
        }
    }
}

/// Reads what reached the disk and writes the manifest. Returns the index
/// entry to store and, unless the recording had in fact been sealed, why it
/// was interrupted.
fn examine(
    dir: &Path,
    keys: &KeyMaterial,
    mut record: RecordingRecord,
    now: i64,
) -> (RecordingRecord, Option<Interrupted>) {
    // The index names a file in the recordings directory, never a path.
    let name = Path::new(&record.file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = dir.join(&name);
    // Sealed, but the gateway died before the index heard of it: the manifest says it all.
    if let Ok(verified) = seal::verify(&path, keys.signing_public()) {
        let m = verified.manifest;
        if m.interrupted.is_none() {
            record.ended_ms = m.ended_ms;
            record.size = Some(m.size);
            record.sha256 = Some(m.sha256);
            record.note = m.note;
            return (record, None);
        }
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            record.ended_ms = Some(now);
            record.note = Some(format!("interrupted: {REASON}; the recording file cannot be read: {e}"));
            let interrupted = Interrupted { reason: REASON.into(), found_ms: now, unverified_tail: 0 };
            return (record, Some(interrupted));
        }
    };
    let last_write = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    let (manifest_chain, unverified_tail, chain_text) = if !record.chained && record.kind != RecordingKind::Rdp {
        (None, 0, "no chain: recorded before recordings had a per-flush hash chain".to_string())
    } else {
        match chain_on_disk(&path, &record, &bytes) {
            Ok((c, tail)) => {
                let text = format!("{} chain links cover {} of {} bytes", c.links, c.covered, bytes.len());
                (Some(c), tail, text)
            }
            Err((broken, e)) => (Some(broken), 0, format!("the hash chain was already broken when found: {e}")),
        }
    };
    record.ended_ms = Some(last_write.unwrap_or(now).clamp(record.started_ms, now.max(record.started_ms)));
    record.size = Some(bytes.len() as u64);
    record.sha256 = Some(crate::secret::sha256_hex(&bytes));
    record.note = Some(format!("interrupted: {REASON}; {chain_text}"));
    let interrupted = Interrupted { reason: REASON.into(), found_ms: now, unverified_tail };
    let mut manifest = Manifest::for_record(&record, keys);
    manifest.chain = manifest_chain;
    manifest.interrupted = Some(interrupted.clone());
    if let Err(e) = seal::write_manifest(keys, &path, manifest) {
        tracing::error!(recording = %record.id, error = %e, "cannot seal an interrupted recording");
    }
    (record, Some(interrupted))
}

type ChainFound = Result<(ManifestChain, u64), (ManifestChain, String)>;

/// How far the recording's chain goes; on error, a chain entry that `verify` will refuse and why.
fn chain_on_disk(path: &Path, record: &RecordingRecord, bytes: &[u8]) -> ChainFound {
    if record.kind == RecordingKind::Rdp {
        let broken = ManifestChain { links: 0, covered: 0, head: String::new(), file: None };
        return match rdp_format::read(bytes) {
            Ok(parsed) => {
                let covered = (bytes.len() - parsed.unverified_tail) as u64;
                let c = ManifestChain { links: parsed.links as u64, covered, head: String::new(), file: None };
                Ok((c, parsed.unverified_tail as u64))
            }
            Err(e) => Err((broken, e.to_string())),
        };
    }
    let file = seal::chain_file_name(&record.id);
    let broken = ManifestChain { links: 0, covered: 0, head: String::new(), file: Some(file.clone()) };
    let text = match std::fs::read(seal::chain_path(path)) {
        Ok(t) => t,
        Err(e) => return Err((broken, format!("{file}: {e}"))),
    };
    match chain::check(&text, bytes, &record.id) {
        Ok(checked) => {
            let s = checked.summary;
            Ok((
                ManifestChain { links: s.links, covered: s.covered, head: s.head, file: Some(file) },
                checked.unverified_tail,
            ))
        }
        Err(e) => Err((broken, e.to_string())),
    }
}
