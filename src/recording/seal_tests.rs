//! Unit tests of `seal`.

use super::*;
use crate::recording::chain::{ChainBuilder, header_line};
use crate::store::RecordingKind;

fn record(id: &str, content: &[u8]) -> RecordingRecord {
    RecordingRecord {
        id: id.into(),
        session_id: "s-1".into(),
        kind: RecordingKind::Pty,
        user: "alice@example.test".into(),
        target: "vm1".into(),
        login: "admin".into(),
        file: format!("{id}.cast"),
        started_ms: 1,
        ended_ms: Some(2),
        size: Some(content.len() as u64),
        sha256: Some(crate::secret::sha256_hex(content)),
        command: None,
        exit_status: None,
        bytes_from_client: 0,
        bytes_from_target: 2,
        note: None,
        chained: true,
    }
}

/// A recording, chain file and manifest as the writer leaves them.
fn sealed(dir: &Path, keys: &KeyMaterial, id: &str, parts: &[&[u8]]) -> PathBuf {
    let path = dir.join(format!("{id}.cast"));
    let mut content = Vec::new();
    let mut chain = header_line(id).into_bytes();
    let mut builder = ChainBuilder::default();
    for part in parts {
        content.extend_from_slice(part);
        builder.written(part);
        chain.extend_from_slice(builder.link().unwrap().as_bytes());
    }
    std::fs::write(&path, &content).unwrap();
    std::fs::write(chain_path(&path), &chain).unwrap();
    let manifest =
        Manifest::for_record(&record(id, &content), keys).with_chain(&builder.summary(), Some(chain_file_name(id)));
    write_manifest(keys, &path, manifest).unwrap();
    path
}

const PARTS: [&[u8]; 3] = [b"{\"version\":2}\n", b"[0.1, \"o\", \"hi\"]\n", b"[0.9, \"o\", \"there\"]\n"];

#[test]
fn sealed_recordings_verify_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap();
    let path = sealed(dir.path(), &keys, "r-abc", &PARTS);
    assert_eq!(manifest_path(&path), dir.path().join("r-abc.manifest.json"));
    let v = verify(&path, keys.signing_public()).unwrap();
    assert_eq!(v.manifest.recording, "r-abc");
    assert!(matches!(&v.chain, ChainVerdict::Sidecar(c) if c.summary.links == 3 && c.unverified_tail == 0));

    let original = std::fs::read(&path).unwrap();
    let edited = String::from_utf8(original.clone()).unwrap().replace("hi", "ho");
    std::fs::write(&path, &edited).unwrap();
    assert!(matches!(verify(&path, keys.signing_public()), Err(SealError::Altered { .. })));

    // Editing the manifest to match breaks its signature.
    let text = std::fs::read_to_string(manifest_path(&path)).unwrap();
    let forged = text.replace(&crate::secret::sha256_hex(&original), &crate::secret::sha256_hex(edited.as_bytes()));
    std::fs::write(manifest_path(&path), forged).unwrap();
    assert!(matches!(verify(&path, keys.signing_public()), Err(SealError::Key(_))));

    let other = KeyMaterial::load_or_generate(&dir.path().join("other")).unwrap();
    assert!(matches!(verify(&path, other.signing_public()), Err(SealError::WrongSigner { .. })));
}

#[test]
fn a_truncated_recording_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap();
    let path = sealed(dir.path(), &keys, "r-abc", &PARTS);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = verify(&path, keys.signing_public()).unwrap_err();
    assert!(matches!(err, SealError::Resized { .. }), "{err}");
}

#[test]
fn a_recording_swapped_with_another_ones_files_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap();
    let a = sealed(dir.path(), &keys, "r-aaa", &PARTS);
    let b = sealed(dir.path(), &keys, "r-bbb", &[b"{\"version\":2}\n", b"[0.1, \"o\", \"harmless\"]\n"]);
    // r-bbb's three files replaced by r-aaa's, each under r-bbb's name.
    for (from, to) in [(a.clone(), b.clone()), (manifest_path(&a), manifest_path(&b)), (chain_path(&a), chain_path(&b))]
    {
        std::fs::copy(from, to).unwrap();
    }
    let err = verify(&b, keys.signing_public()).unwrap_err();
    assert!(matches!(&err, SealError::Swapped { manifest_recording, .. } if manifest_recording == "r-aaa"), "{err}");
    assert!(err.to_string().contains("was swapped"), "{err}");
}

#[test]
fn a_cut_between_links_is_caught_even_with_a_matching_manifest_hash() {
    // The chain, not only the whole-file hash, must hold: a chain file from a
    // shorter, earlier state of the recording does not verify against it.
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap();
    let path = sealed(dir.path(), &keys, "r-abc", &PARTS);
    let chain = std::fs::read_to_string(chain_path(&path)).unwrap();
    let mut lines: Vec<&str> = chain.lines().collect();
    lines.remove(2); // the second link
    std::fs::write(chain_path(&path), lines.join("\n") + "\n").unwrap();
    let err = verify(&path, keys.signing_public()).unwrap_err();
    assert!(matches!(err, SealError::Chain { .. }), "{err}");
    std::fs::remove_file(chain_path(&path)).unwrap();
    assert!(matches!(verify(&path, keys.signing_public()), Err(SealError::ChainMissing { .. })));
}

#[test]
fn a_recording_sealed_before_chains_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap();
    let path = dir.path().join("r-old.cast");
    let content = b"{\"version\":2}\n[0.1, \"o\", \"hi\"]\n";
    std::fs::write(&path, content).unwrap();
    // The manifest as the previous version wrote it: no `chain`, no `interrupted`.
    let manifest = Manifest::for_record(&record("r-old", content), &keys);
    let text = String::from_utf8(signed_text(&manifest)).unwrap();
    assert!(!text.contains("chain") && !text.contains("interrupted"), "{text}");
    write_manifest(&keys, &path, manifest).unwrap();
    let v = verify(&path, keys.signing_public()).unwrap();
    assert_eq!(v.chain, ChainVerdict::None);
}

#[test]
fn a_missing_manifest_says_the_recording_is_not_sealed_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap();
    let path = dir.path().join("r-live.cast");
    std::fs::write(&path, b"{}").unwrap();
    let err = verify(&path, keys.signing_public()).unwrap_err();
    assert!(matches!(err, SealError::NotSealed { .. }));
    assert!(std::error::Error::source(&err).is_none());
    let text = crate::error_text::of(&err);
    assert_eq!(text.matches("no manifest").count(), 1, "{text}");
}
