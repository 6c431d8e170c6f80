//! What recordings keep, that they replay (ours and asciinema), that they
//! verify, and that a session whose recording fails ends.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use jit_gateway::recording::asciicast;
use jit_gateway::recording::exec_format::{Decoder, ExecHeader, ExecTrailer, Kind};
use jit_gateway::store::{RecordingKind, RecordingRecord, blocking};

use crate::World;
use crate::sessions::{Tmux, interactive};
use crate::support::{self, eventually, text};

async fn sealed_recordings(w: &World, kind: RecordingKind, count: usize) -> Vec<RecordingRecord> {
    let store = std::sync::Arc::clone(&w.gw.gateway.store);
    let mut found = Vec::new();
    for _ in 0..100 {
        let all = blocking(&store, |s| s.recordings(1000)).await.unwrap();
        found = all.into_iter().filter(|r| r.kind == kind && r.sha256.is_some()).collect();
        if found.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found.len() >= count, "{count} sealed {kind} recording(s) expected, found {found:?}");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_session_is_recorded_as_asciicast_and_replays() {
    if !support::need("tmux") {
        return;
    }
    let Some(w) = World::new("").await else { return };
    let term = Tmux::start(&interactive(&w.alice), 100, 30);
    assert!(term.wait_for("$", Duration::from_secs(15)).await, "{}", term.screen());
    term.send(&["echo recorded-marker-$((6*7)) ✓", "Enter"]);
    assert!(term.wait_for("recorded-marker-42", Duration::from_secs(5)).await);
    term.send(&["exit", "Enter"]);
    assert!(eventually(Duration::from_secs(10), || term.ended()).await, "the session ends: {}", term.screen());

    let rec = sealed_recordings(&w, RecordingKind::Pty, 1).await.remove(0);
    let path: PathBuf = w.gw.recordings_dir().join(&rec.file);
    let (header, events) = asciicast::parse(&std::fs::read_to_string(&path).unwrap()).expect("asciicast v2");
    assert_eq!((header.version, header.width, header.height), (2, 100, 30));
    let output: String = events.iter().filter(|e| e.code == "o").map(|e| e.data.as_str()).collect();
    assert!(output.contains("recorded-marker-42 ✓"), "{output}");
    assert!(events.iter().all(|e| e.code != "i"), "input is not recorded by default");

    let replay = w.gw.cli(&["replay", "--instant", &rec.id]).await;
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert!(text(&replay.stdout).contains("recorded-marker-42"));
    let verify = w.gw.cli(&["verify", &rec.id]).await;
    assert!(text(&verify.stdout).starts_with("OK "), "{}", text(&verify.stderr));
    if support::need("asciinema") {
        // asciinema wants a terminal even to print; `script` gives it one.
        let command = format!("asciinema cat {}", path.display());
        let out =
            std::process::Command::new("script").args(["-q", "-e", "-c", &command, "/dev/null"]).output().unwrap();
        assert!(out.status.success(), "asciinema reads it: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("recorded-marker-42"));
    }

    // Altering one byte is detected.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.iter().rposition(|b| *b == b'4').unwrap();
    bytes[at] = b'5';
    std::fs::write(&path, bytes).unwrap();
    let verify = w.gw.cli(&["verify", &rec.id]).await;
    assert!(!verify.status.success());
    assert!(text(&verify.stderr).contains("was altered"), "{}", text(&verify.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_reaches_the_disk_within_a_second_and_keeps_input_when_configured() {
    if !support::need("tmux") {
        return;
    }
    let Some(w) = World::new("record_input = true\n").await else { return };
    let term = Tmux::start(&interactive(&w.alice), 100, 30);
    assert!(term.wait_for("$", Duration::from_secs(15)).await, "{}", term.screen());
    term.send(&["echo flushed-$((40+2))", "Enter"]);
    assert!(term.wait_for("flushed-42", Duration::from_secs(5)).await);
    let shown_at = std::time::Instant::now();
    let dir = w.gw.recordings_dir();
    // While the session is still open, the output is already in the file.
    let on_disk = eventually(Duration::from_secs(2), || {
        std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
            e.path().extension().is_some_and(|x| x == "cast")
                && std::fs::read_to_string(e.path()).unwrap_or_default().contains("flushed-42")
        })
    })
    .await;
    assert!(on_disk, "output reaches the recording while the session is live");
    eprintln!("on disk {:?} after it was on screen", shown_at.elapsed());
    term.send(&["exit", "Enter"]);
    assert!(eventually(Duration::from_secs(10), || term.ended()).await, "the session ends: {}", term.screen());
    let rec = sealed_recordings(&w, RecordingKind::Pty, 1).await.remove(0);
    let (_, events) =
        asciicast::parse(&std::fs::read_to_string(w.gw.recordings_dir().join(&rec.file)).unwrap()).unwrap();
    let typed: String = events.iter().filter(|e| e.code == "i").map(|e| e.data.as_str()).collect();
    assert!(typed.contains("echo flushed-$((40+2))"), "keystrokes are kept with record_input: {typed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_recording_keeps_its_command_line_exit_status_and_output() {
    let Some(w) = World::new("").await else { return };
    let out = w.alice.exec("vm1", "echo exec-output; echo exec-error >&2; exit 4", None).await;
    assert_eq!(out.status.code(), Some(4));
    let rec = sealed_recordings(&w, RecordingKind::Exec, 1).await.remove(0);
    assert_eq!(rec.command.as_deref(), Some("echo exec-output; echo exec-error >&2; exit 4"));
    assert_eq!(rec.exit_status, Some(4));

    let file = std::fs::File::open(w.gw.recordings_dir().join(&rec.file)).unwrap();
    let mut decoder = Decoder::new(flate2::read::GzDecoder::new(file)).unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut header = None;
    let mut trailer = None;
    while let Some(frame) = decoder.next_frame().unwrap() {
        match frame.kind {
            Kind::Header => header = Some(serde_json::from_slice::<ExecHeader>(&frame.payload).unwrap()),
            Kind::Stdout => stdout.extend(frame.payload),
            Kind::Stderr => stderr.extend(frame.payload),
            Kind::Trailer => trailer = Some(serde_json::from_slice::<ExecTrailer>(&frame.payload).unwrap()),
            Kind::Stdin => {}
        }
    }
    assert_eq!(header.unwrap().command, "echo exec-output; echo exec-error >&2; exit 4");
    assert_eq!(stdout, b"exec-output\n");
    assert_eq!(stderr, b"exec-error\n");
    let trailer = trailer.expect("a trailer");
    assert_eq!(trailer.exit_status, Some(4));
    assert!(!trailer.capped);

    let replay = w.gw.cli(&["replay", "--instant", &rec.id]).await;
    assert_eq!(text(&replay.stdout), "exec-output\n");
    assert!(
        text(&replay.stderr).contains("$ echo exec-output") && text(&replay.stderr).contains("exit status 4"),
        "{}",
        text(&replay.stderr)
    );
    let listed = w.gw.cli(&["recordings"]).await;
    let listing = text(&listed.stdout);
    assert!(
        listing.contains(&rec.id) && listing.contains("alice@example.test") && listing.contains("vm1"),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_output_past_the_cap_is_counted_and_hashed_not_kept() {
    let Some(w) = World::new("exec_output_cap = \"64KiB\"\n").await else { return };
    let out = w.alice.exec("vm1", "head -c 3000000 /dev/zero", None).await;
    assert_eq!(out.stdout.len(), 3_000_000, "the user gets everything");
    let rec = sealed_recordings(&w, RecordingKind::Exec, 1).await.remove(0);
    assert!(rec.size.unwrap() < 30_000, "compressed and capped: {} bytes", rec.size.unwrap());
    assert!(rec.note.as_deref().unwrap_or("").contains("counted and hashed"));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(w.gw.recordings_dir().join(&rec.file)).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let mut decoder = Decoder::new(raw.as_slice()).unwrap();
    let mut kept = 0;
    let mut trailer = None;
    while let Some(f) = decoder.next_frame().unwrap() {
        match f.kind {
            Kind::Stdout => kept += f.payload.len(),
            Kind::Trailer => trailer = Some(serde_json::from_slice::<ExecTrailer>(&f.payload).unwrap()),
            _ => {}
        }
    }
    let trailer = trailer.unwrap();
    assert_eq!(kept, 64 << 10);
    assert!(trailer.capped);
    assert_eq!(trailer.stdout_bytes, 3_000_000);
    assert_eq!(trailer.stdout_sha256, jit_gateway::secret::sha256_hex(&vec![0u8; 3_000_000]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_recording_cannot_be_written_is_ended() {
    if !support::need("mount") || !support::need("umount") {
        return;
    }
    let Some(w) = World::new("").await else { return };
    // A full disk: the recordings directory on a 64 KiB filesystem.
    let dir = w.gw.recordings_dir();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&dir).status();
    if !matches!(mounted, Ok(s) if s.success()) {
        assert!(!support::ci(), "mounting a small tmpfs failed (the test needs root)");
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(dir);
    let out = w.alice.exec("vm1", "head -c 20000000 /dev/urandom; sleep 5; echo not-reached", None).await;
    let stderr = text(&out.stderr);
    assert!(!text(&out.stdout).contains("not-reached"));
    assert!(out.stdout.len() < 20_000_000, "the session stopped before the end");
    assert!(
        stderr.contains("session recording could not be written"),
        "stderr: {stderr} (stdout {} bytes)",
        out.stdout.len()
    );
}

/// `jit-gateway <args>` for a gateway run as its own process; asserts it succeeds.
async fn cli_ok(gateway: &support::GwProcess, args: &[&str]) -> String {
    let out = gateway.cli(args).await;
    assert!(out.status.success(), "{args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_cut_by_kill_9_is_sealed_as_interrupted_at_the_next_start() {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") || !support::need("tmux") {
        return;
    }
    let prepared = support::prepare();
    let sshd = support::Sshd::start(&prepared.target_ca);
    let port = support::peers::free_port();
    let options = support::GwOptions { sshd_port: Some(sshd.port), ssh_port: port, ..Default::default() };
    let (dir, config) = support::write_config(prepared, &options);
    let gateway = support::GwProcess::start(&config, port).await;
    let alice = support::Client::for_process(dir.path(), port, "alice");
    let key = alice.key.with_extension("pub");
    let bind = ["key", "bind", "--user", "alice@example.test", "--login-name", "alice", "--public-key"];
    cli_ok(&gateway, &[&bind[..], &[key.to_str().unwrap()]].concat()).await;
    let grant = ["grant", "add", "--user", "alice@example.test", "--target", "vm1", "--login", support::LOGIN];
    cli_ok(&gateway, &[&grant[..], &["--for", "1h", "--reason", "crash test"]].concat()).await;

    let term = Tmux::start(&interactive(&alice), 100, 30);
    assert!(term.wait_for("$", Duration::from_secs(15)).await, "{}", term.screen());
    term.send(&["echo before-the-crash-$((6*7))", "Enter"]);
    assert!(term.wait_for("before-the-crash-42", Duration::from_secs(5)).await, "{}", term.screen());
    let recordings = dir.path().join("recordings");
    let cast = || {
        std::fs::read_dir(&recordings).unwrap().flatten().map(|e| e.path()).find(|p| {
            p.extension().is_some_and(|x| x == "cast")
                && std::fs::read_to_string(p).unwrap_or_default().contains("before-the-crash-42")
        })
    };
    assert!(eventually(Duration::from_secs(5), || cast().is_some()).await, "the output reached the disk");
    let path = cast().unwrap();
    let id = jit_gateway::recording::seal::id_of(&path.file_name().unwrap().to_string_lossy()).to_string();
    // A command without a terminal, running too (its recording is a gzip stream, cut mid-stream by the kill).
    let client = alice.clone();
    let command = tokio::spawn(async move { client.exec("vm1", "echo exec-before-the-crash; sleep 60", None).await });
    let replayed = |p: &std::path::Path| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let options = jit_gateway::replay::ReplayOptions { speed: 1.0, max_idle: None, instant: true };
        let _ = jit_gateway::replay::replay(p, &options, &mut out, &mut err);
        (text(&out), text(&err))
    };
    let exec_file = || {
        std::fs::read_dir(&recordings)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".exec.gz") && replayed(p).0.contains("exec-before-the-crash"))
    };
    assert!(
        eventually(Duration::from_secs(10), || exec_file().is_some()).await,
        "the command's output reached the disk"
    );
    let exec_path = exec_file().unwrap();
    let exec_id = jit_gateway::recording::seal::id_of(&exec_path.file_name().unwrap().to_string_lossy()).to_string();
    gateway.kill9().await;
    let _ = command.await;
    assert!(!jit_gateway::recording::seal::manifest_path(&path).exists(), "nothing was sealed at the kill");
    let on_disk = std::fs::read(&path).unwrap();
    // With the gateway down nothing is sealed yet: `verify` says so, once (it used to repeat the cause).
    let unsealed = gateway_cli(&config, &["verify", &id, "--files-only"]).await;
    assert!(!unsealed.status.success());
    let message = text(&unsealed.stderr);
    assert_eq!(message.matches("is not sealed").count(), 1, "{message}");
    assert!(!message.contains("os error"), "{message}");

    // The reported failure: before the fix, `verify` named the missing manifest twice, and the
    // recording stayed `live` forever after the restart.
    let gateway = support::GwProcess::start(&config, port).await;
    let restarted = std::time::Instant::now();
    let sealed = eventually(Duration::from_secs(20), || {
        jit_gateway::recording::seal::manifest_path(&path).exists()
            && jit_gateway::recording::seal::manifest_path(&exec_path).exists()
    })
    .await;
    assert!(sealed, "the restarted gateway sealed the interrupted recording");
    eprintln!("sealed {:?} after the restarted gateway listened", restarted.elapsed());
    let listed = cli_ok(&gateway, &["recordings", "--json"]).await;
    let list: Vec<RecordingRecord> = serde_json::from_str(&listed).unwrap();
    let record = list.iter().find(|r| r.id == id).expect("still indexed");
    assert!(record.ended_ms.is_some(), "no longer listed as live: {record:?}");
    assert!(record.note.as_deref().unwrap_or("").starts_with("interrupted"), "{record:?}");
    assert_eq!(record.sha256.as_deref(), Some(jit_gateway::secret::sha256_hex(&on_disk).as_str()));
    let table = cli_ok(&gateway, &["recordings"]).await;
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert!(!row.contains("live") && row.contains("interrupted"), "{row}");

    let verified = cli_ok(&gateway, &["verify", &id]).await;
    eprintln!("{verified}");
    assert!(verified.starts_with(&format!("OK {id}")), "{verified}");
    assert!(verified.contains("interrupted: the gateway stopped"), "{verified}");
    assert!(verified.contains("hash chain intact"), "{verified}");
    assert!(verified.contains("the index and the audit log agree"), "{verified}");
    let verified = cli_ok(&gateway, &["verify", &exec_id]).await;
    assert!(verified.contains("interrupted: the gateway stopped"), "{verified}");
    let all = cli_ok(&gateway, &["verify", "--all"]).await;
    eprintln!("{all}");
    assert!(all.contains("2 interrupted") && all.contains("0 with problems"), "{all}");
    // What reached the disk replays; the command's recording says where it was cut.
    let replay = gateway.cli(&["replay", "--instant", &id]).await;
    assert!(text(&replay.stdout).contains("before-the-crash-42"), "{}", text(&replay.stderr));
    let replay = gateway.cli(&["replay", "--instant", &exec_id]).await;
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert!(text(&replay.stdout).contains("exec-before-the-crash"));
    assert!(text(&replay.stderr).contains("without its trailer"), "{}", text(&replay.stderr));
    gateway.stop().await;

    // The same proof from the store file, with the gateway stopped.
    let db = dir.path().join("state/gateway.redb");
    let offline = gateway_cli(&config, &["verify", &id, "--db", db.to_str().unwrap()]).await;
    assert!(text(&offline.stdout).contains("the index and the audit log agree"), "{}", text(&offline.stderr));
    // The store, read directly now that the gateway is stopped.
    let store = jit_gateway::store::RedbStore::open(&dir.path().join("state/gateway.redb")).unwrap();
    use jit_gateway::store::Store;
    let sessions = store.sessions(100).unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for session in &sessions {
        assert!(session.ended_ms.is_some(), "{session:?}");
        assert!(session.end_reason.as_deref().unwrap_or("").starts_with("interrupted"), "{session:?}");
    }
    let audit = store.audit_records(1, usize::MAX).unwrap();
    let said = |kind: &str, key: &str, value: &str| {
        audit.iter().any(|r| r.kind == kind && r.details[key] == value && r.details["interrupted"] == true)
    };
    assert!(said("session.ended", "session", &record.session_id), "the audit log says the session was cut");
    assert!(said("recording.sealed", "recording", &id), "the audit log says the recording was sealed late");
    drop(store);
    let audit_verify =
        gateway_cli(&config, &["audit", "verify", "--db", dir.path().join("state/gateway.redb").to_str().unwrap()])
            .await;
    assert!(audit_verify.status.success(), "{}", text(&audit_verify.stderr));
    assert!(text(&audit_verify.stdout).starts_with("OK"), "{}", text(&audit_verify.stdout));
    drop(term);
}

async fn gateway_cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    support::run(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-gateway")).args(&all),
        None,
        Duration::from_secs(30),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_all_passes_an_untouched_set_and_reports_deleted_and_swapped_recordings() {
    let Some(w) = World::new("").await else { return };
    for n in 0..3 {
        let out = w.alice.exec("vm1", &format!("echo recording-{n}"), None).await;
        assert!(out.status.success());
    }
    let recs = sealed_recordings(&w, RecordingKind::Exec, 3).await;
    let all = w.gw.cli(&["verify", "--all"]).await;
    assert!(all.status.success(), "{}{}", text(&all.stdout), text(&all.stderr));
    assert!(text(&all.stdout).contains("3 ok"), "{}", text(&all.stdout));

    let dir = w.gw.recordings_dir();
    let files = |r: &RecordingRecord| {
        let path = dir.join(&r.file);
        let m = jit_gateway::recording::seal::manifest_path(&path);
        let c = jit_gateway::recording::seal::chain_path(&path);
        [path, m, c]
    };
    // recs[0] deleted; recs[1] replaced by recs[2]'s files, each under recs[1]'s name.
    for f in files(&recs[0]) {
        std::fs::remove_file(f).unwrap();
    }
    for (from, to) in files(&recs[2]).into_iter().zip(files(&recs[1])) {
        std::fs::copy(from, to).unwrap();
    }
    let all = w.gw.cli(&["verify", "--all"]).await;
    let report = text(&all.stdout);
    assert!(!all.status.success(), "{report}");
    let row = |id: &str| report.lines().find(|l| l.starts_with(id)).unwrap_or_default().to_string();
    assert!(row(&recs[0].id).contains("MISSING"), "{report}");
    assert!(row(&recs[1].id).contains("SWAPPED"), "{report}");
    assert!(row(&recs[2].id).contains(" ok "), "{report}");
    assert!(text(&all.stderr).contains("2 recordings do not verify"), "{}", text(&all.stderr));

    let one = w.gw.cli(&["verify", &recs[0].id]).await;
    assert!(!one.status.success());
    assert!(text(&one.stderr).contains("MISSING"), "{}", text(&one.stderr));
    let one = w.gw.cli(&["verify", &recs[1].id]).await;
    assert!(text(&one.stderr).contains("was swapped"), "{}", text(&one.stderr));
}
