//! TLS on both legs of an RDP connection.
//!
//! Toward the client the gateway presents its own certificate (`rdp.tls_cert`,
//! or the gateway's `tls.crt`). Toward the target, RDP servers use
//! self-signed certificates, so trust is by pin: the SHA-256 of the
//! certificate from `targets.<name>.rdp_certificate`, or else the one seen on
//! first use, recorded in the store and required from then on. The
//! handshake signature is still verified against the certificate's key.

use std::sync::{Arc, Mutex};

use ring::digest::{SHA256, digest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{RdpConfig, TargetConfig};
use crate::gateway::Gateway;
use crate::store::{AuditEvent, blocking};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What RDP clients are shown: the acceptor and its certificate's
/// fingerprint, loaded once when the gateway opens.
pub struct ClientSide {
    pub acceptor: TlsAcceptor,
    /// SHA-256 of the certificate as FreeRDP writes it (`ab:cd:...`), for
    /// `xfreerdp /cert:fingerprint:sha256:...`.
    pub fingerprint: String,
}

impl ClientSide {
    pub fn load(
        config: &crate::config::Config,
        rdp: &RdpConfig,
        keys: &crate::keys::KeyMaterial,
    ) -> Result<ClientSide, String> {
        let (cert_pem, key_pem) = match (&rdp.tls_cert, &rdp.tls_key) {
            (Some(c), Some(k)) => (
                std::fs::read_to_string(c).map_err(|e| format!("{}: {e}", c.display()))?,
                crate::keys::read_private(k).map_err(|e| e.to_string())?,
            ),
            _ => crate::api::default_identity(config, keys).map_err(|e| e.to_string())?,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("RDP certificate: {e}"))?;
        let first = chain.first().ok_or("RDP certificate: the file holds no certificate")?;
        let hex = data_encoding::HEXLOWER.encode(digest(&SHA256, first.as_ref()).as_ref());
        let fingerprint = hex
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(|e| format!("RDP key: {e}"))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("RDP certificate and key: {e}"))?;
        Ok(ClientSide { acceptor: TlsAcceptor::from(Arc::new(server)), fingerprint })
    }
}

#[derive(Debug)]
struct PinVerifier {
    expected: Option<[u8; 32]>,
    seen: Mutex<Option<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut got = [0u8; 32];
        got.copy_from_slice(digest(&SHA256, end_entity.as_ref()).as_ref());
        if let Some(expected) = self.expected
            && expected != got
        {
            return Err(rustls::Error::General(format!(
                "the target's certificate {} does not match the pinned {}",
                super::format_certificate_pin(&got),
                super::format_certificate_pin(&expected)
            )));
        }
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(got);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn pin_key(target: &str) -> String {
    format!("rdp:{target}")
}

/// TLS toward the target, with its certificate checked against the pin.
pub async fn connect(
    gateway: &Gateway,
    name: &str,
    target: &TargetConfig,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let configured = match &target.rdp_certificate {
        Some(pin) => Some(super::parse_certificate_pin(pin).ok_or("rdp_certificate is not sha256:<hex>")?),
        None => None,
    };
    let key = pin_key(name);
    let stored = blocking(&gateway.store, move |s| s.pinned_host_key(&key)).await.map_err(|e| e.to_string())?;
    let recorded = stored.as_deref().and_then(super::parse_certificate_pin);
    let provider = provider();
    let verifier = Arc::new(PinVerifier {
        expected: configured.or(recorded),
        seen: Mutex::new(None),
        provider: Arc::clone(&provider),
    });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    // RDP servers do not resume sessions the way browsers do; keep it simple.
    client.resumption = rustls::client::Resumption::disabled();
    let server_name = ServerName::try_from(target.address.clone())
        .map_err(|_| format!("`{}` is not a valid TLS server name", target.address))?;
    let stream = TlsConnector::from(Arc::new(client))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    if configured.is_none() && recorded.is_none() {
        let seen = verifier.seen.lock().ok().and_then(|s| *s).ok_or("no certificate seen")?;
        let pin = super::format_certificate_pin(&seen);
        let (key, value) = (pin_key(name), pin.clone());
        blocking(&gateway.store, move |s| s.pin_host_key(&key, &value)).await.map_err(|e| e.to_string())?;
        tracing::info!(target = name, certificate = %pin, "recorded the target's RDP certificate on first use");
        gateway
            .audit(
                AuditEvent::new("rdp.certificate.recorded", "jit-gateway", serde_json::json!({"certificate": pin}))
                    .on(name.to_string()),
            )
            .await;
    }
    Ok(stream)
}

/// The DER bytes of the certificate the target presented (CredSSP binds to its public key).
pub fn peer_certificate(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec())
}
