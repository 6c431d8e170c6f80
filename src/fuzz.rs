//! Entry points for the fuzz targets in `fuzz/` (`scripts/fuzz`): one
//! function per parser of untrusted input, each taking arbitrary bytes.
//!
//! They live in the crate, not in `fuzz/`, so that the harness stays thin
//! (each target is one call) and a change to a parser's signature breaks the
//! normal build here, not only the nightly fuzz build. Every function must
//! return normally on any input: a panic, an abort, a hang or an allocation
//! beyond libFuzzer's limit is a finding. Nothing here is used by the gateway.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Splits fuzz input into chunks: the first byte of each chunk gives its length.
fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&n, rest) = data.split_first()?;
        let n = (usize::from(n) + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        data = tail;
        Some(chunk)
    })
}

/// A scratch directory of this process for the readers that take a path
/// (in memory when `/dev/shm` exists: these targets write a file per input).
fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("jitgw-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// The RDP pre-connection PDU and X.224 negotiation (`rdp/wire.rs`): what an
/// unauthenticated client reaches first. What parses must re-encode and parse
/// back to the same value.
pub fn rdp_wire(data: &[u8]) {
    use crate::rdp::wire;
    wire::fuzz_one(data);
    if let Ok(Some((pdu, _))) = wire::parse_preconnection(data)
        && let Some(blob) = pdu.blob
    {
        let again = wire::encode_preconnection(&blob);
        match wire::parse_preconnection(&again) {
            Ok(Some((back, n))) => {
                assert_eq!(n, again.len());
                assert_eq!(back.blob.as_deref(), Some(blob.as_str()));
            }
            other => panic!("own pre-connection PDU does not parse: {other:?}"),
        }
    }
    if let Ok(request) = wire::parse_connection_request(data) {
        let again =
            wire::encode_connection_request(request.cookie.as_deref().unwrap_or(""), request.requested_protocols);
        assert_eq!(
            wire::parse_connection_request(&again).map(|r| r.requested_protocols),
            Ok(request.requested_protocols)
        );
    }
}

/// The RDP relay after TLS (`rdp/rewrite.rs`): framing of both streams into
/// TPKT / fast-path PDUs, and the rewriting of the Connect-Initial,
/// Connect-Response, Client Info and Confirm Active PDUs. Both sides are
/// untrusted: a client holds a ticket, a target may be compromised.
pub fn rdp_rewrite(data: &[u8]) {
    use crate::rdp::rewrite;
    // Framing, as the relay does it, on the input cut into reads.
    let mut reader = ChunkedReader { chunks: chunks(data).collect(), at: 0 };
    let mut framer = rewrite::Framer::new("fuzz");
    let mut frames = Vec::new();
    loop {
        let mut next = pin!(framer.next(&mut reader));
        match next.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(Some(frame))) => frames.push(frame),
            Poll::Ready(Ok(None) | Err(_)) => break,
            Poll::Pending => panic!("the framer waits on a reader that is always ready"),
        }
    }
    let blocked = rewrite::SharedBlocked::default();
    let allow = rewrite::Allowances { clipboard: data.first().is_some_and(|b| b & 1 == 1), drives: false };
    let credential = crate::config::RdpCredential {
        username: "fuzz".into(),
        domain: "DOMAIN".into(),
        password_file: None,
        password_env: None,
    };
    for frame in frames.iter().map(|f| f.as_ref()).chain(std::iter::once(data)) {
        let _ = rewrite::connect_initial(frame, 3, allow, &blocked);
        let _ = rewrite::connect_response(frame, 3, &blocked);
        let _ = rewrite::client_info(frame, None);
        let _ = rewrite::client_info(frame, Some((&credential, "password")));
        let _ = rewrite::confirm_active(frame);
        let _ = rewrite::on_blocked_channel(&blocked, frame);
    }
}

/// An `AsyncRead` over fixed chunks, always ready (the framer never waits).
struct ChunkedReader<'a> {
    chunks: Vec<&'a [u8]>,
    at: usize,
}

impl tokio::io::AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(chunk) = self.chunks.get(self.at) {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            let rest = &chunk[n..];
            if rest.is_empty() {
                self.at += 1;
            } else {
                let at = self.at;
                self.chunks[at] = rest;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The SFTP watcher (`recording/sftp.rs`) on both directions: the first byte
/// of each chunk (after its length) says whose it is.
pub fn sftp(data: &[u8]) {
    let mut tracker = crate::recording::sftp::SftpTracker::new();
    for chunk in chunks(data) {
        match chunk.split_first() {
            Some((who, bytes)) if who & 1 == 0 => tracker.client_data(bytes),
            Some((_, bytes)) => tracker.server_data(bytes),
            None => {}
        }
        let _ = tracker.take_events();
    }
    let _ = tracker.finish();
}

/// `jit-gateway replay` on a terminal (`.cast`), exec (`.exec.gz`) or sftp
/// (`.sftp.jsonl`) recording someone may have altered; the first byte picks
/// the kind. Exec input is gzip-compressed first, so the fuzzer shapes what
/// the decoder reads.
pub fn replay(data: &[u8]) {
    use std::io::Write;
    let Some((&kind, body)) = data.split_first() else { return };
    let _ = crate::recording::asciicast::parse(&String::from_utf8_lossy(body));
    let mut decoder = crate::recording::exec_format::Decoder::new(body);
    if let Ok(d) = decoder.as_mut() {
        while let Ok(Some(_)) = d.next_frame() {}
    }
    let (name, bytes): (&str, Cow<'_, [u8]>) = match kind % 3 {
        0 => ("r-fuzz.cast", Cow::Borrowed(body)),
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(body);
            ("r-fuzz.exec.gz", Cow::Owned(gz.finish().unwrap_or_default()))
        }
        _ => ("r-fuzz.sftp.jsonl", Cow::Borrowed(body)),
    };
    let path = scratch().join(name);
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    // Paced as a user would replay it, with every wait cut to zero (`--max-idle 0`).
    let options =
        crate::replay::ReplayOptions { speed: 1.0, max_idle: Some(std::time::Duration::ZERO), instant: false };
    let _ = crate::replay::replay(&path, &options, &mut std::io::sink(), &mut std::io::sink());
}

/// RDP recordings (`recording/rdp_format.rs`) as read, and as rendered by
/// `jit-gateway replay` (IronRDP decoding the recorded target stream). The
/// chain hash is not keyed, so whoever alters a file can also fix its chain:
/// the input is also written as a well-formed recording and rendered.
pub fn rdprec(data: &[u8]) {
    use crate::recording::Stream;
    use crate::recording::formats::Format;
    use crate::recording::rdp_format::{RdpFormat, RdpHeader, read};
    if let Ok(parsed) = read(data) {
        let _ = parsed.records.len();
    }
    let header = RdpHeader {
        version: 1,
        session: "s-fuzz".into(),
        user: "fuzz@example.test".into(),
        target: "vm".into(),
        login: "fuzz".into(),
        started_ms: 0,
        input_recorded: false,
    };
    let mut format = RdpFormat::new(&header);
    let mut file = Vec::new();
    for (i, chunk) in chunks(data).enumerate() {
        format.data(Stream::Output, i as u64 * 100_000, chunk, &mut file);
        if i % 4 == 3 {
            format.flush(&mut file);
        }
    }
    format.finish(0, &mut file);
    // Every frame is decoded as replay does; writing PNGs of them is left out (our own encoder, our own pixels).
    let _ = crate::rdp::replay::render_with(&file, std::time::Duration::from_millis(250), |_, _| Ok(None));
}

/// `jit-gateway verify`: a recording's manifest (JSON with an SSHSIG) as an
/// attacker may have rewritten it, beside a recording file.
pub fn manifest(data: &[u8]) {
    static KEY: std::sync::OnceLock<russh::keys::PublicKey> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let seed = [7u8; 32];
        let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
        russh::keys::PrivateKey::from(pair).public_key().clone()
    });
    static RECORDING: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let recording = RECORDING.get_or_init(|| {
        let path = scratch().join("r-fuzz.cast");
        let _ = std::fs::write(&path, b"{\"version\": 2}\n");
        path
    });
    let manifest = crate::recording::seal::manifest_path(recording);
    if std::fs::write(&manifest, data).is_err() {
        return;
    }
    let _ = crate::recording::seal::verify(recording, key);
}

/// `jit-gateway verify` and the start-up recovery: a recording's chain file
/// (`r-<id>.chain`) as an attacker may have rewritten it, against recording
/// bytes. The input's first two bytes say where the chain file ends.
pub fn chain(data: &[u8]) {
    use crate::recording::chain;
    let split = data.get(..2).map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let rest = data.get(2..).unwrap_or_default();
    let (file, recording) = rest.split_at(split.min(rest.len()));
    let _ = chain::check(file, recording, "r-fuzz");
    // A chain this crate writes over the same bytes always checks.
    let mut text = chain::header_line("r-fuzz");
    let mut head = [0u8; 32];
    let mut end = 0usize;
    while end < recording.len() {
        // Contiguous flushes, their sizes taken from the bytes themselves.
        let next = (end + usize::from(recording[end] % 64) + 1).min(recording.len());
        let since = ring::digest::digest(&ring::digest::SHA256, &recording[end..next]);
        head = chain::next_link(&head, since.as_ref());
        end = next;
        text.push_str(&chain::link_line(end as u64, &head));
    }
    if end > 0 {
        assert!(chain::check(text.as_bytes(), recording, "r-fuzz").is_ok(), "own chain does not check");
    }
}

/// What the HTTPS API and the RDP listener parse by hand: bearer tokens, RDP
/// tickets (the pre-connection blob), redirect URIs, durations and times in
/// request bodies, and the request bodies themselves.
pub fn api_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let key = b"fuzzing key, 32 bytes long......";
    let _ = crate::api::auth::check_token(key, &text);
    let _ = crate::rdp::ticket::verify(key, &text, 0);
    let _ = crate::api::auth::loopback_redirect(&text);
    let _ = crate::api::handlers::parse_request_times(&text, Some(&text));
    let _ = serde_json::from_slice::<crate::api::handlers::NewRequest>(data);
    let _ = serde_json::from_slice::<crate::admin::protocol::Request>(data);
}

#[cfg(test)]
mod tests {
    /// Each entry point runs on a few inputs (the fuzz targets are built with nightly only).
    #[test]
    fn every_entry_point_takes_arbitrary_bytes() {
        let inputs: [&[u8]; 4] = [
            b"",
            b"\x00",
            b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x03\x00\x00\x00",
            &[0xff; 64],
        ];
        for data in inputs {
            super::rdp_wire(data);
            super::rdp_rewrite(data);
            super::sftp(data);
            super::replay(data);
            super::rdprec(data);
            super::manifest(data);
            super::api_input(data);
        }
    }
}
