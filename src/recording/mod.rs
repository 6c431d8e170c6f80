//! Session recording: what each channel did, kept for audit and replay.
//!
//! The relay hands data to a `Recorder` and moves on; a writer task per
//! recording encodes it (asciicast for terminals, framed gzip for commands,
//! file-operation events for sftp), writes it, flushes at least every
//! `flush_interval`, and seals the file with a signed manifest at the end.
//! The queue between them is bounded in bytes: if the writer falls behind by
//! more than `max_backlog` for longer than `BACKLOG_WAIT`, or a write fails,
//! the recording fails and, when `fail_closed`, so does the session. Memory
//! never grows without bound.

pub mod asciicast;
pub mod chain;
pub mod crosscheck;
pub mod exec_format;
pub(crate) mod formats;
pub mod rdp_format;
pub mod recovery;
pub mod seal;
pub mod sftp;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::RecordingConfig;
use crate::keys::KeyMaterial;
use crate::store::{RecordingKind, RecordingRecord, SharedStore, blocking};

/// How long the relay may wait for a recording that is behind before giving up on it.
pub const BACKLOG_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot create recording {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("recording index: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Why a session's recording stopped accepting data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordingFailed {
    #[error("the session recording could not be written ({0})")]
    Write(String),
    #[error("the session recording fell too far behind (the disk is not keeping up)")]
    Backlog,
}

/// Which stream of a channel a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Target to client (stdout).
    Output,
    /// Target to client, extended data (stderr).
    Stderr,
    /// Client to target.
    Input,
}

#[derive(Debug)]
enum Event {
    Data { stream: Stream, at_us: u64, data: Bytes },
    Resize { at_us: u64, cols: u32, rows: u32 },
    Exit { status: u32 },
    ExitSignal { name: String },
}

/// What is known about a channel when its recording starts.
#[derive(Debug, Clone)]
pub struct RecordingMeta {
    pub session_id: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub kind: RecordingKind,
    pub command: Option<String>,
    pub term: Option<String>,
    pub cols: u32,
    pub rows: u32,
    /// RDP: whether keyboard and mouse input is kept.
    pub input_recorded: bool,
}

pub struct RecordingService {
    config: RecordingConfig,
    store: SharedStore,
    keys: Arc<KeyMaterial>,
    clock: SharedClock,
    writers: TaskTracker,
}

impl RecordingService {
    pub fn new(
        config: RecordingConfig,
        store: SharedStore,
        keys: Arc<KeyMaterial>,
        clock: SharedClock,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&config.dir)?;
        std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(RecordingService { config, store, keys, clock, writers: TaskTracker::new() })
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Opens the file, indexes the recording and starts its writer.
    pub async fn start(&self, meta: RecordingMeta) -> Result<Recorder, RecordingError> {
        let id = crate::ids::new_id("r");
        let extension = match meta.kind {
            RecordingKind::Pty => "cast",
            RecordingKind::Exec => "exec.gz",
            RecordingKind::Sftp => "sftp.jsonl",
            RecordingKind::Rdp => "rdprec",
        };
        let file_name = format!("{id}.{extension}");
        let path = self.config.dir.join(&file_name);
        let file = writer::create_private(&path)
            .await
            .map_err(|source| RecordingError::Create { path: path.clone(), source })?;
        let chain_file = if meta.kind == RecordingKind::Rdp {
            None // its links are inside the file
        } else {
            let chain = self.config.dir.join(seal::chain_file_name(&id));
            Some(
                writer::create_chain(&chain, &id)
                    .map_err(|source| RecordingError::Create { path: chain.clone(), source })?,
            )
        };
        let record = RecordingRecord {
            id: id.clone(),
            session_id: meta.session_id.clone(),
            kind: meta.kind,
            user: meta.user.clone(),
            target: meta.target.clone(),
            login: meta.login.clone(),
            file: file_name,
            started_ms: self.clock.now_ms(),
            ended_ms: None,
            size: None,
            sha256: None,
            command: meta.command.clone(),
            exit_status: None,
            bytes_from_client: 0,
            bytes_from_target: 0,
            note: None,
            chained: true,
        };
        let indexed = record.clone();
        blocking(&self.store, move |s| s.upsert_recording(&indexed)).await?;

        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(self.config.max_backlog.0.min(u32::MAX as u64) as usize));
        let failed = CancellationToken::new();
        let format = formats::for_meta(&meta, &record, &self.config, self.clock.now_ms());
        let job = writer::Job {
            rx,
            budget: Arc::clone(&budget),
            failed: failed.clone(),
            file,
            chain_file,
            path,
            format,
            record,
            flush_interval: self.config.flush_interval,
            store: Arc::clone(&self.store),
            keys: Arc::clone(&self.keys),
            clock: Arc::clone(&self.clock),
        };
        self.writers.spawn(writer::run(job));
        Ok(Recorder {
            id,
            tx,
            budget,
            failed,
            started: Instant::now(),
            keep_input: self.config.record_input || meta.kind != RecordingKind::Pty,
            fail_closed: self.config.fail_closed,
        })
    }

    /// Waits until every writer has sealed its recording (at shutdown).
    pub async fn drain(&self) {
        self.writers.close();
        self.writers.wait().await;
    }
}

/// The relay's side of one recording. Dropping it finishes the recording.
pub struct Recorder {
    id: String,
    tx: mpsc::UnboundedSender<Event>,
    budget: Arc<Semaphore>,
    failed: CancellationToken,
    started: Instant,
    /// Whether client input is kept (always for exec and sftp, which need it
    /// to count or parse; for terminals only when configured).
    keep_input: bool,
    fail_closed: bool,
}

impl Recorder {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Queues a chunk. Waits only when the writer is more than the backlog
    /// behind, and then at most `BACKLOG_WAIT`.
    pub async fn data(&self, stream: Stream, data: &Bytes) -> Result<(), RecordingFailed> {
        if stream == Stream::Input && !self.keep_input {
            return Ok(());
        }
        if self.failed.is_cancelled() {
            return if self.fail_closed { Err(RecordingFailed::Write("writer stopped".into())) } else { Ok(()) };
        }
        let n = data.len().clamp(1, u32::MAX as usize) as u32;
        let permit = match self.budget.try_acquire_many(n) {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(BACKLOG_WAIT, self.budget.acquire_many(n)).await {
                Ok(Ok(p)) => p,
                _ => {
                    self.failed.cancel();
                    return if self.fail_closed { Err(RecordingFailed::Backlog) } else { Ok(()) };
                }
            },
        };
        permit.forget(); // the writer gives the bytes back once it has written them
        let event = Event::Data { stream, at_us: self.elapsed_us(), data: data.clone() };
        if self.tx.send(event).is_err() && self.fail_closed {
            return Err(RecordingFailed::Write("writer stopped".into()));
        }
        Ok(())
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        let _ = self.tx.send(Event::Resize { at_us: self.elapsed_us(), cols, rows });
    }

    pub fn exit_status(&self, status: u32) {
        let _ = self.tx.send(Event::Exit { status });
    }

    pub fn exit_signal(&self, name: &str) {
        let _ = self.tx.send(Event::ExitSignal { name: name.to_string() });
    }

    /// Resolves when the writer has failed (the session should end when fail-closed).
    pub async fn failure(&self) -> RecordingFailed {
        self.failed.cancelled().await;
        RecordingFailed::Write("the recording writer stopped".into())
    }

    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }
}
