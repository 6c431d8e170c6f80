//! The per-flush hash chain of terminal, exec and sftp recordings, kept in a
//! sidecar file `r-<id>.chain` beside the recording so the recording itself
//! stays a plain asciicast (or gzip, or JSON lines) file.
//!
//! ```text
//! chain = "jit-gateway chain 1 " recording-id "\n" link*
//! link  = end " " hex(sha256(previous-link || sha256(recording[previous-end..end]))) "\n"
//! ```
//!
//! The first link chains from 32 zero bytes, as RDP recordings do. The writer
//! appends a link every time it writes to the recording (at least once per
//! `flush_interval`), after the bytes it covers, so a file cut by a crash is
//! provably intact up to its last link, and an edit or a cut between two
//! links breaks the chain. The manifest signs the chain's head. Pure: bytes
//! in, verdict out (no files here).

use ring::digest::{Context, SHA256};

/// The first line's fixed part.
pub const MAGIC: &str = "jit-gateway chain 1 ";
/// A chain file longer than this is refused (a link is ~80 bytes; this is years of flushes).
pub const MAX_CHAIN: usize = 256 << 20;

/// The link after `prev`; `since` is the SHA-256 of the bytes it covers (as in RDP recordings).
pub fn next_link(prev: &[u8; 32], since: &[u8]) -> [u8; 32] {
    let mut c = Context::new(&SHA256);
    c.update(prev);
    c.update(since);
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// The first line of a recording's chain file.
pub fn header_line(recording: &str) -> String {
    format!("{MAGIC}{recording}\n")
}

/// One link line: the recording's length after the bytes it covers, and the link.
pub fn link_line(end: u64, link: &[u8; 32]) -> String {
    format!("{end} {}\n", data_encoding::HEXLOWER.encode(link))
}

/// Builds the chain as the writer writes: feed it every byte written, and take a link after each write.
pub struct ChainBuilder {
    head: [u8; 32],
    since: Context,
    end: u64,
    dirty: bool,
    links: u64,
}

impl Default for ChainBuilder {
    fn default() -> Self {
        ChainBuilder { head: [0; 32], since: Context::new(&SHA256), end: 0, dirty: false, links: 0 }
    }
}

impl ChainBuilder {
    pub fn written(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.since.update(bytes);
        self.end += bytes.len() as u64;
        self.dirty = true;
    }

    /// The next link line, if anything was written since the last one.
    pub fn link(&mut self) -> Option<String> {
        if !self.dirty {
            return None;
        }
        let since = std::mem::replace(&mut self.since, Context::new(&SHA256)).finish();
        self.head = next_link(&self.head, since.as_ref());
        self.dirty = false;
        self.links += 1;
        Some(link_line(self.end, &self.head))
    }

    pub fn summary(&self) -> ChainSummary {
        ChainSummary { links: self.links, covered: self.end, head: data_encoding::HEXLOWER.encode(&self.head) }
    }
}

/// What a chain proves: how many links, how many bytes of the recording they cover, and the last link.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainSummary {
    pub links: u64,
    /// Bytes of the recording covered by the last link.
    pub covered: u64,
    /// The last link (hex); 64 zeros when there is none.
    pub head: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the chain file is not a jit-gateway chain")]
    Magic,
    #[error("the chain file belongs to recording {found}, not {expected}: the files were swapped")]
    OtherRecording { found: String, expected: String },
    #[error("line {line} of the chain file is damaged")]
    Line { line: usize },
    #[error("the recording is cut: the chain covers {end} bytes but the file has {len}")]
    Cut { end: u64, len: u64 },
    #[error("the hash chain breaks between bytes {from} and {to}: the recording was altered there")]
    Broken { from: u64, to: u64 },
}

/// The verdict on a recording and its chain file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub summary: ChainSummary,
    /// Bytes of the recording after the last link (written when the gateway stopped, or never linked).
    pub unverified_tail: u64,
    /// The chain file ends in a partial line (the gateway stopped while writing it); it was ignored.
    pub torn_line: bool,
}

/// Checks `recording` (the whole file) against its chain file. A torn last
/// line is ignored (a crash while appending it); anything else that does not
/// fit is an error naming where.
pub fn check(chain: &[u8], recording: &[u8], recording_id: &str) -> Result<Checked, ChainError> {
    if chain.len() > MAX_CHAIN {
        return Err(ChainError::Line { line: 1 });
    }
    let (complete, torn_line) = match chain.iter().rposition(|b| *b == b'\n') {
        Some(last) => (&chain[..=last], last + 1 < chain.len()),
        None => return Err(ChainError::Magic),
    };
    let mut lines = complete.split(|b| *b == b'\n');
    let first = lines.next().ok_or(ChainError::Magic)?;
    let first = std::str::from_utf8(first).map_err(|_| ChainError::Magic)?;
    let found = first.strip_prefix(MAGIC).ok_or(ChainError::Magic)?;
    if found != recording_id {
        return Err(ChainError::OtherRecording { found: found.to_string(), expected: recording_id.to_string() });
    }
    let mut head = [0u8; 32];
    let (mut end, mut links) = (0u64, 0u64);
    for (i, line) in lines.enumerate() {
        if line.is_empty() {
            continue; // the split after the final newline
        }
        let number = i + 2;
        let (next_end, link) = parse_link(line).ok_or(ChainError::Line { line: number })?;
        if next_end <= end {
            return Err(ChainError::Line { line: number });
        }
        let len = recording.len() as u64;
        if next_end > len {
            return Err(ChainError::Cut { end: next_end, len });
        }
        // In range: next_end <= recording.len(), which fits in usize.
        let since = ring::digest::digest(&SHA256, &recording[end as usize..next_end as usize]);
        let expected = next_link(&head, since.as_ref());
        if expected != link {
            return Err(ChainError::Broken { from: end, to: next_end });
        }
        head = link;
        end = next_end;
        links += 1;
    }
    Ok(Checked {
        summary: ChainSummary { links, covered: end, head: data_encoding::HEXLOWER.encode(&head) },
        unverified_tail: recording.len() as u64 - end,
        torn_line,
    })
}

fn parse_link(line: &[u8]) -> Option<(u64, [u8; 32])> {
    let text = std::str::from_utf8(line).ok()?;
    let (end, hex) = text.split_once(' ')?;
    if end.is_empty() || !end.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let end: u64 = end.parse().ok()?;
    let bytes = data_encoding::HEXLOWER.decode(hex.as_bytes()).ok()?;
    bytes.try_into().ok().map(|link| (end, link))
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
