//! Sealing: at the end of a recording the gateway writes `<id>.manifest.json`
//! beside it, holding the file's size and SHA-256, the head of its per-flush
//! hash chain and, for a recording sealed after a crash, why it was
//! interrupted, with an SSHSIG signature by the gateway's signing key over the
//! rest of the manifest. `verify` proves a recording was not altered, cut or
//! swapped for another; `ssh-keygen -Y verify` can check the same signature
//! without our tools (the signed bytes are `signed_text`).
//!
//! `check` is pure (bytes in, verdict out) so it can be fuzzed; `verify`
//! reads the files and calls it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::{self, ChainError, ChainSummary};
use super::rdp_format;
use crate::keys::{KeyMaterial, verify_signature};
use crate::store::RecordingRecord;

/// A manifest file larger than this is not a manifest.
const MAX_MANIFEST: usize = 1 << 20;

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
    /// The per-flush hash chain's head. Absent in manifests sealed before chains existed
    /// (and then absent from the signed text, so their signatures still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ManifestChain>,
    /// Set when the gateway stopped before the recording ended (sealed at the next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interrupted>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestChain {
    pub links: u64,
    /// Bytes of the recording covered by the last link.
    pub covered: u64,
    /// The last link, hex (RDP: the links are inside the recording, and this is empty).
    pub head: String,
    /// The chain file beside the recording (`r-<id>.chain`); none for RDP, whose links are inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interrupted {
    pub reason: String,
    /// When the gateway found the recording open (at its next start).
    pub found_ms: i64,
    /// Bytes after the last chain link: on the disk and sealed, but not covered by a link.
    pub unverified_tail: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignedManifest {
    manifest: Manifest,
    /// SSHSIG over `signed_text(manifest)`, namespace `jit-gateway@audit`.
    signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    // The cause is in the message; it is not also a `source`, or `{:#}` would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "{file} is not sealed: it has no manifest (it is still being recorded, or the gateway stopped before sealing it and has not started since; a restarted gateway seals it as interrupted)"
    )]
    NotSealed { file: String },
    #[error("{path}: not a manifest: {message}")]
    Format { path: PathBuf, message: String },
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error("{file} was altered: its SHA-256 is {actual}, the manifest says {expected}")]
    Altered { file: String, expected: String, actual: String },
    #[error("{file} was altered: its size is {actual} bytes, the manifest says {expected}")]
    Resized { file: String, expected: u64, actual: u64 },
    #[error("the manifest is signed by {found}, not by this gateway's signing key {expected}")]
    WrongSigner { found: String, expected: String },
    #[error("{file} was swapped: its manifest is the one of {manifest_file} (recording {manifest_recording})")]
    Swapped { file: String, manifest_file: String, manifest_recording: String },
    #[error("{file}: {error}")]
    Chain { file: String, error: ChainError },
    #[error("{file}: {error}")]
    Rdp { file: String, error: rdp_format::ReadError },
    #[error("{file}: the chain file is missing (the manifest names {chain})")]
    ChainMissing { file: String, chain: String },
    #[error("{file}: the hash chain does not end where the manifest says ({found}; the manifest says {expected})")]
    ChainMismatch { file: String, found: String, expected: String },
}

/// The bytes the signature covers: the manifest as canonical JSON.
pub fn signed_text(manifest: &Manifest) -> Vec<u8> {
    // serde_json::Value maps are sorted, so this is stable across versions.
    serde_json::to_value(manifest).map(|v| v.to_string().into_bytes()).unwrap_or_default()
}

/// The recording ID a file name starts with (`r-abc.cast` -> `r-abc`).
pub fn id_of(file_name: &str) -> &str {
    file_name.split('.').next().unwrap_or_default()
}

pub fn manifest_path(recording: &Path) -> PathBuf {
    let name = recording.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    recording.with_file_name(format!("{}.manifest.json", id_of(&name)))
}

/// The chain file of a terminal, exec or sftp recording.
pub fn chain_path(recording: &Path) -> PathBuf {
    let name = recording.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    recording.with_file_name(chain_file_name(id_of(&name)))
}

pub fn chain_file_name(id: &str) -> String {
    format!("{id}.chain")
}

impl Manifest {
    /// The manifest of a recording as the index describes it.
    pub fn for_record(record: &RecordingRecord, keys: &KeyMaterial) -> Manifest {
        Manifest {
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
            chain: None,
            interrupted: None,
        }
    }

    pub fn with_chain(mut self, summary: &ChainSummary, file: Option<String>) -> Manifest {
        self.chain =
            Some(ManifestChain { links: summary.links, covered: summary.covered, head: summary.head.clone(), file });
        self
    }
}

/// Signs `manifest` and writes it beside `recording` (0600, fsynced).
pub fn write_manifest(keys: &KeyMaterial, recording: &Path, manifest: Manifest) -> Result<(), SealError> {
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
    write(&path).map_err(|error| SealError::Io { path, error })
}

/// What a verified recording's chain showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Terminal, exec and sftp recordings: the chain file.
    Sidecar(chain::Checked),
    /// RDP recordings: links inside the file.
    Inline { links: u64, records: usize, unverified_tail: u64 },
    /// Sealed before recordings had a per-flush chain: the signed SHA-256 alone proves the file.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub manifest: Manifest,
    pub chain: ChainVerdict,
}

/// Checks a recording against its manifest and the manifest's signature, its
/// name against the manifest's, and its hash chain. `file_name` is the
/// recording's own name; `chain_file` the chain file's bytes, when there is
/// one. `trusted` is the signing key the manifest must be signed with. Pure.
pub fn check(
    file_name: &str,
    manifest_text: &[u8],
    recording: &[u8],
    chain_file: Option<&[u8]>,
    trusted: &russh::keys::PublicKey,
) -> Result<Verified, SealError> {
    let manifest_name = format!("{}.manifest.json", id_of(file_name));
    let format_err = |message: String| SealError::Format { path: PathBuf::from(&manifest_name), message };
    if manifest_text.len() > MAX_MANIFEST {
        return Err(format_err("too large".into()));
    }
    let signed: SignedManifest = serde_json::from_slice(manifest_text).map_err(|e| format_err(e.to_string()))?;
    let expected = crate::keys::openssh_line(trusted);
    if signed.manifest.signer != expected {
        return Err(SealError::WrongSigner { found: signed.manifest.signer.clone(), expected });
    }
    verify_signature(trusted, &signed_text(&signed.manifest), &signed.signature)?;
    let m = signed.manifest;
    if m.file != file_name || m.recording != id_of(file_name) {
        return Err(SealError::Swapped {
            file: file_name.to_string(),
            manifest_file: m.file.clone(),
            manifest_recording: m.recording.clone(),
        });
    }
    if recording.len() as u64 != m.size {
        return Err(SealError::Resized { file: m.file.clone(), expected: m.size, actual: recording.len() as u64 });
    }
    let actual = crate::secret::sha256_hex(recording);
    if actual != m.sha256 {
        return Err(SealError::Altered { file: m.file.clone(), expected: m.sha256.clone(), actual });
    }
    let chain = check_chain(&m, recording, chain_file)?;
    Ok(Verified { manifest: m, chain })
}

fn check_chain(m: &Manifest, recording: &[u8], chain_file: Option<&[u8]>) -> Result<ChainVerdict, SealError> {
    let file = m.file.clone();
    let mismatch = |found: String, expected: String| SealError::ChainMismatch { file: file.clone(), found, expected };
    let inline = m.kind == "rdp";
    match (&m.chain, inline) {
        (None, false) => Ok(ChainVerdict::None),
        (Some(c), false) => {
            let name = c.file.clone().unwrap_or_else(|| chain_file_name(&m.recording));
            let bytes = chain_file.ok_or_else(|| SealError::ChainMissing { file: file.clone(), chain: name })?;
            let checked = chain::check(bytes, recording, &m.recording)
                .map_err(|error| SealError::Chain { file: file.clone(), error })?;
            let s = &checked.summary;
            if (s.links, s.covered, s.head.as_str()) != (c.links, c.covered, c.head.as_str()) {
                return Err(mismatch(
                    format!("{} links over {} bytes", s.links, s.covered),
                    format!("{} links over {} bytes", c.links, c.covered),
                ));
            }
            Ok(ChainVerdict::Sidecar(checked))
        }
        (c, true) => {
            let parsed = rdp_format::read(recording).map_err(|error| SealError::Rdp { file: file.clone(), error })?;
            let links = parsed.links as u64;
            let covered = (recording.len() - parsed.unverified_tail) as u64;
            if let Some(c) = c
                && (c.links, c.covered) != (links, covered)
            {
                return Err(mismatch(
                    format!("{links} links over {covered} bytes"),
                    format!("{} links over {} bytes", c.links, c.covered),
                ));
            }
            Ok(ChainVerdict::Inline {
                links,
                records: parsed.records.len(),
                unverified_tail: parsed.unverified_tail as u64,
            })
        }
    }
}

/// Reads a recording, its manifest and chain file, and `check`s them.
pub fn verify(recording: &Path, trusted: &russh::keys::PublicKey) -> Result<Verified, SealError> {
    let name = recording.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = manifest_path(recording);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SealError::NotSealed { file: name }),
        Err(error) => return Err(SealError::Io { path, error }),
    };
    let bytes = std::fs::read(recording).map_err(|error| SealError::Io { path: recording.to_path_buf(), error })?;
    let chain_path = chain_path(recording);
    let chain = match std::fs::read(&chain_path) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(SealError::Io { path: chain_path, error }),
    };
    check(&name, &text, &bytes, chain.as_deref(), trusted)
}

#[cfg(test)]
#[path = "seal_tests.rs"]
mod tests;
