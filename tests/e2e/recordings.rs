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
