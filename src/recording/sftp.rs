//! SFTP (v3, what OpenSSH speaks, and what `scp` uses since OpenSSH 9)
//! watched from both directions to produce file-operation audit events:
//! uploads and downloads with path, size and SHA-256 of the bytes that
//! crossed, plus removes, renames, mkdir/rmdir, setstat and symlinks.
//!
//! Pure and defensive: it sees a copy of the stream, never changes it, holds
//! at most one packet per direction, and on anything it cannot parse it stops
//! watching and says so instead of failing the session.

use std::collections::{BTreeMap, HashMap};

use ring::digest::{Context, SHA256};
use serde::Serialize;

/// Largest packet we parse; OpenSSH's own limit is 256 KiB of payload.
const MAX_PACKET: usize = 1 << 20;
/// Out-of-order data held back per file to keep hashing in offset order.
const MAX_REORDER: usize = 8 << 20;

mod msg {
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const SETSTAT: u8 = 9;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const RENAME: u8 = 18;
    pub const SYMLINK: u8 = 20;
    pub const EXTENDED: u8 = 200;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
}

const FLAG_WRITE: u32 = 0x2;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileEvent {
    /// upload, download, remove, rename, mkdir, rmdir, setstat, symlink, open-failed
    pub op: &'static str,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// ok, failed (with the server's message), or unconfirmed (session ended first)
    pub status: String,
}

/// Bytes of one direction, cut into packets.
#[derive(Default)]
struct Packets {
    buf: Vec<u8>,
}

impl Packets {
    fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 4 {
                break;
            }
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if len == 0 || len > MAX_PACKET {
                return Err(format!("packet length {len} out of range"));
            }
            if self.buf.len() < 4 + len {
                break;
            }
            let rest = self.buf.split_off(4 + len);
            let packet = std::mem::replace(&mut self.buf, rest);
            out.push(packet[4..].to_vec());
        }
        Ok(out)
    }
}

/// A cursor over an SFTP packet body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let bytes = self.0.get(..4)?;
        self.0 = &self.0[4..];
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        let bytes = self.0.get(..8)?;
        self.0 = &self.0[8..];
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let s = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some(s)
    }
    fn text(&mut self) -> Option<String> {
        self.string().map(|s| String::from_utf8_lossy(s).into_owned())
    }
}

/// SHA-256 over a file's bytes in offset order, tolerating some reordering.
struct OrderedHash {
    ctx: Option<Context>,
    next: u64,
    held: BTreeMap<u64, Vec<u8>>,
    held_bytes: usize,
    total: u64,
}

impl OrderedHash {
    fn new() -> Self {
        OrderedHash { ctx: Some(Context::new(&SHA256)), next: 0, held: BTreeMap::new(), held_bytes: 0, total: 0 }
    }

    fn add(&mut self, offset: u64, data: &[u8]) {
        self.total += data.len() as u64;
        let Some(ctx) = self.ctx.as_mut() else { return };
        if offset == self.next {
            ctx.update(data);
            self.next += data.len() as u64;
            while let Some(chunk) = self.held.remove(&self.next) {
                self.held_bytes -= chunk.len();
                ctx.update(&chunk);
                self.next += chunk.len() as u64;
            }
        } else if offset > self.next && self.held_bytes + data.len() <= MAX_REORDER {
            self.held_bytes += data.len();
            self.held.insert(offset, data.to_vec());
        } else {
            // Rewrites, overlaps or too much disorder: a hash would be misleading.
            self.ctx = None;
            self.held.clear();
            self.held_bytes = 0;
        }
    }

    fn finish(self) -> Option<String> {
        if !self.held.is_empty() || self.total == 0 {
            return None;
        }
        self.ctx.map(|c| data_encoding::HEXLOWER.encode(c.finish().as_ref()))
    }
}

struct OpenFile {
    path: String,
    writable: bool,
    written: OrderedHash,
    read: OrderedHash,
}

enum Pending {
    Open { path: String, flags: u32 },
    Read { handle: Vec<u8>, offset: u64 },
    Close { handle: Vec<u8> },
    Simple(FileEvent),
}

#[derive(Default)]
pub struct SftpTracker {
    from_client: Packets,
    from_server: Packets,
    pending: HashMap<u32, Pending>,
    files: HashMap<Vec<u8>, OpenFile>,
    events: Vec<FileEvent>,
    stopped: Option<String>,
}

impl SftpTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Why watching stopped, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    pub fn client_data(&mut self, data: &[u8]) {
        if self.stopped.is_some() {
            return;
        }
        match self.from_client.push(data) {
            Ok(packets) => packets.iter().for_each(|p| self.client_packet(p)),
            Err(e) => self.stop(format!("client stream: {e}")),
        }
    }

    pub fn server_data(&mut self, data: &[u8]) {
        if self.stopped.is_some() {
            return;
        }
        match self.from_server.push(data) {
            Ok(packets) => packets.iter().for_each(|p| self.server_packet(p)),
            Err(e) => self.stop(format!("server stream: {e}")),
        }
    }

    /// Events completed since the last call.
    pub fn take_events(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.events)
    }

    /// At the end of the session: files still open become unconfirmed events.
    pub fn finish(&mut self) -> Vec<FileEvent> {
        let handles: Vec<Vec<u8>> = self.files.keys().cloned().collect();
        for h in handles {
            self.close_file(&h, "unconfirmed".into());
        }
        self.take_events()
    }

    fn stop(&mut self, why: String) {
        self.stopped = Some(why);
        self.from_client.buf = Vec::new();
        self.from_server.buf = Vec::new();
    }

    fn client_packet(&mut self, packet: &[u8]) {
        let mut r = Reader(packet);
        let Some(kind) = r.u8() else { return };
        if kind < msg::OPEN {
            return; // INIT and VERSION carry no request id
        }
        let Some(id) = r.u32() else { return };
        let simple = |op: &'static str, path: String, to: Option<String>| {
            Pending::Simple(FileEvent { op, path, to, bytes: 0, sha256: None, status: String::new() })
        };
        let pending = match kind {
            msg::OPEN => match (r.text(), r.u32()) {
                (Some(path), Some(flags)) => Pending::Open { path, flags },
                _ => return,
            },
            msg::CLOSE => match r.string() {
                Some(h) => Pending::Close { handle: h.to_vec() },
                None => return,
            },
            msg::READ => match (r.string(), r.u64()) {
                (Some(h), Some(offset)) => Pending::Read { handle: h.to_vec(), offset },
                _ => return,
            },
            msg::WRITE => {
                if let (Some(h), Some(offset), Some(data)) = (r.string(), r.u64(), r.string())
                    && let Some(f) = self.files.get_mut(h)
                {
                    f.written.add(offset, data);
                }
                return;
            }
            msg::SETSTAT => simple("setstat", r.text().unwrap_or_default(), None),
            msg::REMOVE => simple("remove", r.text().unwrap_or_default(), None),
            msg::MKDIR => simple("mkdir", r.text().unwrap_or_default(), None),
            msg::RMDIR => simple("rmdir", r.text().unwrap_or_default(), None),
            msg::RENAME => {
                let from = r.text().unwrap_or_default();
                simple("rename", from, r.text())
            }
            msg::SYMLINK => {
                let link = r.text().unwrap_or_default();
                simple("symlink", link, r.text())
            }
            msg::EXTENDED => match r.text().as_deref() {
                Some("posix-rename@openssh.com") => {
                    let from = r.text().unwrap_or_default();
                    simple("rename", from, r.text())
                }
                Some("hardlink@openssh.com") => {
                    let from = r.text().unwrap_or_default();
                    simple("hardlink", from, r.text())
                }
                _ => return,
            },
            _ => return,
        };
        self.pending.insert(id, pending);
        if self.pending.len() > 4096 {
            self.stop("more than 4096 requests without an answer".into());
        }
    }

    fn server_packet(&mut self, packet: &[u8]) {
        let mut r = Reader(packet);
        let (Some(kind), Some(id)) = (r.u8(), r.u32()) else { return };
        let Some(pending) = self.pending.remove(&id) else { return };
        match (kind, pending) {
            (msg::HANDLE, Pending::Open { path, flags }) => {
                if let Some(h) = r.string() {
                    let file = OpenFile {
                        path,
                        writable: flags & FLAG_WRITE != 0,
                        written: OrderedHash::new(),
                        read: OrderedHash::new(),
                    };
                    self.files.insert(h.to_vec(), file);
                }
            }
            (msg::STATUS, Pending::Open { path, .. }) => {
                let status = status_text(&mut r);
                self.events.push(FileEvent { op: "open-failed", path, to: None, bytes: 0, sha256: None, status });
            }
            (msg::DATA, Pending::Read { handle, offset }) => {
                if let (Some(f), Some(data)) = (self.files.get_mut(&handle), r.string()) {
                    f.read.add(offset, data);
                }
            }
            (msg::STATUS, Pending::Close { handle }) => {
                let status = status_text(&mut r);
                self.close_file(&handle, status);
            }
            (msg::STATUS, Pending::Simple(mut event)) => {
                event.status = status_text(&mut r);
                self.events.push(event);
            }
            _ => {}
        }
    }

    fn close_file(&mut self, handle: &[u8], status: String) {
        let Some(f) = self.files.remove(handle) else { return };
        if f.written.total > 0 || (f.writable && f.read.total == 0) {
            let bytes = f.written.total;
            self.events.push(FileEvent {
                op: "upload",
                path: f.path.clone(),
                to: None,
                bytes,
                sha256: f.written.finish(),
                status: status.clone(),
            });
        }
        if f.read.total > 0 || !f.writable {
            let bytes = f.read.total;
            self.events.push(FileEvent {
                op: "download",
                path: f.path,
                to: None,
                bytes,
                sha256: f.read.finish().or_else(|| empty_hash(bytes)),
                status,
            });
        }
    }
}

/// The SHA-256 of an empty file, for a zero-byte download.
fn empty_hash(bytes: u64) -> Option<String> {
    (bytes == 0).then(|| data_encoding::HEXLOWER.encode(ring::digest::digest(&SHA256, b"").as_ref()))
}

fn status_text(r: &mut Reader<'_>) -> String {
    match r.u32() {
        Some(0) => "ok".into(),
        Some(code) => format!("failed ({code}: {})", r.text().unwrap_or_default()),
        None => "failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, body: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(&id.to_be_bytes());
        for part in body {
            p.extend_from_slice(part);
        }
        let mut out = (p.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&p);
        out
    }
    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }
    fn status(id: u32, code: u32) -> Vec<u8> {
        packet(msg::STATUS, id, &[&code.to_be_bytes(), &s(b"msg"), &s(b"")])
    }
    fn sha(data: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(ring::digest::digest(&SHA256, data).as_ref())
    }

    #[test]
    fn an_upload_is_hashed_across_split_packets() {
        let mut t = SftpTracker::new();
        let content = b"hello world, this is a file";
        let mut client = packet(msg::OPEN, 1, &[&s(b"/tmp/up.txt"), &(0x1au32).to_be_bytes(), &0u32.to_be_bytes()]);
        let open_len = client.len();
        client.extend(packet(msg::WRITE, 2, &[&s(b"H1"), &0u64.to_be_bytes(), &s(&content[..10])]));
        client.extend(packet(msg::WRITE, 3, &[&s(b"H1"), &10u64.to_be_bytes(), &s(&content[10..])]));
        // Feed the client stream one byte at a time, answering the open in between.
        for (i, b) in client.iter().enumerate() {
            t.client_data(&[*b]);
            if i + 1 == open_len {
                t.server_data(&packet(msg::HANDLE, 1, &[&s(b"H1")]));
            }
        }
        t.client_data(&packet(msg::CLOSE, 4, &[&s(b"H1")]));
        t.server_data(&status(4, 0));
        let events = t.take_events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].op, "upload");
        assert_eq!(events[0].path, "/tmp/up.txt");
        assert_eq!(events[0].bytes, content.len() as u64);
        assert_eq!(events[0].sha256.as_deref(), Some(sha(content).as_str()));
        assert_eq!(events[0].status, "ok");
    }

    #[test]
    fn a_download_is_hashed_even_when_answers_come_out_of_order() {
        let mut t = SftpTracker::new();
        t.client_data(&packet(msg::OPEN, 1, &[&s(b"/etc/motd"), &1u32.to_be_bytes(), &0u32.to_be_bytes()]));
        t.server_data(&packet(msg::HANDLE, 1, &[&s(b"H")]));
        t.client_data(&packet(msg::READ, 2, &[&s(b"H"), &0u64.to_be_bytes(), &4u32.to_be_bytes()]));
        t.client_data(&packet(msg::READ, 3, &[&s(b"H"), &4u64.to_be_bytes(), &4u32.to_be_bytes()]));
        t.server_data(&packet(msg::DATA, 3, &[&s(b"5678")]));
        t.server_data(&packet(msg::DATA, 2, &[&s(b"1234")]));
        t.client_data(&packet(msg::CLOSE, 4, &[&s(b"H")]));
        t.server_data(&status(4, 0));
        let e = t.take_events();
        assert_eq!((e[0].op, e[0].bytes), ("download", 8));
        assert_eq!(e[0].sha256.as_deref(), Some(sha(b"12345678").as_str()));
    }

    #[test]
    fn simple_operations_carry_the_server_answer() {
        let mut t = SftpTracker::new();
        t.client_data(&packet(msg::REMOVE, 7, &[&s(b"/tmp/x")]));
        t.client_data(&packet(msg::RENAME, 8, &[&s(b"/a"), &s(b"/b")]));
        t.server_data(&status(7, 2));
        t.server_data(&status(8, 0));
        let e = t.take_events();
        assert_eq!(e[0].op, "remove");
        assert!(e[0].status.starts_with("failed (2"), "{}", e[0].status);
        assert_eq!((e[1].op, e[1].to.as_deref(), e[1].status.as_str()), ("rename", Some("/b"), "ok"));
    }

    #[test]
    fn files_open_at_the_end_are_unconfirmed() {
        let mut t = SftpTracker::new();
        t.client_data(&packet(msg::OPEN, 1, &[&s(b"/f"), &2u32.to_be_bytes(), &0u32.to_be_bytes()]));
        t.server_data(&packet(msg::HANDLE, 1, &[&s(b"H")]));
        t.client_data(&packet(msg::WRITE, 2, &[&s(b"H"), &0u64.to_be_bytes(), &s(b"abc")]));
        let e = t.finish();
        assert_eq!((e[0].op, e[0].bytes, e[0].status.as_str()), ("upload", 3, "unconfirmed"));
    }

    #[test]
    fn garbage_stops_watching_without_panicking() {
        let mut t = SftpTracker::new();
        t.client_data(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert!(t.stopped().is_some());
        t.client_data(b"more");
        t.server_data(&[0, 0, 0, 1, 101]);
        assert!(t.take_events().is_empty());
        // Truncated bodies inside a well-framed packet are ignored.
        let mut t = SftpTracker::new();
        t.client_data(&[0, 0, 0, 3, msg::OPEN, 0, 0]);
        t.server_data(&[0, 0, 0, 2, msg::HANDLE, 0]);
        assert!(t.stopped().is_none());
    }
}
