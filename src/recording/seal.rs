//! Sealing: at the end of a recording the gateway writes `<id>.manifest.json`
//! beside it, holding the file's size and SHA-256 and an SSHSIG signature by
//! the gateway's signing key over the rest of the manifest. `verify` proves a
//! recording was not altered; `ssh-keygen -Y verify` can check the same
//! signature without our tools (the signed bytes are `signed_text`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{KeyMaterial, verify_signature};
use crate::store::RecordingRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub recording: String,
    pub session: String,
    pub kind: String,
    pub file: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub size: u64,
    pub sha256: String,
    pub note: Option<String>,
    /// The signing key's public half (`ssh-ed25519 AAAA...`).
    pub signer: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignedManifest {
    manifest: Manifest,
    /// SSHSIG over `signed_text(manifest)`, namespace `jit-gateway@audit`.
    signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a manifest: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("{file} was altered: its SHA-256 is {actual}, the manifest says {expected}")]
    Altered { file: String, expected: String, actual: String },
    #[error("{file} was altered: its size is {actual} bytes, the manifest says {expected}")]
    Resized { file: String, expected: u64, actual: u64 },
    #[error("the manifest is signed by {found}, not by this gateway's signing key {expected}")]
    WrongSigner { found: String, expected: String },
}

/// The bytes the signature covers: the manifest as canonical JSON.
pub fn signed_text(manifest: &Manifest) -> Vec<u8> {
    // serde_json::Value maps are sorted, so this is stable across versions.
    serde_json::to_value(manifest).map(|v| v.to_string().into_bytes()).unwrap_or_default()
}

pub fn manifest_path(recording: &Path) -> PathBuf {
    let name = recording.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id = name.split('.').next().unwrap_or_default();
    recording.with_file_name(format!("{id}.manifest.json"))
}

pub async fn write_manifest(keys: &KeyMaterial, recording: &Path, record: &RecordingRecord) -> Result<(), SealError> {
    let manifest = Manifest {
        recording: record.id.clone(),
        session: record.session_id.clone(),
        kind: record.kind.to_string(),
        file: record.file.clone(),
        user: record.user.clone(),
        target: record.target.clone(),
        login: record.login.clone(),
        started_ms: record.started_ms,
        ended_ms: record.ended_ms,
        size: record.size.unwrap_or(0),
        sha256: record.sha256.clone().unwrap_or_default(),
        note: record.note.clone(),
        signer: crate::keys::openssh_line(keys.signing_public()),
    };
    let signature = keys.sign(&signed_text(&manifest))?;
    let text = serde_json::to_string_pretty(&SignedManifest { manifest, signature }).unwrap_or_default();
    let path = manifest_path(recording);
    let write = |path: &Path| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write(&path).map_err(|source| SealError::Io { path, source })
}

/// Checks a recording against its manifest and the manifest's signature.
/// `trusted` is the signing key the manifest must be signed with.
pub fn verify(recording: &Path, trusted: &russh::keys::PublicKey) -> Result<Manifest, SealError> {
    let path = manifest_path(recording);
    let text = std::fs::read_to_string(&path).map_err(|source| SealError::Io { path: path.clone(), source })?;
    let signed: SignedManifest =
        serde_json::from_str(&text).map_err(|e| SealError::Format { path: path.clone(), message: e.to_string() })?;
    let expected = crate::keys::openssh_line(trusted);
    if signed.manifest.signer != expected {
        return Err(SealError::WrongSigner { found: signed.manifest.signer.clone(), expected });
    }
    verify_signature(trusted, &signed_text(&signed.manifest), &signed.signature)?;
    let bytes = std::fs::read(recording).map_err(|source| SealError::Io { path: recording.to_path_buf(), source })?;
    let m = signed.manifest;
    if bytes.len() as u64 != m.size {
        return Err(SealError::Resized { file: m.file.clone(), expected: m.size, actual: bytes.len() as u64 });
    }
    let actual = crate::secret::sha256_hex(&bytes);
    if actual != m.sha256 {
        return Err(SealError::Altered { file: m.file.clone(), expected: m.sha256.clone(), actual });
    }
    Ok(m)
}

#[cfg(test)]
#[path = "seal_tests.rs"]
mod tests;
