//! RDP recordings: the decrypted stream both ways, append-only, in chunks
//! chained by SHA-256.
//!
//! ```text
//! file    = "JGWRDP1\n" header-len:u32le header-json record*
//! record  = kind:u8 at_us:u64le len:u32le bytes
//! kind    = 0 client->target | 1 target->client | 2 event (JSON) | 3 chain link
//! ```
//!
//! A chain link's 32 bytes are SHA-256(previous link || every byte written
//! since it, header included for the first). Links are written at every
//! flush (at least once a second) and at the end, so a damaged or cut file
//! is provably intact up to its last good link, and the signed manifest
//! covers the whole file. Secrets never reach this layer: the relay redacts
//! the password in the Client Info PDU and leaves keyboard input out unless
//! configured.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use super::Stream;
use super::chain::next_link;
use super::formats::{Format, Summary};

pub const MAGIC: &[u8; 8] = b"JGWRDP1\n";
pub const FROM_CLIENT: u8 = 0;
pub const FROM_TARGET: u8 = 1;
pub const EVENT: u8 = 2;
pub const LINK: u8 = 3;
const RECORD_HEADER: usize = 13;
/// Largest record a reader accepts (relay chunks are far smaller).
const MAX_RECORD: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdpHeader {
    pub version: u32,
    pub session: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub started_ms: i64,
    /// Whether client keyboard and mouse input is in the file.
    pub input_recorded: bool,
}

pub struct RdpFormat {
    header: Option<Vec<u8>>,
    chain: [u8; 32],
    since_link: Context,
    dirty: bool,
    from_client: u64,
    from_target: u64,
    /// Bytes handed out so far, and how many of them the last link covers.
    written: u64,
    covered: u64,
    links: u64,
}

impl RdpFormat {
    pub fn new(header: &RdpHeader) -> Self {
        let json = serde_json::to_vec(header).unwrap_or_default();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&json);
        RdpFormat {
            header: Some(bytes),
            chain: [0; 32],
            since_link: Context::new(&SHA256),
            dirty: false,
            from_client: 0,
            from_target: 0,
            written: 0,
            covered: 0,
            links: 0,
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.since_link.update(bytes);
        out.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        self.dirty = true;
    }

    fn header_once(&mut self, out: &mut Vec<u8>) {
        if let Some(h) = self.header.take() {
            self.emit(&h, out);
        }
    }

    fn record(&mut self, kind: u8, at_us: u64, data: &[u8], out: &mut Vec<u8>) {
        self.header_once(out);
        let mut head = [0u8; RECORD_HEADER];
        head[0] = kind;
        head[1..9].copy_from_slice(&at_us.to_le_bytes());
        head[9..13].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.emit(&head, out);
        self.emit(data, out);
    }

    fn link(&mut self, out: &mut Vec<u8>) {
        self.header_once(out);
        if !self.dirty {
            return;
        }
        let since = std::mem::replace(&mut self.since_link, Context::new(&SHA256)).finish();
        self.chain = next_link(&self.chain, since.as_ref());
        let mut head = [0u8; RECORD_HEADER];
        head[0] = LINK;
        head[9..13].copy_from_slice(&32u32.to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.chain);
        self.written += (RECORD_HEADER + 32) as u64;
        self.covered = self.written;
        self.links += 1;
        self.dirty = false;
    }
}

impl Format for RdpFormat {
    fn data(&mut self, stream: Stream, at_us: u64, data: &[u8], out: &mut Vec<u8>) {
        match stream {
            Stream::Input => {
                self.from_client += data.len() as u64;
                self.record(FROM_CLIENT, at_us, data, out);
            }
            Stream::Output => {
                self.from_target += data.len() as u64;
                self.record(FROM_TARGET, at_us, data, out);
            }
            // Events (negotiation results, decisions) travel as `Stderr`.
            Stream::Stderr => self.record(EVENT, at_us, data, out),
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        self.link(out);
    }

    fn inline_chain(&self) -> Option<super::chain::ChainSummary> {
        Some(super::chain::ChainSummary { links: self.links, covered: self.covered, head: String::new() })
    }

    fn finish(&mut self, _ended_ms: i64, out: &mut Vec<u8>) -> Summary {
        self.link(out);
        Summary {
            exit_status: None,
            bytes_from_client: self.from_client,
            bytes_from_target: self.from_target,
            note: None,
        }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: u8,
    pub at_us: u64,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("not an RDP recording (bad magic)")]
    Magic,
    #[error("the header is damaged")]
    Header,
    #[error("the file is cut or damaged at byte {0}")]
    Damaged(usize),
    #[error("the hash chain breaks at byte {0}: the file was altered")]
    Chain(usize),
}

/// A recording read and checked: its header and the records up to the last
/// chain link (anything after it is unverified and left out).
pub struct Parsed<'a> {
    pub header: RdpHeader,
    pub records: Vec<Record<'a>>,
    pub links: usize,
    /// Bytes after the last link (a recording cut by a crash).
    pub unverified_tail: usize,
}

pub fn read(file: &[u8]) -> Result<Parsed<'_>, ReadError> {
    if file.len() < 12 || &file[..8] != MAGIC {
        return Err(ReadError::Magic);
    }
    let hlen = u32::from_le_bytes(file[8..12].try_into().map_err(|_| ReadError::Header)?) as usize;
    let hjson = file.get(12..12 + hlen).ok_or(ReadError::Header)?;
    let header: RdpHeader = serde_json::from_slice(hjson).map_err(|_| ReadError::Header)?;
    let mut chain = [0u8; 32];
    let mut since = Context::new(&SHA256);
    since.update(&file[..12 + hlen]);
    let mut at = 12 + hlen;
    let (mut records, mut pending, mut links, mut verified_end) = (Vec::new(), Vec::new(), 0, at);
    while at < file.len() {
        // A record cut short at the end is what a crash leaves: it is part of the unverified tail.
        let Some(head) = file.get(at..at + RECORD_HEADER) else { break };
        let kind = head[0];
        let at_us = u64::from_le_bytes(head[1..9].try_into().map_err(|_| ReadError::Damaged(at))?);
        let len = u32::from_le_bytes(head[9..13].try_into().map_err(|_| ReadError::Damaged(at))?) as usize;
        if len > MAX_RECORD || kind > LINK {
            return Err(ReadError::Damaged(at));
        }
        let Some(data) = file.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else { break };
        if kind == LINK {
            let expected = next_link(&chain, std::mem::replace(&mut since, Context::new(&SHA256)).finish().as_ref());
            if data != expected {
                return Err(ReadError::Chain(at));
            }
            chain = expected;
            links += 1;
            records.append(&mut pending);
            verified_end = at + RECORD_HEADER + len;
        } else {
            since.update(head);
            since.update(data);
            pending.push(Record { kind, at_us, data });
        }
        at += RECORD_HEADER + len;
    }
    Ok(Parsed { header, records, links, unverified_tail: file.len() - verified_end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RdpHeader {
        RdpHeader {
            version: 1,
            session: "s-1".into(),
            user: "alice@example.test".into(),
            target: "vm2".into(),
            login: "demo".into(),
            started_ms: 0,
            input_recorded: false,
        }
    }

    fn sample() -> Vec<u8> {
        let mut f = RdpFormat::new(&header());
        let mut out = Vec::new();
        f.data(Stream::Input, 1, b"hello", &mut out);
        f.data(Stream::Output, 2, b"world", &mut out);
        f.flush(&mut out);
        f.flush(&mut out); // nothing new: no link
        f.data(Stream::Stderr, 3, br#"{"event":"x"}"#, &mut out);
        f.finish(0, &mut out);
        out
    }

    #[test]
    fn records_read_back_in_order_with_their_chain() {
        let file = sample();
        let parsed = read(&file).unwrap();
        assert_eq!(parsed.header, header());
        assert_eq!(parsed.links, 2);
        assert_eq!(parsed.unverified_tail, 0);
        let kinds: Vec<(u8, &[u8])> = parsed.records.iter().map(|r| (r.kind, r.data)).collect();
        assert_eq!(
            kinds,
            vec![(FROM_CLIENT, &b"hello"[..]), (FROM_TARGET, &b"world"[..]), (EVENT, &br#"{"event":"x"}"#[..])]
        );
    }

    #[test]
    fn a_changed_byte_breaks_the_chain() {
        let mut file = sample();
        let at = file.windows(5).position(|w| w == b"world").unwrap();
        file[at] = b'W';
        assert!(matches!(read(&file), Err(ReadError::Chain(_))));
    }

    #[test]
    fn a_cut_file_is_intact_up_to_its_last_link_and_never_a_panic() {
        let file = sample();
        let header_end = 12 + u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
        for cut in 0..file.len() {
            match read(&file[..cut]) {
                Ok(parsed) => assert!(cut >= header_end && parsed.unverified_tail <= cut - header_end),
                Err(e) => assert!(cut < header_end, "cut at {cut}: {e}"),
            }
        }
        let cut = read(&file[..file.len() - 3]).unwrap();
        assert_eq!(cut.links, 1, "the last link was cut off");
        assert_eq!(cut.records.len(), 2, "only records covered by a link are returned");
    }
}
