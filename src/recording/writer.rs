//! One writer task per recording: takes events off the queue, encodes them,
//! writes in batches, flushes on a timer, gives the byte budget back, and at
//! the end seals the file (fsync, SHA-256, signed manifest, index update).
//! Terminal, exec and sftp recordings also get a chain link after every
//! write, in their chain file; hashing happens here, never in the relay.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ring::digest::{Context, SHA256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::chain::ChainBuilder;
use super::formats::Format;
use super::{Event, seal};
use crate::clock::SharedClock;
use crate::keys::KeyMaterial;
use crate::store::{AuditEvent, RecordingRecord, SharedStore, blocking};

/// Written out as soon as this much is pending, without waiting for the timer.
const BATCH: usize = 256 << 10;

pub(super) struct Job {
    pub rx: mpsc::UnboundedReceiver<Event>,
    pub budget: Arc<Semaphore>,
    pub failed: CancellationToken,
    pub file: tokio::fs::File,
    /// The chain file, for formats without links of their own.
    pub chain_file: Option<tokio::fs::File>,
    pub path: PathBuf,
    pub format: Box<dyn Format>,
    pub record: RecordingRecord,
    pub flush_interval: Duration,
    pub store: SharedStore,
    pub keys: Arc<KeyMaterial>,
    pub clock: SharedClock,
}

pub(super) async fn create_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    let std_file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    Ok(tokio::fs::File::from_std(std_file))
}

/// The chain file beside a terminal, exec or sftp recording (see `chain`).
struct ChainFile {
    file: tokio::fs::File,
    builder: ChainBuilder,
}

/// Creates a recording's chain file (0600) with its first line.
pub(super) fn create_chain(path: &Path, recording: &str) -> std::io::Result<tokio::fs::File> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(super::chain::header_line(recording).as_bytes())?;
    Ok(tokio::fs::File::from_std(f))
}

struct Output {
    file: tokio::fs::File,
    pending: Vec<u8>,
    hash: Context,
    size: u64,
    chain: Option<ChainFile>,
}

impl Output {
    /// Writes what is pending, then the chain link covering it: a crash
    /// between the two leaves bytes after the last link, never a link
    /// without its bytes.
    async fn write_out(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending).await?;
        self.file.flush().await?;
        self.hash.update(&self.pending);
        self.size += self.pending.len() as u64;
        if let Some(chain) = &mut self.chain {
            chain.builder.written(&self.pending);
            if let Some(line) = chain.builder.link() {
                chain.file.write_all(line.as_bytes()).await?;
                chain.file.flush().await?;
            }
        }
        self.pending.clear();
        if self.pending.capacity() > BATCH * 2 {
            // Idle sessions should not keep a large buffer alive.
            self.pending = Vec::new();
        }
        Ok(())
    }
}

pub(super) async fn run(job: Job) {
    let Job { mut rx, budget, failed, file, chain_file, path, mut format, record, flush_interval, store, keys, clock } =
        job;
    let chain = chain_file.map(|file| ChainFile { file, builder: ChainBuilder::default() });
    let mut out = Output { file, pending: Vec::new(), hash: Context::new(&SHA256), size: 0, chain };
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut error: Option<String> = None;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                match event {
                    Event::Data { stream, at_us, data } => {
                        format.data(stream, at_us, &data, &mut out.pending);
                        budget.add_permits(data.len().clamp(1, u32::MAX as usize));
                    }
                    Event::Resize { at_us, cols, rows } => format.resize(at_us, cols, rows, &mut out.pending),
                    Event::Exit { status } => format.exit(status),
                    Event::ExitSignal { name } => format.exit_signal(&name),
                }
                audit_file_events(&store, &clock, &record, format.take_file_events()).await;
                if out.pending.len() >= BATCH
                    && let Err(e) = out.write_out().await {
                        error = Some(e.to_string());
                        break;
                    }
            }
            _ = tick.tick() => {
                format.flush(&mut out.pending);
                if let Err(e) = out.write_out().await {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    if let Some(e) = &error {
        tracing::error!(recording = %record.id, path = %path.display(), error = %e, "recording write failed");
        failed.cancel();
        // Keep accepting (and dropping) so the relay is never blocked by a dead writer.
        budget.add_permits(Semaphore::MAX_PERMITS / 2);
    }
    let ended_ms = clock.now_ms();
    let summary = format.finish(ended_ms, &mut out.pending);
    audit_file_events(&store, &clock, &record, format.take_file_events()).await;
    if error.is_none()
        && let Err(e) = out.write_out().await
    {
        error = Some(e.to_string());
    }
    let _ = out.file.sync_all().await;
    if let Some(chain) = &out.chain {
        let _ = chain.file.sync_all().await;
    }

    let mut record = record.clone();
    record.ended_ms = Some(ended_ms);
    record.exit_status = summary.exit_status;
    record.bytes_from_client = summary.bytes_from_client;
    record.bytes_from_target = summary.bytes_from_target;
    record.size = Some(out.size);
    record.sha256 = Some(data_encoding::HEXLOWER.encode(out.hash.finish().as_ref()));
    record.note = match (&error, summary.note) {
        (Some(e), _) => Some(format!("incomplete: write failed: {e}")),
        (None, note) => note,
    };
    let mut manifest = seal::Manifest::for_record(&record, &keys);
    match (&out.chain, format.inline_chain()) {
        (Some(chain), _) => {
            manifest = manifest.with_chain(&chain.builder.summary(), Some(seal::chain_file_name(&record.id)))
        }
        // After a failed write the format's count is ahead of the file; verify reads the links from the file.
        (None, Some(inline)) if error.is_none() => manifest = manifest.with_chain(&inline, None),
        _ => {}
    }
    let seal_path = path.clone();
    let sealing = tokio::task::spawn_blocking(move || seal::write_manifest(&keys, &seal_path, manifest)).await;
    match sealing {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(recording = %record.id, error = %e, "cannot seal recording"),
        Err(e) => tracing::error!(recording = %record.id, error = %e, "cannot seal recording"),
    }
    let audit = seal_audit(&record, None);
    let now = ended_ms;
    let sealed = record.clone();
    let result = blocking(&store, move |s| s.seal_recording(&sealed, &audit, now)).await;
    if let Err(e) = result {
        tracing::error!(recording = %record.id, error = %e, "cannot index sealed recording");
    }
}

/// The audit record of a seal: what `verify` cross-checks against the manifest.
pub(super) fn seal_audit(record: &RecordingRecord, interrupted: Option<&seal::Interrupted>) -> AuditEvent {
    let mut details = serde_json::json!({
        "recording": record.id, "session": record.session_id, "kind": record.kind, "file": record.file,
        "user": record.user, "size": record.size, "sha256": record.sha256, "note": record.note,
    });
    if let Some(i) = interrupted {
        details["interrupted"] = serde_json::json!(true);
        details["reason"] = serde_json::json!(i.reason);
        details["unverified_tail"] = serde_json::json!(i.unverified_tail);
    }
    // An interrupted recording is sealed by the gateway at its next start, not at the person's hand.
    let actor = if interrupted.is_some() { "jit-gateway".to_string() } else { record.user.clone() };
    AuditEvent::new("recording.sealed", actor, details).on(record.target.clone())
}

async fn audit_file_events(
    store: &SharedStore,
    clock: &SharedClock,
    record: &RecordingRecord,
    events: Vec<super::sftp::FileEvent>,
) {
    if events.is_empty() {
        return;
    }
    let now = clock.now_ms();
    let audits: Vec<AuditEvent> = events
        .into_iter()
        .map(|e| {
            let mut details = serde_json::to_value(&e).unwrap_or_default();
            if let Some(map) = details.as_object_mut() {
                map.insert("recording".into(), record.id.clone().into());
                map.insert("session".into(), record.session_id.clone().into());
                map.insert("login".into(), record.login.clone().into());
            }
            AuditEvent::new("sftp.file", record.user.clone(), details).on(record.target.clone())
        })
        .collect();
    let result = blocking(store, move |s| audits.iter().try_for_each(|a| s.append_audit(a, now).map(|_| ()))).await;
    if let Err(e) = result {
        tracing::error!(recording = %record.id, error = %e, "cannot write sftp audit events");
    }
}
