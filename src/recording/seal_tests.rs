//! Unit tests of `seal`.

use super::*;
use crate::store::RecordingKind;

#[tokio::test]
async fn sealed_recordings_verify_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(&dir.path().join("certs")).unwrap();
    let path = dir.path().join("r-abc.cast");
    let content = b"{\"version\":2}\n[0.1, \"o\", \"hi\"]\n";
    std::fs::write(&path, content).unwrap();
    let record = RecordingRecord {
        id: "r-abc".into(),
        session_id: "s-1".into(),
        kind: RecordingKind::Pty,
        user: "alice@example.test".into(),
        target: "vm1".into(),
        login: "admin".into(),
        file: "r-abc.cast".into(),
        started_ms: 1,
        ended_ms: Some(2),
        size: Some(content.len() as u64),
        sha256: Some(crate::secret::sha256_hex(content)),
        command: None,
        exit_status: None,
        bytes_from_client: 0,
        bytes_from_target: 2,
        note: None,
    };
    write_manifest(&keys, &path, &record).await.unwrap();
    assert_eq!(manifest_path(&path), dir.path().join("r-abc.manifest.json"));
    let m = verify(&path, keys.signing_public()).unwrap();
    assert_eq!(m.recording, "r-abc");

    std::fs::write(&path, b"{\"version\":2}\n[0.1, \"o\", \"ho\"]\n").unwrap();
    assert!(matches!(verify(&path, keys.signing_public()), Err(SealError::Altered { .. })));

    // Editing the manifest to match breaks its signature.
    let text = std::fs::read_to_string(manifest_path(&path)).unwrap();
    let forged = text.replace(
        &record.sha256.clone().unwrap(),
        &crate::secret::sha256_hex(b"{\"version\":2}\n[0.1, \"o\", \"ho\"]\n"),
    );
    std::fs::write(manifest_path(&path), forged).unwrap();
    assert!(matches!(verify(&path, keys.signing_public()), Err(SealError::Key(_))));

    let other = KeyMaterial::load_or_generate(&dir.path().join("other")).unwrap();
    assert!(matches!(verify(&path, other.signing_public()), Err(SealError::WrongSigner { .. })));
}
