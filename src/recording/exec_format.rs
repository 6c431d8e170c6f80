//! The exec recording format: a gzip stream of frames, so binary output is
//! kept byte for byte (no JSON or base64 inflation) and compresses well.
//!
//! Frame: kind (1 byte) · microseconds since start (u64 BE) · length (u32 BE) · payload.
//! The first frame is a JSON header, the last a JSON trailer; in between,
//! stdout, stderr and (when configured) stdin chunks. Pure: no files here.

use std::io::Read;

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"JITGWEX1";
/// A frame larger than this is refused when decoding (a corrupt or hostile file).
pub const MAX_FRAME: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Header,
    Stdout,
    Stderr,
    Stdin,
    Trailer,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Header => b'H',
            Kind::Stdout => 1,
            Kind::Stderr => 2,
            Kind::Stdin => 3,
            Kind::Trailer => b'T',
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'H' => Kind::Header,
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Stdin,
            b'T' => Kind::Trailer,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecHeader {
    pub recording: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub command: String,
    pub started_ms: i64,
    /// Output bytes kept per channel before only counting and hashing.
    pub output_cap: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecTrailer {
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdin_bytes: u64,
    pub stdout_sha256: String,
    pub stderr_sha256: String,
    /// True when output went past the cap and the rest was only counted and hashed.
    pub capped: bool,
    pub ended_ms: i64,
}

pub fn encode_frame(out: &mut Vec<u8>, kind: Kind, elapsed_us: u64, payload: &[u8]) {
    out.push(kind.byte());
    out.extend_from_slice(&elapsed_us.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    pub elapsed_us: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an exec recording (bad magic)")]
    Magic,
    #[error("frame {index}: {message}")]
    Frame { index: usize, message: String },
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads frames one by one from an (already decompressed) stream.
pub struct Decoder<R> {
    reader: R,
    index: usize,
}

impl<R: Read> Decoder<R> {
    pub fn new(mut reader: R) -> Result<Self, DecodeError> {
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).map_err(|_| DecodeError::Magic)?;
        if &magic != MAGIC {
            return Err(DecodeError::Magic);
        }
        Ok(Decoder { reader, index: 0 })
    }

    /// The next frame, `None` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let mut head = [0u8; 13];
        match self.reader.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let index = self.index;
        let bad = |message: String| DecodeError::Frame { index, message };
        self.reader.read_exact(&mut head[1..]).map_err(|e| bad(format!("truncated header: {e}")))?;
        let kind = Kind::from_byte(head[0]).ok_or_else(|| bad(format!("unknown kind {}", head[0])))?;
        let elapsed_us = u64::from_be_bytes(head[1..9].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[9..13].try_into().unwrap_or_default());
        if len > MAX_FRAME {
            return Err(bad(format!("frame of {len} bytes is too large")));
        }
        let mut payload = vec![0u8; len as usize];
        self.reader.read_exact(&mut payload).map_err(|e| bad(format!("truncated payload: {e}")))?;
        self.index += 1;
        Ok(Some(Frame { kind, elapsed_us, payload }))
    }
}

#[cfg(test)]
#[path = "exec_format_tests.rs"]
mod tests;
