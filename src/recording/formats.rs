//! The three recording encodings behind one small trait: each turns channel
//! events into bytes for the file and, at the end, a summary for the index.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use ring::digest::{Context, SHA256};

use super::asciicast::{self, Code, Header, Utf8Joiner};
use super::exec_format::{self, ExecHeader, ExecTrailer, Kind};
use super::sftp::{FileEvent, SftpTracker};
use super::{RecordingMeta, Stream};
use crate::config::RecordingConfig;
use crate::store::{RecordingKind, RecordingRecord};

/// What a format reports when the recording ends.
#[derive(Debug, Default)]
pub struct Summary {
    pub exit_status: Option<u32>,
    pub bytes_from_client: u64,
    pub bytes_from_target: u64,
    pub note: Option<String>,
}

pub trait Format: Send {
    /// Appends the encoding of a data chunk to `out`.
    fn data(&mut self, stream: Stream, at_us: u64, data: &[u8], out: &mut Vec<u8>);
    fn resize(&mut self, _at_us: u64, _cols: u32, _rows: u32, _out: &mut Vec<u8>) {}
    fn exit(&mut self, _status: u32) {}
    fn exit_signal(&mut self, _name: &str) {}
    /// Makes everything accepted so far writable (compressors hold data back).
    fn flush(&mut self, _out: &mut Vec<u8>) {}
    /// File operations completed since the last call (sftp only).
    fn take_file_events(&mut self) -> Vec<FileEvent> {
        Vec::new()
    }
    fn finish(&mut self, ended_ms: i64, out: &mut Vec<u8>) -> Summary;
    /// Formats that keep their hash chain inside the file (RDP) say how far it goes;
    /// the others get a chain file from the writer.
    fn inline_chain(&self) -> Option<super::chain::ChainSummary> {
        None
    }
}

pub fn for_meta(
    meta: &RecordingMeta,
    record: &RecordingRecord,
    config: &RecordingConfig,
    now_ms: i64,
) -> Box<dyn Format> {
    match meta.kind {
        RecordingKind::Pty => Box::new(Cast::new(meta, now_ms)),
        RecordingKind::Exec => Box::new(Exec::new(meta, record, config.exec_output_cap.0, now_ms)),
        RecordingKind::Sftp => Box::new(Sftp::default()),
        RecordingKind::Rdp => Box::new(super::rdp_format::RdpFormat::new(&super::rdp_format::RdpHeader {
            version: 1,
            session: meta.session_id.clone(),
            user: meta.user.clone(),
            target: meta.target.clone(),
            login: meta.login.clone(),
            started_ms: now_ms,
            input_recorded: meta.input_recorded,
        })),
    }
}

/// Terminal sessions: asciicast v2.
struct Cast {
    header: Option<Header>,
    output: Utf8Joiner,
    input: Utf8Joiner,
    exit: Option<u32>,
    from_client: u64,
    from_target: u64,
    last_us: u64,
}

impl Cast {
    fn new(meta: &RecordingMeta, now_ms: i64) -> Self {
        let mut env = serde_json::Map::new();
        if let Some(term) = &meta.term {
            env.insert("TERM".into(), term.clone().into());
        }
        let header = Header {
            version: 2,
            width: meta.cols.clamp(1, 1000),
            height: meta.rows.clamp(1, 1000),
            timestamp: now_ms / 1000,
            command: meta.command.clone(),
            title: Some(format!("{} on {} as {} ({})", meta.user, meta.target, meta.login, meta.session_id)),
            env,
        };
        Cast {
            header: Some(header),
            output: Utf8Joiner::default(),
            input: Utf8Joiner::default(),
            exit: None,
            from_client: 0,
            from_target: 0,
            last_us: 0,
        }
    }

    fn header_once(&mut self, out: &mut Vec<u8>) {
        if let Some(h) = self.header.take() {
            out.extend_from_slice(h.to_line().as_bytes());
        }
    }
}

impl Format for Cast {
    fn data(&mut self, stream: Stream, at_us: u64, data: &[u8], out: &mut Vec<u8>) {
        self.header_once(out);
        self.last_us = at_us;
        let (joiner, code) = match stream {
            Stream::Output | Stream::Stderr => {
                self.from_target += data.len() as u64;
                (&mut self.output, Code::Output)
            }
            Stream::Input => {
                self.from_client += data.len() as u64;
                (&mut self.input, Code::Input)
            }
        };
        let text = joiner.push(data);
        if !text.is_empty() {
            out.extend_from_slice(asciicast::event_line(at_us, code, &text).as_bytes());
        }
    }

    fn resize(&mut self, at_us: u64, cols: u32, rows: u32, out: &mut Vec<u8>) {
        self.header_once(out);
        out.extend_from_slice(asciicast::event_line(at_us, Code::Resize, &format!("{cols}x{rows}")).as_bytes());
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        self.header_once(out);
    }

    fn exit(&mut self, status: u32) {
        self.exit = Some(status);
    }

    fn finish(&mut self, _ended_ms: i64, out: &mut Vec<u8>) -> Summary {
        self.header_once(out);
        let rest = self.output.finish();
        if !rest.is_empty() {
            out.extend_from_slice(asciicast::event_line(self.last_us, Code::Output, &rest).as_bytes());
        }
        Summary {
            exit_status: self.exit,
            bytes_from_client: self.from_client,
            bytes_from_target: self.from_target,
            note: None,
        }
    }
}

/// Commands without a terminal: framed, gzip-compressed, output capped.
struct Exec {
    gz: GzEncoder<Vec<u8>>,
    cap: u64,
    kept: u64,
    trailer: ExecTrailer,
    stdout_hash: Context,
    stderr_hash: Context,
    frame: Vec<u8>,
}

impl Exec {
    fn new(meta: &RecordingMeta, record: &RecordingRecord, cap: u64, now_ms: i64) -> Self {
        let header = ExecHeader {
            recording: record.id.clone(),
            user: meta.user.clone(),
            target: meta.target.clone(),
            login: meta.login.clone(),
            command: meta.command.clone().unwrap_or_default(),
            started_ms: now_ms,
            output_cap: cap,
        };
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let mut first = exec_format::MAGIC.to_vec();
        exec_format::encode_frame(&mut first, Kind::Header, 0, &serde_json::to_vec(&header).unwrap_or_default());
        let _ = gz.write_all(&first);
        Exec {
            gz,
            cap,
            kept: 0,
            trailer: ExecTrailer::default(),
            stdout_hash: Context::new(&SHA256),
            stderr_hash: Context::new(&SHA256),
            frame: Vec::new(),
        }
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        out.append(self.gz.get_mut());
    }
}

impl Format for Exec {
    fn data(&mut self, stream: Stream, at_us: u64, data: &[u8], out: &mut Vec<u8>) {
        let kind = match stream {
            Stream::Output => {
                self.trailer.stdout_bytes += data.len() as u64;
                self.stdout_hash.update(data);
                Kind::Stdout
            }
            Stream::Stderr => {
                self.trailer.stderr_bytes += data.len() as u64;
                self.stderr_hash.update(data);
                Kind::Stderr
            }
            Stream::Input => {
                // Input is counted; its content is not part of an exec recording.
                self.trailer.stdin_bytes += data.len() as u64;
                return;
            }
        };
        let room = self.cap.saturating_sub(self.kept) as usize;
        if room == 0 {
            self.trailer.capped = true;
            return;
        }
        let keep = &data[..data.len().min(room)];
        self.trailer.capped |= keep.len() < data.len();
        self.kept += keep.len() as u64;
        self.frame.clear();
        exec_format::encode_frame(&mut self.frame, kind, at_us, keep);
        let _ = self.gz.write_all(&self.frame);
        self.drain(out);
    }

    fn exit(&mut self, status: u32) {
        self.trailer.exit_status = Some(status);
    }

    fn exit_signal(&mut self, name: &str) {
        self.trailer.exit_signal = Some(name.to_string());
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        let _ = self.gz.flush();
        self.drain(out);
    }

    fn finish(&mut self, ended_ms: i64, out: &mut Vec<u8>) -> Summary {
        self.trailer.ended_ms = ended_ms;
        let hex = |c: Context| data_encoding::HEXLOWER.encode(c.finish().as_ref());
        self.trailer.stdout_sha256 = hex(std::mem::replace(&mut self.stdout_hash, Context::new(&SHA256)));
        self.trailer.stderr_sha256 = hex(std::mem::replace(&mut self.stderr_hash, Context::new(&SHA256)));
        self.frame.clear();
        exec_format::encode_frame(
            &mut self.frame,
            Kind::Trailer,
            0,
            &serde_json::to_vec(&self.trailer).unwrap_or_default(),
        );
        let _ = self.gz.write_all(&self.frame);
        let _ = self.gz.try_finish();
        self.drain(out);
        let t = &self.trailer;
        Summary {
            exit_status: t.exit_status,
            bytes_from_client: t.stdin_bytes,
            bytes_from_target: t.stdout_bytes + t.stderr_bytes,
            note: t.capped.then(|| format!("output past {} bytes was counted and hashed, not kept", self.cap)),
        }
    }
}

/// sftp sessions: one JSON line per file operation.
#[derive(Default)]
struct Sftp {
    tracker: SftpTracker,
    ready: Vec<FileEvent>,
    exit: Option<u32>,
    from_client: u64,
    from_target: u64,
}

impl Sftp {
    fn write_events(&mut self, events: Vec<FileEvent>, out: &mut Vec<u8>) {
        for e in &events {
            if let Ok(line) = serde_json::to_string(e) {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        self.ready.extend(events);
    }
}

impl Format for Sftp {
    fn data(&mut self, stream: Stream, _at_us: u64, data: &[u8], out: &mut Vec<u8>) {
        match stream {
            Stream::Input => {
                self.from_client += data.len() as u64;
                self.tracker.client_data(data);
            }
            Stream::Output => {
                self.from_target += data.len() as u64;
                self.tracker.server_data(data);
            }
            Stream::Stderr => self.from_target += data.len() as u64,
        }
        let events = self.tracker.take_events();
        if !events.is_empty() {
            self.write_events(events, out);
        }
    }

    fn exit(&mut self, status: u32) {
        self.exit = Some(status);
    }

    fn take_file_events(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.ready)
    }

    fn finish(&mut self, _ended_ms: i64, out: &mut Vec<u8>) -> Summary {
        let events = self.tracker.finish();
        self.write_events(events, out);
        Summary {
            exit_status: self.exit,
            bytes_from_client: self.from_client,
            bytes_from_target: self.from_target,
            note: self.tracker.stopped().map(|why| format!("file operations not tracked after: {why}")),
        }
    }
}
