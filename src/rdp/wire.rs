//! The first bytes of an RDP connection, parsed by hand: the pre-connection
//! PDU (MS-RDPEPS) that carries the gateway's ticket, and the X.224
//! connection request and confirm (MS-RDPBCGR 2.2.1.1 and 2.2.1.2).
//!
//! Pure functions over byte slices, no I/O: this is what an attacker reaches
//! before being authenticated, so every length is checked, nothing panics,
//! and `fuzz_one` exercises all of it for the fuzz target in `fuzz/`.

/// Security protocols (`requestedProtocols` / `selectedProtocol`).
pub const PROTOCOL_RDP: u32 = 0;
pub const PROTOCOL_SSL: u32 = 1;
pub const PROTOCOL_HYBRID: u32 = 2;
pub const PROTOCOL_RDSTLS: u32 = 4;
pub const PROTOCOL_HYBRID_EX: u32 = 8;

/// RDP_NEG_FAILURE codes.
pub const SSL_REQUIRED_BY_SERVER: u32 = 1;
pub const HYBRID_REQUIRED_BY_SERVER: u32 = 5;

/// Upper bound for a pre-connection PDU (the ticket is a few hundred bytes).
pub const MAX_PCB: usize = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error(
        "the client sent no pre-connection PDU (connect with the .rdp file or /pcb: ticket from `jit-gateway rdp`)"
    )]
    NoPreconnection,
    #[error("malformed pre-connection PDU: {0}")]
    Preconnection(&'static str),
    #[error("malformed TPKT: {0}")]
    Tpkt(&'static str),
    #[error("malformed X.224 connection PDU: {0}")]
    X224(&'static str),
}

/// What a pre-connection PDU carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preconnection {
    pub version: u32,
    pub id: u32,
    /// The blob (version 2 only), decoded from UTF-16 without its terminator.
    pub blob: Option<String>,
}

fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a pre-connection PDU at the start of `buf`. `Ok(None)`: more bytes
/// are needed; `Ok(Some((pdu, n)))`: the PDU took `n` bytes.
pub fn parse_preconnection(buf: &[u8]) -> Result<Option<(Preconnection, usize)>, WireError> {
    if buf.len() >= 2 && buf[0] == 0x03 && buf[1] == 0x00 {
        // A TPKT header: the client went straight to the X.224 request.
        return Err(WireError::NoPreconnection);
    }
    let Some(size) = u32_le(buf, 0) else { return Ok(None) };
    let size = size as usize;
    if size < 16 {
        return Err(WireError::Preconnection("shorter than its header"));
    }
    if size > MAX_PCB {
        return Err(WireError::Preconnection("larger than 16 KiB"));
    }
    if buf.len() < size {
        return Ok(None);
    }
    let pdu = &buf[..size];
    let flags = u32_le(pdu, 4).unwrap_or(0);
    let version = u32_le(pdu, 8).unwrap_or(0);
    let id = u32_le(pdu, 12).unwrap_or(0);
    if flags != 0 {
        return Err(WireError::Preconnection("flags must be zero"));
    }
    let blob = match version {
        1 => None,
        2 => {
            let chars = u16_le(pdu, 16).ok_or(WireError::Preconnection("version 2 without a blob length"))? as usize;
            let bytes = pdu.get(18..18 + chars * 2).ok_or(WireError::Preconnection("blob longer than the PDU"))?;
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
            Some(String::from_utf16(&units[..end]).map_err(|_| WireError::Preconnection("blob is not UTF-16"))?)
        }
        _ => return Err(WireError::Preconnection("unknown version")),
    };
    Ok(Some((Preconnection { version, id, blob }, size)))
}

/// Encodes a version 2 pre-connection PDU (used by tests and the headless client).
pub fn encode_preconnection(blob: &str) -> Vec<u8> {
    let units: Vec<u16> = blob.encode_utf16().chain(std::iter::once(0)).collect();
    let size = 18 + units.len() * 2;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(size as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(units.len() as u16).to_le_bytes());
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

/// The length of the PDU at the start of `buf` (a TPKT frame or a fast-path
/// PDU), when its header is complete.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    if first == 0x03 {
        if buf.len() < 4 {
            return Ok(None);
        }
        if buf[1] != 0 {
            return Err(WireError::Tpkt("reserved byte is not zero"));
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len < 7 {
            return Err(WireError::Tpkt("length shorter than the headers"));
        }
        return Ok(Some(len));
    }
    if first & 0x03 != 0 {
        return Err(WireError::Tpkt("neither a TPKT nor a fast-path PDU"));
    }
    // Fast-path: a PER length in one or two bytes after the header byte.
    let Some(&b1) = buf.get(1) else { return Ok(None) };
    let len = if b1 & 0x80 != 0 {
        let Some(&b2) = buf.get(2) else { return Ok(None) };
        (usize::from(b1 & 0x7f) << 8) | usize::from(b2)
    } else {
        usize::from(b1)
    };
    if len < 2 {
        return Err(WireError::Tpkt("fast-path length shorter than its header"));
    }
    Ok(Some(len))
}

/// Whether a frame is a TPKT frame (X.224) rather than fast-path.
pub fn is_tpkt(frame: &[u8]) -> bool {
    frame.first() == Some(&0x03)
}

/// The client's X.224 Connection Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRequest {
    /// `Cookie: mstshash=...` (the user name hint), without the prefix.
    pub cookie: Option<String>,
    pub requested_protocols: u32,
    pub flags: u8,
}

/// The X.224 payload of a TPKT frame: (TPDU code, the bytes after the fixed part).
fn x224_body(frame: &[u8], code: u8) -> Result<&[u8], WireError> {
    if frame.len() < 11 || frame[0] != 0x03 {
        return Err(WireError::X224("too short for a TPKT and X.224 header"));
    }
    let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
    if len != frame.len() {
        return Err(WireError::X224("TPKT length does not match the frame"));
    }
    let li = usize::from(frame[4]);
    if li < 6 || 5 + li != frame.len() {
        return Err(WireError::X224("X.224 length indicator does not match the frame"));
    }
    if frame[5] & 0xf0 != code {
        return Err(WireError::X224("unexpected TPDU type"));
    }
    Ok(&frame[11..])
}

pub fn parse_connection_request(frame: &[u8]) -> Result<ConnectionRequest, WireError> {
    let mut rest = x224_body(frame, 0xe0)?;
    let mut cookie = None;
    if rest.starts_with(b"Cookie: ") || rest.starts_with(b"Cookie:") {
        let end = rest.windows(2).position(|w| w == b"\r\n").ok_or(WireError::X224("cookie without CR LF"))?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| WireError::X224("cookie is not text"))?;
        cookie =
            Some(text.trim_start_matches("Cookie:").trim().trim_start_matches("mstshash=").chars().take(128).collect());
        rest = &rest[end + 2..];
    }
    let (mut requested_protocols, mut flags) = (PROTOCOL_RDP, 0);
    if !rest.is_empty() {
        if rest.len() < 8 || rest[0] != 0x01 {
            return Err(WireError::X224("expected an RDP negotiation request"));
        }
        if u16_le(rest, 2) != Some(8) {
            return Err(WireError::X224("negotiation request length is not 8"));
        }
        flags = rest[1];
        requested_protocols = u32_le(rest, 4).unwrap_or(0);
        // An RDP_NEG_CORRELATION_INFO (36 bytes) may follow; it is not forwarded.
    }
    Ok(ConnectionRequest { cookie, requested_protocols, flags })
}

fn tpkt_x224(code: u8, src_ref: u16, payload: &[u8]) -> Vec<u8> {
    let len = 11 + payload.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push((6 + payload.len()) as u8);
    out.push(code);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&src_ref.to_be_bytes());
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// The gateway's own Connection Request toward a target.
pub fn encode_connection_request(cookie: &str, requested_protocols: u32) -> Vec<u8> {
    let cookie: String =
        cookie.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')).take(64).collect();
    let mut payload = format!("Cookie: mstshash={cookie}\r\n").into_bytes();
    payload.extend_from_slice(&[0x01, 0x00, 0x08, 0x00]);
    payload.extend_from_slice(&requested_protocols.to_le_bytes());
    tpkt_x224(0xe0, 0, &payload)
}

/// A target's (or the gateway's) answer to a Connection Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionConfirm {
    Selected { protocol: u32, flags: u8 },
    Failure { code: u32 },
}

pub fn parse_connection_confirm(frame: &[u8]) -> Result<ConnectionConfirm, WireError> {
    let rest = x224_body(frame, 0xd0)?;
    if rest.is_empty() {
        return Ok(ConnectionConfirm::Selected { protocol: PROTOCOL_RDP, flags: 0 });
    }
    if rest.len() < 8 || u16_le(rest, 2) != Some(8) {
        return Err(WireError::X224("negotiation response is not 8 bytes"));
    }
    let value = u32_le(rest, 4).unwrap_or(0);
    match rest[0] {
        0x02 => Ok(ConnectionConfirm::Selected { protocol: value, flags: rest[1] }),
        0x03 => Ok(ConnectionConfirm::Failure { code: value }),
        _ => Err(WireError::X224("unknown negotiation response type")),
    }
}

pub fn encode_connection_confirm(confirm: ConnectionConfirm) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8);
    match confirm {
        ConnectionConfirm::Selected { protocol, flags } => {
            payload.extend_from_slice(&[0x02, flags, 0x08, 0x00]);
            payload.extend_from_slice(&protocol.to_le_bytes());
        }
        ConnectionConfirm::Failure { code } => {
            payload.extend_from_slice(&[0x03, 0x00, 0x08, 0x00]);
            payload.extend_from_slice(&code.to_le_bytes());
        }
    }
    tpkt_x224(0xd0, 0x1234, &payload)
}

/// Runs every parser over arbitrary bytes (the fuzz target's body).
pub fn fuzz_one(data: &[u8]) {
    let _ = parse_preconnection(data);
    let mut at = 0;
    while let Ok(Some(n)) = frame_len(&data[at..]) {
        if n == 0 || at + n > data.len() {
            break;
        }
        let frame = &data[at..at + n];
        let _ = parse_connection_request(frame);
        let _ = parse_connection_confirm(frame);
        at += n;
    }
    let _ = parse_connection_request(data);
    let _ = parse_connection_confirm(data);
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
