//! Unit tests of `crosscheck` and `recovery`, against real files written by
//! the recording service and a real store.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::clock::SystemClock;
use crate::config::RecordingConfig;
use crate::keys::KeyMaterial;
use crate::recording::chain::{ChainBuilder, header_line};
use crate::recording::{RecordingMeta, RecordingService, Stream};
use crate::store::{RecordingKind, RedbStore, SharedStore};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    keys: Arc<KeyMaterial>,
    store: SharedStore,
    service: Arc<RecordingService>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyMaterial::load_or_generate(&tmp.path().join("certs")).unwrap());
    let signer = Arc::clone(&keys);
    let store: SharedStore = Arc::new(
        RedbStore::open(&tmp.path().join("gateway.redb"))
            .unwrap()
            .with_head_signer(Box::new(move |d| signer.sign(d).map_err(|e| e.to_string()))),
    );
    let dir = tmp.path().join("recordings");
    let config = RecordingConfig { dir: dir.clone(), ..Default::default() };
    let service =
        Arc::new(RecordingService::new(config, Arc::clone(&store), Arc::clone(&keys), Arc::new(SystemClock)).unwrap());
    Fixture { _tmp: tmp, dir, keys, store, service }
}

fn meta(kind: RecordingKind, session: &str) -> RecordingMeta {
    RecordingMeta {
        session_id: session.into(),
        user: "alice@example.test".into(),
        target: "vm1".into(),
        login: "admin".into(),
        kind,
        command: (kind == RecordingKind::Exec).then(|| "uname -a".into()),
        term: None,
        cols: 80,
        rows: 24,
        input_recorded: false,
    }
}

/// Records one channel per kind through the real writer and waits until they are sealed.
async fn one_of_each_kind(f: &Fixture) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, kind) in
        [RecordingKind::Pty, RecordingKind::Exec, RecordingKind::Sftp, RecordingKind::Rdp].into_iter().enumerate()
    {
        let recorder = f.service.start(meta(kind, &format!("s-{i}"))).await.unwrap();
        for n in 0..3 {
            recorder.data(Stream::Output, &Bytes::from(format!("output {n} of {kind}\r\n"))).await.unwrap();
        }
        ids.push(recorder.id().to_string());
    }
    f.service.drain().await;
    ids
}

fn evidence(f: &Fixture) -> Evidence {
    collect(f.store.as_ref(), None, f.keys.signing_public()).unwrap()
}

fn verdicts(f: &Fixture) -> Vec<(String, Verdict)> {
    check_all(&f.dir, &evidence(f), f.keys.signing_public()).into_iter().map(|x| (x.recording, x.verdict)).collect()
}

fn file_of(f: &Fixture, id: &str) -> std::path::PathBuf {
    let r = f.store.recording(id).unwrap().unwrap();
    f.dir.join(r.file)
}

#[tokio::test]
async fn an_untouched_set_passes_and_each_recording_agrees_with_the_index_and_audit() {
    let f = fixture();
    let ids = one_of_each_kind(&f).await;
    let e = evidence(&f);
    assert!(e.audit_ok, "{}", e.audit);
    assert_eq!(e.seals.len(), 4);
    let found = verdicts(&f);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found.iter().all(|(_, v)| *v == Verdict::Ok), "{found:?}");
    for id in &ids {
        let v = seal::verify(&file_of(&f, id), f.keys.signing_public()).unwrap();
        let rdp = v.manifest.kind == "rdp";
        assert!(
            matches!(v.chain, seal::ChainVerdict::Sidecar(_) if !rdp)
                || matches!(v.chain, seal::ChainVerdict::Inline { links: 1.., unverified_tail: 0, .. } if rdp),
            "{id}: {:?}",
            v.chain
        );
        assert!(
            v.manifest.chain.as_ref().is_some_and(|c| (c.links >= 1 || c.covered == 0) && c.covered == v.manifest.size),
            "{v:?}"
        );
        let one = collect(f.store.as_ref(), Some(id), f.keys.signing_public()).unwrap();
        let seals: Vec<&AuditRecord> = one.seals.iter().collect();
        assert_eq!(disagreements(&v.manifest, one.recordings.first(), &seals), Vec::<String>::new());
    }
}

#[tokio::test]
async fn deleted_swapped_altered_and_stray_recordings_are_reported() {
    let f = fixture();
    let ids = one_of_each_kind(&f).await;
    let (pty, exec, sftp) = (file_of(&f, &ids[0]), file_of(&f, &ids[1]), file_of(&f, &ids[2]));
    // Swapped: the sftp recording's files replaced by copies of the terminal recording's, renamed.
    std::fs::copy(&pty, &sftp).unwrap();
    std::fs::copy(seal::manifest_path(&pty), seal::manifest_path(&sftp)).unwrap();
    std::fs::copy(seal::chain_path(&pty), seal::chain_path(&sftp)).unwrap();
    // Deleted: the terminal recording and its manifest.
    std::fs::remove_file(&pty).unwrap();
    std::fs::remove_file(seal::manifest_path(&pty)).unwrap();
    // Altered: one byte of the exec recording.
    let mut bytes = std::fs::read(&exec).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&exec, bytes).unwrap();
    // A stray file nobody indexed.
    std::fs::write(f.dir.join("r-stranger.cast"), b"{}\n").unwrap();

    let found = verdicts(&f);
    let verdict = |id: &str| found.iter().find(|(r, _)| r == id).map(|(_, v)| *v);
    assert_eq!(verdict(&ids[0]), Some(Verdict::Missing), "{found:?}");
    assert_eq!(verdict(&ids[1]), Some(Verdict::Altered), "{found:?}");
    assert_eq!(verdict(&ids[2]), Some(Verdict::Swapped), "{found:?}");
    assert_eq!(verdict(&ids[3]), Some(Verdict::Ok), "{found:?}");
    assert_eq!(verdict("r-stranger"), Some(Verdict::Unindexed), "{found:?}");
}

#[tokio::test]
async fn a_recording_left_open_is_sealed_as_interrupted_with_what_reached_the_disk() {
    let f = fixture();
    // What a kill -9 leaves: a recording with two linked flushes and an unlinked tail, indexed as live.
    let recorder = f.service.start(meta(RecordingKind::Pty, "s-crash")).await.unwrap();
    let id = recorder.id().to_string();
    drop(recorder);
    f.service.drain().await;
    let mut record = f.store.recording(&id).unwrap().unwrap();
    let path = f.dir.join(&record.file);
    for p in [&path, &seal::manifest_path(&path), &seal::chain_path(&path)] {
        std::fs::remove_file(p).unwrap();
    }
    let mut content = Vec::new();
    let mut chain = header_line(&id).into_bytes();
    let mut builder = ChainBuilder::default();
    for part in [&b"{\"version\": 2, \"width\": 80, \"height\": 24}\n"[..], b"[0.5, \"o\", \"before the crash\"]\n"] {
        content.extend_from_slice(part);
        builder.written(part);
        chain.extend_from_slice(builder.link().unwrap().as_bytes());
    }
    content.extend_from_slice(b"[0.9, \"o\", \"never linked\"]\n");
    std::fs::write(&path, &content).unwrap();
    std::fs::write(seal::chain_path(&path), &chain).unwrap();
    (record.ended_ms, record.size, record.sha256) = (None, None, None);
    f.store.upsert_recording(&record).unwrap();

    let open = super::super::recovery::left_open(&f.store).await;
    assert_eq!(open.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec![id.as_str()]);
    super::super::recovery::seal_interrupted(Arc::clone(&f.service), open).await;

    let v = seal::verify(&path, f.keys.signing_public()).unwrap();
    let interrupted = v.manifest.interrupted.clone().expect("sealed as interrupted");
    assert_eq!(interrupted.unverified_tail, 27);
    assert_eq!(v.manifest.size, content.len() as u64);
    assert!(matches!(&v.chain, seal::ChainVerdict::Sidecar(c) if c.summary.links == 2));
    assert_eq!(std::fs::read(&path).unwrap(), content, "recovery never changes a recording's bytes");
    let record = f.store.recording(&id).unwrap().unwrap();
    assert!(record.ended_ms.is_some() && record.note.as_deref().unwrap_or("").starts_with("interrupted"));
    let found = verdicts(&f);
    assert_eq!(found, vec![(id.clone(), Verdict::Interrupted)]);
    let e = evidence(&f);
    let seal = e.seals.iter().rev().find(|s| s.details["recording"] == id.as_str()).unwrap();
    assert_eq!(seal.details["interrupted"], true);
    assert_eq!(seal.details["sha256"], v.manifest.sha256.as_str());
}

#[tokio::test]
async fn a_chain_broken_before_recovery_stays_refused() {
    let f = fixture();
    let recorder = f.service.start(meta(RecordingKind::Pty, "s-x")).await.unwrap();
    let id = recorder.id().to_string();
    recorder.data(Stream::Output, &Bytes::from_static(b"rm -rf evidence\r\n")).await.unwrap();
    drop(recorder);
    f.service.drain().await;
    let mut record = f.store.recording(&id).unwrap().unwrap();
    let path = f.dir.join(&record.file);
    std::fs::remove_file(seal::manifest_path(&path)).unwrap();
    // Edited while the gateway was down, before it could seal it.
    let text = std::fs::read_to_string(&path).unwrap().replace("rm -rf evidence", "ls -l harmless");
    std::fs::write(&path, text).unwrap();
    record.ended_ms = None;
    f.store.upsert_recording(&record).unwrap();
    let open = super::super::recovery::left_open(&f.store).await;
    super::super::recovery::seal_interrupted(Arc::clone(&f.service), open).await;
    let err = seal::verify(&path, f.keys.signing_public()).unwrap_err();
    assert!(matches!(err, SealError::Chain { .. }), "{err}");
    assert_eq!(verdicts(&f), vec![(id, Verdict::Altered)]);
}

#[tokio::test]
async fn a_recording_from_before_chains_left_open_is_sealed_without_one() {
    let f = fixture();
    let recorder = f.service.start(meta(RecordingKind::Pty, "s-old")).await.unwrap();
    let id = recorder.id().to_string();
    recorder.data(Stream::Output, &Bytes::from_static(b"made by an older gateway\r\n")).await.unwrap();
    drop(recorder);
    f.service.drain().await;
    // What an older gateway leaves after a crash: no chain file, no manifest, an index entry without `chained`.
    let mut record = f.store.recording(&id).unwrap().unwrap();
    let path = f.dir.join(&record.file);
    std::fs::remove_file(seal::manifest_path(&path)).unwrap();
    std::fs::remove_file(seal::chain_path(&path)).unwrap();
    (record.ended_ms, record.chained) = (None, false);
    f.store.upsert_recording(&record).unwrap();
    let open = super::super::recovery::left_open(&f.store).await;
    super::super::recovery::seal_interrupted(Arc::clone(&f.service), open).await;
    let v = seal::verify(&path, f.keys.signing_public()).unwrap();
    assert_eq!(v.chain, seal::ChainVerdict::None);
    assert!(v.manifest.interrupted.is_some());
    assert_eq!(verdicts(&f), vec![(id, Verdict::Interrupted)]);
}

#[tokio::test]
async fn a_recording_removed_from_the_index_is_found_through_its_audit_seal() {
    let f = fixture();
    let ids = one_of_each_kind(&f).await;
    // The index as someone with write access to the store would leave it: two entries gone.
    let mut e = evidence(&f);
    e.recordings.retain(|r| r.id != ids[0] && r.id != ids[1]);
    let pty = f.dir.join(format!("{}.cast", ids[0]));
    for p in [pty.clone(), seal::manifest_path(&pty), seal::chain_path(&pty)] {
        std::fs::remove_file(p).unwrap();
    }
    let found = check_all(&f.dir, &e, f.keys.signing_public());
    let verdict = |id: &str| found.iter().find(|x| x.recording == id).map(|x| x.verdict);
    assert_eq!(verdict(&ids[0]), Some(Verdict::Missing), "{found:?}");
    assert_eq!(verdict(&ids[1]), Some(Verdict::Unindexed), "{found:?}");
    assert_eq!(found.iter().filter(|x| x.verdict.is_problem()).count(), 2, "{found:?}");
}
