//! NLA toward the target: CredSSP (NTLM) over the gateway's TLS connection,
//! with the target's configured account. CredSSP binds the exchange to the
//! TLS server key, so it cannot pass through a terminating gateway; the
//! gateway authenticates itself and the client never learns the password.

use ironrdp_connector::credssp::CredsspSequence;
use ironrdp_connector::{Credentials, ServerName};
use ironrdp_core::WriteBuf;
use ironrdp_pdu::nego::SecurityProtocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use x509_cert::der::Decode as _;

use crate::config::RdpCredential;

/// Largest CredSSP message accepted from a target.
const MAX_TS_REQUEST: usize = 64 << 10;

/// The certificate's subjectPublicKey (what CredSSP's pubKeyAuth covers).
fn public_key(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| format!("the target's certificate: {e}"))?;
    let spki = cert.tbs_certificate().subject_public_key_info();
    spki.subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "the target's public key is not byte-aligned".into())
}

pub async fn authenticate(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    credential: &RdpCredential,
    password: &crate::secret::Secret<String>,
    host: &str,
    hybrid_ex: bool,
) -> Result<(), String> {
    let cert = super::tls::peer_certificate(stream).ok_or("the target presented no certificate")?;
    let key = public_key(&cert)?;
    let protocol = if hybrid_ex { SecurityProtocol::HYBRID_EX } else { SecurityProtocol::HYBRID };
    let domain = (!credential.domain.is_empty()).then_some(credential.domain.as_str());
    let credentials =
        Credentials::UsernamePassword { username: credential.username.clone(), password: password.expose().clone() };
    let (mut sequence, mut request) =
        CredsspSequence::init(credentials, domain, protocol, ServerName::new(host), key, None)
            .map_err(|e| format!("NLA: {e}"))?;
    let mut out = WriteBuf::new();
    let mut rx: Vec<u8> = Vec::new();
    loop {
        let state = {
            let mut generator = sequence.process_ts_request(request);
            generator.resolve_to_result().map_err(|e| format!("NLA: {e}"))?
        };
        out.clear();
        let written = sequence.handle_process_result(state, &mut out).map_err(|e| format!("NLA: {e}"))?;
        if let Some(n) = written.size() {
            stream.write_all(&out.filled()[..n]).await.map_err(|e| format!("NLA: {e}"))?;
            stream.flush().await.map_err(|e| format!("NLA: {e}"))?;
        }
        let Some(hint) = sequence.next_pdu_hint() else { return Ok(()) };
        let pdu = loop {
            if let Some((_, len)) =
                hint.find_size(&rx).map_err(|e| format!("NLA: malformed message from the target: {e}"))?
                && rx.len() >= len
            {
                break rx.drain(..len).collect::<Vec<u8>>();
            }
            if rx.len() > MAX_TS_REQUEST {
                return Err("NLA: the target sent an oversized message".into());
            }
            read_some(stream, &mut rx).await?;
        };
        match sequence.decode_server_message(&pdu).map_err(|e| format!("NLA refused: {e}"))? {
            Some(next) => request = next,
            None => return Ok(()),
        }
    }
}

async fn read_some<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, rx: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.map_err(|e| format!("NLA: {e}"))?;
    if n == 0 {
        return Err("NLA: the target closed the connection (wrong credential?)".into());
    }
    rx.extend_from_slice(&chunk[..n]);
    Ok(())
}
