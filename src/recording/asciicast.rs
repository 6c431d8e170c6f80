//! asciicast v2 encoding and decoding (the format `asciinema` plays).
//!
//! Pure: bytes in, lines out. A terminal stream may split a UTF-8 sequence
//! across two packets, so each stream keeps up to three trailing bytes until
//! the rest arrives; bytes that are not UTF-8 at all become U+FFFD, as
//! asciinema itself does.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u8,
    pub width: u32,
    pub height: u32,
    /// Unix seconds when the recording started.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub env: serde_json::Map<String, serde_json::Value>,
}

impl Header {
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        line.push('\n');
        line
    }
}

/// Event codes of asciicast v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Output,
    Input,
    Resize,
    Marker,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::Output => "o",
            Code::Input => "i",
            Code::Resize => "r",
            Code::Marker => "m",
        }
    }
}

/// Turns a byte stream into text, holding back an incomplete trailing UTF-8 sequence.
#[derive(Debug, Default)]
pub struct Utf8Joiner {
    carry: Vec<u8>,
}

impl Utf8Joiner {
    pub fn push(&mut self, data: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(data);
        let keep = incomplete_tail(&bytes);
        self.carry = bytes.split_off(bytes.len() - keep);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whatever is held back, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 sequence that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=3.min(n) {
        let b = bytes[n - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: look further back for the lead byte
        }
        let needed = if b & 0b1110_0000 == 0b1100_0000 {
            2
        } else if b & 0b1111_0000 == 0b1110_0000 {
            3
        } else if b & 0b1111_1000 == 0b1111_0000 {
            4
        } else {
            return 0; // ASCII or invalid lead: nothing to wait for
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// One event line: `[1.234567, "o", "text"]`.
pub fn event_line(elapsed_us: u64, code: Code, text: &str) -> String {
    let mut line = format!("[{}.{:06}, \"{}\", ", elapsed_us / 1_000_000, elapsed_us % 1_000_000, code.as_str());
    line.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into()));
    line.push_str("]\n");
    line
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: f64,
    pub code: String,
    pub data: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("empty recording")]
    Empty,
}

/// Parses a whole asciicast v2 file.
pub fn parse(text: &str) -> Result<(Header, Vec<Event>), ParseError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or(ParseError::Empty)?;
    let header: Header =
        serde_json::from_str(first).map_err(|e| ParseError::Line { line: 1, message: e.to_string() })?;
    if header.version != 2 {
        return Err(ParseError::Line { line: 1, message: format!("version {} is not 2", header.version) });
    }
    let mut events = Vec::new();
    for (i, line) in lines {
        let bad = |message: String| ParseError::Line { line: i + 1, message };
        let (time, code, data): (f64, String, String) = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if !(time.is_finite() && time >= 0.0) {
            return Err(bad(format!("bad time {time}")));
        }
        events.push(Event { time, code, data });
    }
    Ok((header, events))
}

/// Parses a recording that may have been cut by a crash: a damaged last line
/// (a write cut half-way) is left out instead of failing the whole file.
/// Returns whether a line was left out. Damage anywhere else is an error.
pub fn parse_cut(text: &str) -> Result<(Header, Vec<Event>, bool), ParseError> {
    match parse(text) {
        Ok((header, events)) => Ok((header, events, false)),
        Err(ParseError::Line { line, message }) => {
            let last = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).last().map(|(i, _)| i + 1);
            if line < 2 || Some(line) != last || text.ends_with('\n') {
                return Err(ParseError::Line { line, message });
            }
            let cut = text.rfind('\n').map(|at| &text[..=at]).unwrap_or_default();
            parse(cut).map(|(header, events)| (header, events, true))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_line_cut_by_a_crash_is_left_out_and_said() {
        let file =
            "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\n[1.0, \"o\", \"kept\"]\n[2.0, \"o\", \"cu";
        let (_, events, cut) = parse_cut(file).unwrap();
        assert!(cut);
        assert_eq!(events.len(), 1);
        // A damaged line in the middle, or a complete bad last line, is still an error.
        assert!(
            parse_cut("{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\n[1.0, \"o\"\n[2.0, \"o\", \"x\"]\n")
                .is_err()
        );
        assert!(parse_cut("{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\n[1.0, \"o\"\n").is_err());
        assert!(!parse_cut("{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\n").unwrap().2);
    }

    #[test]
    fn split_utf8_is_joined() {
        let text = "héllo ✓ 😀";
        let bytes = text.as_bytes();
        let mut j = Utf8Joiner::default();
        let mut out = String::new();
        for chunk in bytes.chunks(1) {
            out.push_str(&j.push(chunk));
        }
        out.push_str(&j.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut j = Utf8Joiner::default();
        assert_eq!(j.push(b"a\xffb"), "a\u{fffd}b");
        // A lone lead byte at the end waits, then is replaced at the end of stream.
        assert_eq!(j.push(b"c\xe2"), "c");
        assert_eq!(j.finish(), "\u{fffd}");
    }

    #[test]
    fn lines_round_trip() {
        let header = Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 1_800_000_000,
            command: None,
            title: Some("alice@vm1".into()),
            env: serde_json::Map::new(),
        };
        let mut file = header.to_line();
        file.push_str(&event_line(1_500_000, Code::Output, "a \"quoted\"\r\n\u{1b}[0m"));
        file.push_str(&event_line(2_000_001, Code::Resize, "100x40"));
        let (h, events) = parse(&file).unwrap();
        assert_eq!(h, header);
        assert_eq!(events[0], Event { time: 1.5, code: "o".into(), data: "a \"quoted\"\r\n\u{1b}[0m".into() });
        assert_eq!(events[1].code, "r");
        assert!((events[1].time - 2.000001).abs() < 1e-9);
    }

    #[test]
    fn garbage_is_an_error_with_a_line_number() {
        let err = parse("{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\n[1.0, \"o\"\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2"), "{err}");
        assert!(parse("").is_err());
        assert!(parse("{\"version\":1,\"width\":80,\"height\":24,\"timestamp\":0}").is_err());
    }
}
