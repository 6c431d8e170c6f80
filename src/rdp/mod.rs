//! RDP through the gateway.
//!
//! A client (mstsc, FreeRDP) opens the `.rdp` file from `jit-gateway rdp`:
//! it connects here and sends the ticket as its pre-connection blob. The
//! gateway checks the ticket (signature, expiry, single use, grant still
//! live), opens the target's port, connects to the target and negotiates
//! TLS (or NLA, logging in with the target's configured account), answers
//! the client with TLS under the gateway's certificate, and relays the
//! decrypted stream while recording it. Two PDUs are rewritten on the way:
//! the MCS Connect-Initial (the security protocol the target chose, and the
//! clipboard and drive channels the grant does not allow) and the Client
//! Info PDU (the target's account, instead of whatever the user typed).
//!
//! Once the ticket is checked, the session is registered (starting), so a
//! revocation or expiry of its grant ends it even mid-handshake; it goes live
//! only if the grant, read again by ID, still holds. The client's side of the
//! connection sequence, from its first byte to its Client Info PDU, runs
//! under `rdp.handshake_timeout`; a refusal closes the connection.

mod credssp;
pub mod replay;
pub(crate) mod rewrite;
pub mod ticket;
pub mod tls;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{RdpConfig, TargetConfig};
use crate::gateway::Gateway;
use crate::limits::{Full, Limiter, Permit, Reason, Source};
use crate::recording::{Recorder, RecordingMeta, Stream};
use crate::sessions::{EndSignal, LiveSession, SessionGuard, SessionState};
use crate::store::{AuditEvent, Protocol, RecordingKind, SessionRecord, blocking};
use wire::{ConnectionConfirm, PROTOCOL_HYBRID, PROTOCOL_HYBRID_EX, PROTOCOL_SSL};

/// Largest PDU either side may send before the relay (a Connect-Initial is a few KiB).
const MAX_HANDSHAKE_PDU: usize = 64 << 10;

/// `sha256:<hex>` → the 32 bytes.
pub fn parse_certificate_pin(pin: &str) -> Option<[u8; 32]> {
    let hex = pin.trim().strip_prefix("sha256:")?.replace(':', "");
    let bytes = data_encoding::HEXLOWER_PERMISSIVE.decode(hex.as_bytes()).ok()?;
    bytes.try_into().ok()
}

pub fn format_certificate_pin(digest: &[u8]) -> String {
    format!("sha256:{}", data_encoding::HEXLOWER.encode(digest))
}

/// Why a connection was refused. The text goes to the gateway log and,
/// for ticket problems, the audit log; the client only sees the connection close.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("{0}")]
    Ticket(#[from] ticket::TicketError),
    #[error("the ticket was used before (tickets are single-use: run `jit-gateway rdp` again)")]
    Replayed,
    #[error("{0}")]
    Denied(String),
    #[error("target {target}: {message}")]
    Target { target: String, message: String },
    #[error("the client {0}")]
    Client(String),
    #[error("the connection sequence took longer than {0:?}")]
    Timeout(Duration),
    /// The grant ended (or the session was ended) during the handshake.
    #[error("{0}")]
    Ended(String),
    #[error("{0}")]
    Internal(String),
}

impl Refused {
    /// Refusals worth an audit record (someone presented a ticket).
    fn audited(&self) -> bool {
        matches!(
            self,
            Refused::Ticket(_) | Refused::Replayed | Refused::Denied(_) | Refused::Target { .. } | Refused::Ended(_)
        )
    }

    /// For a refusal before a ticket was accepted (anyone can cause those): the
    /// reason it is counted under, instead of an audit record of its own.
    fn anonymous(&self, claims: Option<&ticket::Claims>) -> Option<Reason> {
        match self {
            // Replays are counted, not audited one by one: the first use was audited, and
            // whoever replays a ticket is not necessarily the person it names.
            Refused::Replayed => Some(Reason::RdpReplayedTicket),
            _ if claims.is_some() => None,
            Refused::Ticket(_) => Some(Reason::RdpBadTicket),
            Refused::Wire(wire::WireError::Preconnection(_) | wire::WireError::NoPreconnection) => {
                Some(Reason::RdpBadTicket)
            }
            _ => Some(Reason::RdpMalformed),
        }
    }
}

pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener, shutdown: CancellationToken) {
    let Some(rdp) = gateway.config.rdp.as_ref() else { return };
    let handshakes = Limiter::new(rdp.max_handshakes_per_source, rdp.max_handshakes);
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let permit = match handshakes.try_acquire(Source::of(peer.ip())) {
                        Ok(permit) => permit,
                        Err(full) => {
                            gateway.refused(peer.ip(), match full {
                                Full::Source => Reason::RdpHandshakesPerSource,
                                Full::Everyone => Reason::RdpHandshakesTotal,
                            });
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    let gw = Arc::clone(&gateway);
                    connections.spawn(async move { connection(gw, socket, peer, permit).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "RDP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(4), connections.wait()).await;
}

/// Everything the relay needs once both sides speak TLS.
struct Ready {
    client: tokio_rustls::server::TlsStream<TcpStream>,
    target: tokio_rustls::client::TlsStream<TcpStream>,
    claims: ticket::Claims,
    target_config: TargetConfig,
    client_requested: u32,
    target_selected: u32,
    /// The target account's password, when one is configured.
    password: Option<crate::secret::Secret<String>>,
    /// The redirections the grant allows.
    allow: rewrite::Allowances,
    _hold: crate::ports::SessionHold,
}

async fn connection(gateway: Arc<Gateway>, socket: TcpStream, peer: SocketAddr, permit: Permit) {
    let Some(config) = gateway.config.rdp.clone() else { return };
    // On a refusal the socket is dropped inside `attempt`: the client sees the connection close.
    let result = attempt(&gateway, &config, socket, peer).await;
    drop(permit);
    match result {
        Ok((ready, starting)) => relay(gateway, &config, ready, peer, starting).await,
        Err((refused, claims)) => {
            if let Some(reason) = refused.anonymous(claims.as_ref()) {
                tracing::debug!(%peer, reason = %refused, "RDP connection refused before a ticket was accepted");
                gateway.refused(peer.ip(), reason);
                return;
            }
            tracing::info!(%peer, reason = %refused, "RDP connection refused");
            if refused.audited() {
                let (actor, target) = claims
                    .as_ref()
                    .map(|c| (c.user.clone(), Some(c.target.clone())))
                    .unwrap_or(("unknown".into(), None));
                let mut event = AuditEvent::new(
                    "rdp.refused",
                    actor,
                    serde_json::json!({"client": peer.ip().to_string(), "reason": refused.to_string()}),
                );
                if let Some(t) = target {
                    event = event.on(t);
                }
                gateway.audit(event).await;
            }
        }
    }
}

/// Reads until `parse` has a PDU, at most `MAX_HANDSHAKE_PDU` bytes.
async fn read_pdu<S, T>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, wire::WireError>,
) -> Result<T, Refused>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((pdu, n)) = parse(buf)? {
            buf.drain(..n);
            return Ok(pdu);
        }
        if buf.len() >= MAX_HANDSHAKE_PDU {
            return Err(Refused::Client("sent an oversized PDU".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| Refused::Client(format!("connection failed: {e}")))?;
        if n == 0 {
            return Err(Refused::Client("closed the connection during the handshake".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One whole TPKT/fast-path frame.
fn take_frame(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, wire::WireError> {
    match wire::frame_len(buf)? {
        Some(n) if buf.len() >= n => Ok(Some((buf[..n].to_vec(), n))),
        _ => Ok(None),
    }
}

type HandshakeError = (Refused, Option<ticket::Claims>);

/// A session registered (starting) before its slow setup, so that its grant's end reaches it.
struct Starting {
    id: String,
    end: EndSignal,
    started_ms: i64,
    /// The end of the client's time for the connection sequence (`rdp.handshake_timeout`).
    deadline: tokio::time::Instant,
    _registration: SessionGuard,
}

/// The ticket first; then, registered, the rest of the handshake under the
/// client's deadline and the grant's end; then live only if the grant,
/// read again by ID, still holds.
async fn attempt(
    gateway: &Arc<Gateway>,
    config: &RdpConfig,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(Ready, Starting), HandshakeError> {
    let limit = config.handshake_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let admitted = tokio::time::timeout_at(deadline, admit(gateway, &mut tcp))
        .await
        .unwrap_or(Err((Refused::Timeout(limit), None)))?;
    let claims = admitted.claims.clone();
    let now = gateway.clock.now_ms();
    let id = crate::ids::new_id("s");
    let end = EndSignal::new();
    let info = LiveSession {
        id: id.clone(),
        user: claims.user.clone(),
        target: claims.target.clone(),
        login: claims.login.clone(),
        protocol: Protocol::Rdp,
        grant_id: claims.grant.clone(),
        client_ip: Some(peer.ip().to_string()),
        started_ms: now,
        state: SessionState::Starting,
    };
    let registration = gateway.sessions.register(info, end.clone(), admitted.permit.expires_at_ms, now);
    let starting = Starting { id, end: end.clone(), started_ms: now, deadline, _registration: registration };
    let ready = tokio::select! {
        biased;
        reason = end.ended() => Err((Refused::Ended(reason), Some(claims.clone()))),
        r = tokio::time::timeout_at(deadline, handshake(gateway, tcp, admitted)) => match r {
            Ok(done) => done,
            Err(_) => Err((Refused::Timeout(limit), Some(claims.clone()))),
        }
    }?;
    let (sessions, session_id, now) = (Arc::clone(&gateway.sessions), starting.id.clone(), gateway.clock.now_ms());
    blocking(&gateway.store, move |s| Ok(sessions.go_live(&session_id, s, now)))
        .await
        .map_err(|e| (Refused::Internal(e.to_string()), Some(claims.clone())))?
        .map_err(|refused| (Refused::Ended(refused.to_string()), Some(claims.clone())))?;
    Ok((ready, starting))
}

/// What a valid ticket admits, before anything is sent to the client or the target.
struct Admitted {
    claims: ticket::Claims,
    grant: crate::store::Grant,
    permit: crate::access::Permit,
    target_config: TargetConfig,
    rdp_port: u16,
    /// Bytes read after the pre-connection PDU.
    buf: Vec<u8>,
}

async fn admit(gateway: &Arc<Gateway>, tcp: &mut TcpStream) -> Result<Admitted, HandshakeError> {
    let mut buf = Vec::new();
    let pcb = read_pdu(tcp, &mut buf, wire::parse_preconnection).await.map_err(|e| (e, None))?;
    let blob = pcb.blob.ok_or((Refused::Wire(wire::WireError::Preconnection("version 1 carries no ticket")), None))?;
    let now = gateway.clock.now_ms();
    let claims = ticket::verify(gateway.keys.token_key(), &blob, now).map_err(|e| (e.into(), None))?;
    let fail = |r: Refused| (r, Some(claims.clone()));

    // Single use: recorded before anything else happens with it.
    let (jti, until) = (claims.jti.clone(), claims.expires_ms);
    let fresh = blocking(&gateway.store, move |s| s.use_ticket(&jti, until, now))
        .await
        .map_err(|e| fail(Refused::Internal(e.to_string())))?;
    if !fresh {
        return Err(fail(Refused::Replayed));
    }
    let grant_id = claims.grant.clone();
    let grant = blocking(&gateway.store, move |s| s.grant(&grant_id))
        .await
        .map_err(|e| fail(Refused::Internal(e.to_string())))?
        .ok_or_else(|| fail(Refused::Denied(format!("grant {} no longer exists", claims.grant))))?;
    let permit = crate::access::check_login(
        std::slice::from_ref(&grant),
        &claims.user,
        &claims.target,
        Protocol::Rdp,
        &claims.login,
        now,
    )
    .map_err(|d| fail(Refused::Denied(d.to_string())))?;
    let target_config = gateway
        .inventory
        .get(&claims.target)
        .ok_or_else(|| fail(Refused::Denied(format!("`{}` is no longer a target of this gateway", claims.target))))?;
    let Some(rdp_port) = target_config.rdp_port else {
        return Err(fail(Refused::Denied(format!("{} is not configured for RDP", claims.target))));
    };
    Ok(Admitted { claims, grant, permit, target_config, rdp_port, buf })
}

/// The client's X.224 request, the port, the target's side (TCP, X.224, TLS,
/// CredSSP), then the client's TLS.
async fn handshake(gateway: &Arc<Gateway>, mut tcp: TcpStream, admitted: Admitted) -> Result<Ready, HandshakeError> {
    let Admitted { claims, grant, permit, target_config, rdp_port, mut buf } = admitted;
    let fail = |r: Refused| (r, Some(claims.clone()));

    // The client's X.224 Connection Request follows the ticket.
    let request_frame = read_pdu(&mut tcp, &mut buf, take_frame).await.map_err(fail)?;
    let request = wire::parse_connection_request(&request_frame).map_err(|e| fail(e.into()))?;
    if request.requested_protocols & PROTOCOL_SSL == 0 {
        let _ = tcp
            .write_all(&wire::encode_connection_confirm(ConnectionConfirm::Failure {
                code: wire::SSL_REQUIRED_BY_SERVER,
            }))
            .await;
        return Err(fail(Refused::Client("does not offer TLS (standard RDP security is not supported)".into())));
    }
    if !buf.is_empty() {
        return Err(fail(Refused::Client("sent data before the gateway answered".into())));
    }

    let target_err = |message: String| fail(Refused::Target { target: claims.target.clone(), message });
    let hold = gateway
        .ports
        .ensure_detached(&permit.grant_id, &claims.target, &target_config, rdp_port, permit.expires_at_ms)
        .await
        .map_err(|e| target_err(format!("its port could not be opened: {e}")))?;
    let address = (target_config.address.as_str(), rdp_port);
    let mut upstream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
        .await
        .map_err(|_| target_err("connection timed out".into()))?
        .map_err(|e| target_err(format!("cannot connect: {e}")))?;
    let _ = upstream.set_nodelay(true);
    let credential = target_config.rdp_credential.clone();
    // Read now, so a missing secret refuses the connection before the client is answered.
    let password = match &credential {
        Some(c) => Some(c.password().map_err(|e| target_err(format!("its RDP credential: {e}")))?),
        None => None,
    };
    let offer = if credential.is_some() { PROTOCOL_SSL | PROTOCOL_HYBRID | PROTOCOL_HYBRID_EX } else { PROTOCOL_SSL };
    upstream
        .write_all(&wire::encode_connection_request(&claims.login, offer))
        .await
        .map_err(|e| target_err(e.to_string()))?;
    let mut ubuf = Vec::new();
    let confirm_frame = read_pdu(&mut upstream, &mut ubuf, take_frame).await.map_err(|e| target_err(e.to_string()))?;
    let confirm = wire::parse_connection_confirm(&confirm_frame).map_err(|e| target_err(e.to_string()))?;
    let (selected, flags) = match confirm {
        ConnectionConfirm::Selected { protocol, flags }
            if matches!(protocol, PROTOCOL_SSL | PROTOCOL_HYBRID | PROTOCOL_HYBRID_EX) =>
        {
            (protocol, flags)
        }
        ConnectionConfirm::Selected { protocol, .. } => {
            return Err(target_err(format!(
                "chose security protocol {protocol}, which the gateway cannot record (TLS or NLA needed)"
            )));
        }
        ConnectionConfirm::Failure { code } if code == wire::HYBRID_REQUIRED_BY_SERVER => {
            return Err(target_err("requires NLA: configure targets.<name>.rdp_credential".into()));
        }
        ConnectionConfirm::Failure { code } => {
            return Err(target_err(format!("refused the negotiation (code {code})")));
        }
    };

    // Target side first: its certificate is checked before the client gets anything.
    let mut target_tls = tls::connect(gateway, &claims.target, &target_config, upstream).await.map_err(target_err)?;
    if selected != PROTOCOL_SSL {
        let (Some(credential), Some(password)) = (credential.as_ref(), password.as_ref()) else {
            return Err(target_err("chose NLA but no credential is configured".into()));
        };
        credssp::authenticate(
            &mut target_tls,
            credential,
            password,
            &target_config.address,
            selected == PROTOCOL_HYBRID_EX,
        )
        .await
        .map_err(target_err)?;
    }

    tcp.write_all(&wire::encode_connection_confirm(ConnectionConfirm::Selected { protocol: PROTOCOL_SSL, flags }))
        .await
        .map_err(|e| fail(Refused::Client(e.to_string())))?;
    let client_tls = gateway.rdp_tls.as_ref().ok_or_else(|| fail(Refused::Internal("RDP TLS is not loaded".into())))?;
    let client = client_tls
        .acceptor
        .accept(tcp)
        .await
        .map_err(|e| fail(Refused::Client(format!("TLS handshake failed: {e}"))))?;
    Ok(Ready {
        client,
        target: target_tls,
        claims: claims.clone(),
        target_config,
        client_requested: request.requested_protocols,
        target_selected: selected,
        password,
        allow: rewrite::Allowances::from_grant(&grant.rdp_redirect),
        _hold: hold,
    })
}

async fn relay(gateway: Arc<Gateway>, config: &RdpConfig, ready: Ready, peer: SocketAddr, starting: Starting) {
    let Ready { client, target, claims, target_config, client_requested, target_selected, password, allow, _hold } =
        ready;
    let Starting { id: session_id, end, started_ms: now, deadline, _registration } = starting;
    let mut record = SessionRecord {
        id: session_id.clone(),
        user: claims.user.clone(),
        target: claims.target.clone(),
        protocol: Protocol::Rdp,
        login: claims.login.clone(),
        grant_id: claims.grant.clone(),
        client_ip: Some(peer.ip().to_string()),
        started_ms: now,
        ended_ms: None,
        end_reason: None,
    };
    let recorder = if gateway.config.recording.enabled {
        let meta = RecordingMeta {
            session_id: session_id.clone(),
            user: claims.user.clone(),
            target: claims.target.clone(),
            login: claims.login.clone(),
            kind: RecordingKind::Rdp,
            command: None,
            term: None,
            cols: 0,
            rows: 0,
            input_recorded: config.record_keystrokes,
        };
        match gateway.recordings.start(meta).await {
            Ok(r) => Some(Arc::new(r)),
            Err(e) if gateway.config.recording.fail_closed => {
                tracing::error!(error = %e, "cannot start an RDP recording; refusing the session");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start an RDP recording; continuing unrecorded (recording.fail_closed = false)");
                None
            }
        }
    } else {
        None
    };
    let started = AuditEvent::new(
        "session.started",
        claims.user.clone(),
        serde_json::json!({"session": session_id, "protocol": "rdp", "login": claims.login, "grant": claims.grant,
                           "client": peer.ip().to_string(), "recording": recorder.as_ref().map(|r| r.id().to_string()),
                           "security": if target_selected == PROTOCOL_SSL { "tls" } else { "nla" }}),
    )
    .on(claims.target.clone());
    let stored = record.clone();
    let _ = blocking(&gateway.store, move |s| s.upsert_session(&stored)).await;
    gateway.audit(started).await;
    tracing::info!(session = %session_id, user = %claims.user, target = %claims.target, login = %claims.login, "RDP session started");
    if let Some(r) = &recorder {
        let event = serde_json::json!({"event": "negotiated", "client_requested": client_requested, "target_selected": target_selected});
        let _ = r.data(Stream::Stderr, &Bytes::from(event.to_string())).await;
    }
    // The channel decision is audited as soon as the client's Connect-Initial is read.
    let (decided, decision) = tokio::sync::oneshot::channel::<serde_json::Value>();
    // The client's side of the connection sequence stays under `rdp.handshake_timeout`.
    let (established, connected) = tokio::sync::oneshot::channel::<()>();
    let limit = config.handshake_timeout;
    let sequence = async move {
        match tokio::time::timeout_at(deadline, connected).await {
            Err(_) => Refused::Timeout(limit).to_string(),
            Ok(_) => std::future::pending().await,
        }
    };
    {
        let (gw, user, target) = (Arc::clone(&gateway), claims.user.clone(), claims.target.clone());
        tokio::spawn(async move {
            if let Ok(details) = decision.await {
                gw.audit(AuditEvent::new("rdp.channels", user, details).on(target)).await;
            }
        });
    }
    let upstream = rewrite::Upstream {
        target_selected,
        credential: target_config.rdp_credential.clone().zip(password),
        allow,
        record_input: config.record_keystrokes,
        decided,
        established,
    };
    let (client_read, client_write) = tokio::io::split(client);
    let (target_read, target_write) = tokio::io::split(target);
    let blocked = rewrite::SharedBlocked::default();
    let up = rewrite::client_to_target(client_read, target_write, upstream, recorder.clone(), Arc::clone(&blocked));
    let down = rewrite::target_to_client(target_read, client_write, client_requested, recorder.clone(), blocked);
    let failure = async {
        match &recorder {
            Some(r) if r.fail_closed() => r.failure().await.to_string(),
            _ => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        r = up => r.err().unwrap_or_else(|| "closed by the client".into()),
        r = down => r.err().unwrap_or_else(|| "closed by the target".into()),
        r = end.ended() => r,
        r = failure => r,
        r = sequence => r,
    };
    if let Some(r) = &recorder {
        let event = serde_json::json!({"event": "ended", "reason": reason});
        let _ = r.data(Stream::Stderr, &Bytes::from(event.to_string())).await;
    }
    drop(recorder);
    let ended = gateway.clock.now_ms();
    record.ended_ms = Some(ended);
    record.end_reason = Some(reason.clone());
    let event = AuditEvent::new(
        "session.ended",
        claims.user.clone(),
        serde_json::json!({"session": session_id, "protocol": "rdp", "login": claims.login, "grant": claims.grant, "reason": reason}),
    )
    .on(claims.target.clone());
    let _ = blocking(&gateway.store, move |s| {
        s.upsert_session(&record)?;
        s.append_audit(&event, ended).map(|_| ())
    })
    .await;
    tracing::info!(session = %session_id, %reason, "RDP session ended");
}

/// Writes a frame to `w`, mapping errors to a reason.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8], side: &str) -> Result<(), String> {
    w.write_all(frame).await.map_err(|e| format!("{side} connection failed: {e}"))
}

/// Hands a chunk to the recorder; `Err` ends the session when recording fails closed.
async fn keep(recorder: &Option<Arc<Recorder>>, stream: Stream, data: Bytes) -> Result<(), String> {
    match recorder {
        Some(r) => r.data(stream, &data).await.map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// What `jit-gateway rdp` gets back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IssuedTicket {
    pub ticket: String,
    pub target: String,
    pub login: String,
    pub grant: String,
    pub expires_ms: i64,
    /// `host:port` of the gateway's RDP listener.
    pub address: String,
    /// The `.rdp` file's content.
    pub rdp_file: String,
    /// SHA-256 of the gateway's RDP certificate (`ab:cd:...`), for clients that pin it.
    #[serde(default)]
    pub certificate_sha256: Option<String>,
}

/// Why no ticket was issued.
#[derive(Debug, thiserror::Error)]
pub enum TicketRefused {
    #[error("{0}")]
    Denied(#[from] crate::access::Denied),
    #[error("RDP is not enabled on this gateway")]
    RdpOff,
    #[error("{0} is not configured for RDP (no rdp_port)")]
    NotRdp(String),
    #[error("the gateway's store is unavailable")]
    Store,
}

/// Issues a ticket for `user` to reach `target` over RDP as `login` (default:
/// the first login the grant allows), after checking a live RDP grant.
pub async fn issue_ticket(
    gateway: &Gateway,
    user: &str,
    target: &str,
    login: Option<&str>,
) -> Result<IssuedTicket, TicketRefused> {
    let (Some(config), Some(address)) = (gateway.config.rdp.as_ref(), gateway.config.public_rdp_address()) else {
        return Err(TicketRefused::RdpOff);
    };
    let target_config = gateway
        .inventory
        .get(target)
        .ok_or_else(|| crate::access::Denied::UnknownTarget { host: target.chars().take(80).collect() })?;
    if target_config.rdp_port.is_none() {
        return Err(TicketRefused::NotRdp(target.into()));
    }
    let owner = user.to_string();
    let grants =
        blocking(&gateway.store, move |s| s.grants_for_user(&owner)).await.map_err(|_| TicketRefused::Store)?;
    let now = gateway.clock.now_ms();
    let login = match login {
        Some(l) => l.to_string(),
        None => {
            // The grant that lasts longest names the default login (grants always name at least one).
            let permit = crate::access::check_target(&grants, user, target, Protocol::Rdp, now)?;
            grants.iter().find(|g| g.id == permit.grant_id).and_then(|g| g.logins.first().cloned()).unwrap_or_default()
        }
    };
    let permit = crate::access::check_login(&grants, user, target, Protocol::Rdp, &login, now)?;
    let expires_ms = (now + config.ticket_ttl.as_millis() as i64).min(permit.expires_at_ms);
    let claims = ticket::Claims {
        jti: crate::ids::new_id("t"),
        user: user.into(),
        grant: permit.grant_id.clone(),
        target: target.into(),
        login: login.clone(),
        issued_ms: now,
        expires_ms,
    };
    let token = ticket::mint(gateway.keys.token_key(), &claims);
    gateway
        .audit(
            AuditEvent::new(
                "rdp.ticket.issued",
                user.to_string(),
                serde_json::json!({"ticket": claims.jti, "grant": claims.grant, "login": login}),
            )
            .on(target.to_string()),
        )
        .await;
    Ok(IssuedTicket {
        rdp_file: ticket::rdp_file(&address, &token, &login),
        ticket: token,
        target: target.into(),
        login,
        grant: permit.grant_id,
        expires_ms,
        address,
        certificate_sha256: gateway.rdp_tls.as_ref().map(|t| t.fingerprint.clone()),
    })
}
