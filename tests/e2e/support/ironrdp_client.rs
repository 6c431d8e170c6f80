//! A second, independent RDP client: IronRDP's connector driven blocking
//! (ironrdp-blocking), with the gateway's ticket as pre-connection blob, TLS
//! by rustls, and IronRDP's session stage decoding what the server draws.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironrdp_blocking::{Framed, connect_begin, connect_finalize, mark_as_upgraded};
use ironrdp_connector::sspi::generator::NetworkRequest;
use ironrdp_connector::sspi::network_client::NetworkClient;
use ironrdp_connector::{ClientConnector, Config, Credentials, DesktopSize, ServerName};
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_pdu::gcc;
use ironrdp_pdu::rdp::capability_sets::{MajorPlatformType, RailSupportLevel};
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStageBuilder, ActiveStageOutput};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName as TlsName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug)]
pub struct Outcome {
    pub graphics_updates: usize,
    pub width: u16,
    pub height: u16,
    pub drawn_pixels: usize,
}

struct NoNetwork;

impl NetworkClient for NoNetwork {
    fn send(&self, _: &NetworkRequest) -> ironrdp_connector::sspi::Result<Vec<u8>> {
        Err(ironrdp_connector::sspi::Error::new(
            ironrdp_connector::sspi::ErrorKind::NoAuthenticatingAuthority,
            "no network in tests",
        ))
    }
}

/// The gateway's certificate is the test's own; accept it (the ticket is what is under test).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &TlsName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn config(width: u16, height: u16) -> Config {
    Config {
        desktop_size: DesktopSize { width, height },
        monitor_layout: None,
        desktop_scale_factor: 0,
        desktop_physical_size: None,
        desktop_orientation: None,
        device_scale_factor: None,
        monitor_extended_layout: None,
        relative_mouse_input: false,
        enable_tls: true,
        enable_credssp: false,
        enable_standard_rdp_security: false,
        // What the user types does not matter: the gateway logs in with the target's account.
        credentials: Credentials::UsernamePassword { username: "ironrdp".into(), password: "not-the-password".into() },
        domain: None,
        client_build: 0,
        client_name: "ironrdp-test".into(),
        keyboard_type: gcc::KeyboardType::IBM_ENHANCED,
        keyboard_subtype: 0,
        keyboard_functional_keys_count: 12,
        keyboard_layout: 0,
        connection_type: gcc::ConnectionType::Lan,
        ime_file_name: String::new(),
        bitmap: None,
        dig_product_id: String::new(),
        client_dir: String::new(),
        alternate_shell: String::new(),
        work_dir: String::new(),
        remote_application_mode: false,
        rail_support_level: RailSupportLevel::empty(),
        platform: MajorPlatformType::UNIX,
        hardware_id: None,
        request_data: None,
        autologon: true,
        enable_audio_playback: false,
        enable_audio_capture: false,
        performance_flags: Default::default(),
        license_cache: None,
        timezone_info: Default::default(),
        compression_type: None,
        enable_server_pointer: false,
        pointer_software_rendering: false,
        multitransport_flags: None,
        support_dyn_vc_gfx_protocol: false,
    }
}

/// Connects to `addr` with `ticket`, then reads what the server sends for `watch`.
/// A TLS client configuration that accepts the gateway's (test) certificate.
pub fn accept_any_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    )
}

pub fn connect(addr: &str, ticket: &str, watch: Duration) -> Result<Outcome, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|x| format!("connect: {x}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).ok();
    tcp.write_all(&jit_gateway::rdp::wire::encode_preconnection(ticket)).map_err(|x| format!("pcb: {x}"))?;
    let local = tcp.local_addr().map_err(|x| format!("addr: {x}"))?;
    let mut connector = ClientConnector::new(config(1024, 768), local);
    let mut framed = Framed::new(tcp);
    let should_upgrade = connect_begin(&mut framed, &mut connector).map_err(|x| format!("X.224: {x}"))?;
    let mut tcp = framed.into_inner_no_leftover();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(tls), TlsName::try_from("jit-gateway").unwrap())
        .map_err(|x| format!("tls: {x}"))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|x| format!("TLS handshake: {x}"))?;
    }
    let mut framed = Framed::new(rustls::StreamOwned::new(conn, tcp));
    let upgraded = mark_as_upgraded(should_upgrade, &mut connector);
    let result = connect_finalize(
        upgraded,
        connector,
        &mut framed,
        &mut NoNetwork,
        ServerName::new("jit-gateway"),
        Vec::new(),
        None,
    )
    .map_err(|x| format!("connection sequence: {x}"))?;
    let result = match result {
        ironrdp_connector::ConnectionOutcome::Connected(r) => r,
        #[allow(unreachable_patterns)]
        _ => return Err("redirected".into()),
    };
    let (width, height) = (result.desktop_size.width, result.desktop_size.height);
    let mut image = DecodedImage::new(PixelFormat::RgbA32, width, height);
    let mut stage = ActiveStageBuilder {
        static_channels: result.static_channels,
        user_channel_id: result.user_channel_id,
        io_channel_id: result.io_channel_id,
        message_channel_id: result.message_channel_id,
        share_id: result.share_id,
        compression_type: result.compression_type,
        enable_server_pointer: false,
        pointer_software_rendering: false,
    }
    .build();
    framed.get_inner_mut().0.sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut graphics_updates = 0;
    let until = Instant::now() + watch;
    while Instant::now() < until {
        let (action, frame) = match framed.read_pdu() {
            Ok(x) => x,
            Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(err) => return Err(format!("read: {err}")),
        };
        let Ok(outputs) = stage.process(&mut image, action, &frame, None) else { continue };
        for out in outputs {
            match out {
                ActiveStageOutput::ResponseFrame(b) if !b.is_empty() => {
                    framed.write_all(&b).map_err(|x| format!("write: {x}"))?
                }
                ActiveStageOutput::GraphicsUpdate(_) => graphics_updates += 1,
                ActiveStageOutput::Terminate(_) => break,
                _ => {}
            }
        }
    }
    let drawn_pixels = image.data().chunks_exact(4).filter(|p| p[..3] != [0, 0, 0]).count();
    let _ = framed.get_inner_mut().0.sock.shutdown(std::net::Shutdown::Both);
    let mut sink = [0u8; 1];
    let _ = framed.get_inner_mut().0.sock.read(&mut sink);
    Ok(Outcome { graphics_updates, width, height, drawn_pixels })
}
