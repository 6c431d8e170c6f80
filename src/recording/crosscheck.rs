//! Recordings against the index and the audit log: what `verify ID` and
//! `verify --all` add to a file's own proof (`seal::verify`). The index (the
//! store's recordings table) and each `recording.sealed` audit record name
//! the recording's session, person, target and SHA-256; a file swapped for
//! another one, a deleted file, or a file nobody indexed shows up as a
//! disagreement. The gateway gathers the evidence (`collect`, served on the
//! admin socket); the comparison is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::seal::{self, Manifest, SealError};
use crate::store::{AuditRecord, RecordingRecord, Store, StoreResult};

/// What the store says about one recording, or all of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Evidence {
    /// Index entries (one, or every recording).
    pub recordings: Vec<RecordingRecord>,
    /// `recording.sealed` audit records (of the one, or of every recording).
    pub seals: Vec<AuditRecord>,
    /// Whether the audit log's hash chain and signed head verify, and what `audit verify` says.
    pub audit_ok: bool,
    pub audit: String,
}

/// Gathers the evidence in the store. `recording`: one ID, or every recording.
pub fn collect(store: &dyn Store, recording: Option<&str>, signer: &russh::keys::PublicKey) -> StoreResult<Evidence> {
    let records = store.audit_records(1, usize::MAX)?;
    let head = store.audit_head()?;
    let (audit_ok, audit) = match crate::audit::verify(&records, head.as_ref(), signer) {
        Ok(v) => {
            (true, format!("{} audit records, chain intact, head {} signed by the gateway", v.records, v.head_hash))
        }
        Err(broken) => (false, format!("the audit log does not verify: {broken}")),
    };
    let seals = records
        .into_iter()
        .filter(|r| r.kind == "recording.sealed" && recording.is_none_or(|id| sealed_id(r) == Some(id)))
        .collect();
    let recordings = match recording {
        Some(id) => store.recording(id)?.into_iter().collect(),
        None => store.recordings(usize::MAX)?,
    };
    Ok(Evidence { recordings, seals, audit_ok, audit })
}

fn sealed_id(r: &AuditRecord) -> Option<&str> {
    r.details.get("recording").and_then(|v| v.as_str())
}

/// Where a verified manifest disagrees with the index and the audit log (nothing: they agree).
pub fn disagreements(m: &Manifest, index: Option<&RecordingRecord>, seals: &[&AuditRecord]) -> Vec<String> {
    let mut out = Vec::new();
    match index {
        None => out.push(format!("the index has no recording {} (its entry was removed)", m.recording)),
        Some(r) => {
            let size = r.size.unwrap_or(0);
            let sha = r.sha256.clone().unwrap_or_default();
            let kind = r.kind.to_string();
            for (what, index_value, manifest_value) in [
                ("session", r.session_id.as_str(), m.session.as_str()),
                ("user", r.user.as_str(), m.user.as_str()),
                ("target", r.target.as_str(), m.target.as_str()),
                ("login", r.login.as_str(), m.login.as_str()),
                ("kind", kind.as_str(), m.kind.as_str()),
                ("file", r.file.as_str(), m.file.as_str()),
                ("SHA-256", sha.as_str(), m.sha256.as_str()),
            ] {
                if index_value != manifest_value {
                    out.push(format!("the index says its {what} is {index_value}, the manifest {manifest_value}"));
                }
            }
            if size != m.size {
                out.push(format!("the index says it has {size} bytes, the manifest {}", m.size));
            }
            if r.ended_ms.is_none() {
                out.push("the index still lists it as being recorded".into());
            }
        }
    }
    match seals.iter().max_by_key(|s| s.seq) {
        None => out.push(format!("the audit log has no recording.sealed record for {}", m.recording)),
        Some(s) => {
            let text = |k: &str| s.details.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            if text("sha256") != m.sha256 {
                out.push(format!(
                    "audit record {} says its SHA-256 is {}, the manifest {}",
                    s.seq,
                    text("sha256"),
                    m.sha256
                ));
            }
            if s.details.get("size").and_then(|v| v.as_u64()) != Some(m.size) {
                out.push(format!("audit record {} gives another size than the manifest ({} bytes)", s.seq, m.size));
            }
            if text("session") != m.session {
                out.push(format!(
                    "audit record {} names session {}, the manifest {}",
                    s.seq,
                    text("session"),
                    m.session
                ));
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Ok,
    /// Sealed after a crash; what reached the disk verifies.
    Interrupted,
    /// Still being recorded.
    Live,
    /// The index or the audit log has it; the file (or its manifest) is gone.
    Missing,
    /// The file carries another recording's manifest or chain.
    Swapped,
    /// The file, its manifest or its chain do not verify.
    Altered,
    /// The file verifies, but the index or the audit log say otherwise.
    Mismatch,
    /// A file, or an audit seal, that the index does not know.
    Unindexed,
}

impl Verdict {
    pub fn is_problem(self) -> bool {
        !matches!(self, Verdict::Ok | Verdict::Interrupted | Verdict::Live)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Interrupted => "interrupted",
            Verdict::Live => "live",
            Verdict::Missing => "MISSING",
            Verdict::Swapped => "SWAPPED",
            Verdict::Altered => "ALTERED",
            Verdict::Mismatch => "MISMATCH",
            Verdict::Unindexed => "UNINDEXED",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub recording: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// The verdict on a file's own proof.
pub fn classify(error: &SealError) -> Verdict {
    match error {
        SealError::Swapped { .. } => Verdict::Swapped,
        SealError::Chain { error: super::chain::ChainError::OtherRecording { .. }, .. } => Verdict::Swapped,
        SealError::NotSealed { .. } => Verdict::Missing,
        _ => Verdict::Altered,
    }
}

/// Every recording the index, the audit log or the directory knows, checked.
pub fn check_all(dir: &Path, evidence: &Evidence, trusted: &russh::keys::PublicKey) -> Vec<Finding> {
    let mut seals: BTreeMap<&str, Vec<&AuditRecord>> = BTreeMap::new();
    for s in &evidence.seals {
        if let Some(id) = sealed_id(s) {
            seals.entry(id).or_default().push(s);
        }
    }
    let indexed: BTreeMap<&str, &RecordingRecord> = evidence.recordings.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut findings = Vec::new();
    let finding = |recording: &str, verdict, detail: String| Finding { recording: recording.into(), verdict, detail };
    for (id, r) in &indexed {
        let its_seals = seals.get(id).cloned().unwrap_or_default();
        let file = Path::new(&r.file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = dir.join(&file);
        if !path.is_file() {
            let known = if its_seals.is_empty() { "the index lists it" } else { "the index and the audit log list it" };
            findings.push(finding(id, Verdict::Missing, format!("{file} is gone; {known}")));
            continue;
        }
        if r.ended_ms.is_none() {
            findings.push(finding(id, Verdict::Live, "being recorded".into()));
            continue;
        }
        match seal::verify(&path, trusted) {
            Err(e) => findings.push(finding(id, classify(&e), e.to_string())),
            Ok(v) => {
                let problems = disagreements(&v.manifest, Some(r), &its_seals);
                if !problems.is_empty() {
                    findings.push(finding(id, Verdict::Mismatch, problems.join("; ")));
                } else if let Some(i) = &v.manifest.interrupted {
                    findings.push(finding(id, Verdict::Interrupted, i.reason.clone()));
                } else {
                    findings.push(finding(
                        id,
                        Verdict::Ok,
                        format!("{} bytes, sha256 {}", v.manifest.size, v.manifest.sha256),
                    ));
                }
            }
        }
    }
    for (id, s) in &seals {
        if indexed.contains_key(id) {
            continue;
        }
        let Some(last) = s.iter().max_by_key(|s| s.seq) else { continue };
        let file = last.details.get("file").and_then(|v| v.as_str()).unwrap_or_default();
        let on_disk = !file.is_empty() && !file.contains('/') && dir.join(file).is_file();
        let detail = if on_disk {
            format!("audit record {} sealed it and {file} is there, but the index has no entry", last.seq)
        } else {
            format!("audit record {} sealed it; the index entry and the file are gone", last.seq)
        };
        findings.push(finding(id, if on_disk { Verdict::Unindexed } else { Verdict::Missing }, detail));
    }
    let mut strangers = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = seal::id_of(&name);
            if !indexed.contains_key(id) && !seals.contains_key(id) {
                strangers.insert(id.to_string());
            }
        }
    }
    for id in strangers {
        findings.push(finding(
            &id,
            Verdict::Unindexed,
            "files in the recordings directory that neither the index nor the audit log know".into(),
        ));
    }
    findings
}

#[cfg(test)]
#[path = "crosscheck_tests.rs"]
mod tests;
