//! The gateway's SSH client toward a target VM.
//!
//! It authenticates with a fresh key and a user certificate from the target
//! CA (principal = login, a few minutes valid, `source-address` = the
//! gateway's own address on this connection), and verifies the VM's host key:
//! the inventory pin, else the key recorded on first use (TOFU), else — with
//! the strict policy — nothing is trusted. A mismatch ends the attempt.
//!
//! Channels the VM opens toward the client (agent and X11 forwarding) are
//! relayed only when the configuration allows them; all others are refused.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use russh::client::{Handle, Msg, Session};
use russh::keys::PublicKey;
use russh::keys::PublicKeyOrCertificate;
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::Killable;
use crate::config::{HostKeyPolicy, TargetConfig};
use crate::gateway::Gateway;
use crate::keys::{UserCertificateRequest, openssh_line};
use crate::store::{AuditEvent, blocking};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {target} ({address}): {message}")]
    Connect { target: String, address: String, message: String },
    #[error(
        "the host key of {target} does not match the one on record ({detail}); the session was refused. Tell your administrator"
    )]
    HostKeyMismatch { target: String, detail: String },
    #[error("{target} has no pinned host key and the gateway only accepts pinned keys; tell your administrator")]
    HostKeyUnknown { target: String },
    #[error(
        "{target} refused the gateway's certificate for login `{login}` (is the target CA in its TrustedUserCAKeys, and does `{login}` exist?)"
    )]
    AuthRejected { target: String, login: String },
    #[error("SSH with {target} failed: {message}")]
    Protocol { target: String, message: String },
}

/// What the relay needs from the inner side to pass agent and X11 channels on.
#[derive(Default)]
pub struct ReverseChannels {
    pub inner: OnceLock<russh::server::Handle>,
    pub allow_agent: bool,
    pub allow_x11: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Trusted,
    Recorded,
    Mismatch(String),
    Unknown,
}

pub struct UpstreamHandler {
    gateway: Arc<Gateway>,
    target: String,
    pinned: Option<PublicKey>,
    verdict: Arc<Mutex<Option<Verdict>>>,
    reverse: Arc<ReverseChannels>,
}

pub struct Upstream {
    pub handle: Handle<UpstreamHandler>,
    pub reverse: Arc<ReverseChannels>,
}

/// Everything about the person and grant that goes into the certificate.
pub struct Who<'a> {
    pub user: &'a str,
    pub login: &'a str,
    pub grant_id: &'a str,
    pub session_id: &'a str,
    pub port_forwarding: bool,
}

pub async fn connect(
    gateway: &Arc<Gateway>,
    target: &str,
    config: &TargetConfig,
    who: &Who<'_>,
    kill: CancellationToken,
) -> Result<Upstream, UpstreamError> {
    let ssh = &gateway.config.ssh;
    let address = format!("{}:{}", config.address, config.ssh_port);
    let connect_err =
        |message: String| UpstreamError::Connect { target: target.into(), address: address.clone(), message };
    let socket = tokio::time::timeout(
        ssh.upstream_connect_timeout,
        TcpStream::connect((config.address.as_str(), config.ssh_port)),
    )
    .await
    .map_err(|_| connect_err(format!("no answer within {}s", ssh.upstream_connect_timeout.as_secs())))?
    .map_err(|e| connect_err(e.to_string()))?;
    let _ = socket.set_nodelay(true);
    let local_ip: Option<IpAddr> = socket.local_addr().ok().map(|a| a.ip());

    let pinned = match &config.host_key {
        Some(line) => PublicKey::from_openssh(line.trim()).ok(),
        None => None,
    };
    let verdict = Arc::new(Mutex::new(None));
    let reverse = Arc::new(ReverseChannels {
        inner: OnceLock::new(),
        allow_agent: ssh.allow_agent_forwarding,
        allow_x11: ssh.allow_x11_forwarding,
    });
    let handler = UpstreamHandler {
        gateway: Arc::clone(gateway),
        target: target.to_string(),
        pinned,
        verdict: Arc::clone(&verdict),
        reverse: Arc::clone(&reverse),
    };
    let client_config = Arc::new(russh::client::Config {
        client_id: russh::SshId::Standard(concat!("SSH-2.0-jit-gateway_", env!("CARGO_PKG_VERSION")).into()),
        inactivity_timeout: None,
        keepalive_interval: Some(ssh.keepalive_interval),
        keepalive_max: 3,
        nodelay: true,
        preferred: super::upstream_preferred(),
        ..Default::default()
    });
    let handshake = russh::client::connect_stream(client_config, Killable::new(socket, kill), handler);
    let mut handle = match tokio::time::timeout(ssh.upstream_connect_timeout, handshake).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let verdict = verdict.lock().ok().and_then(|v| v.clone());
            return Err(match verdict {
                Some(Verdict::Mismatch(detail)) => UpstreamError::HostKeyMismatch { target: target.into(), detail },
                Some(Verdict::Unknown) => UpstreamError::HostKeyUnknown { target: target.into() },
                _ => UpstreamError::Protocol { target: target.into(), message: e.to_string() },
            });
        }
        Err(_) => return Err(connect_err("SSH handshake timed out".into())),
    };

    let request = UserCertificateRequest {
        login: who.login,
        key_id: format!("jit-gateway user={} grant={} session={}", who.user, who.grant_id, who.session_id),
        source_address: local_ip,
        ttl: ssh.upstream_certificate_ttl,
        permit_pty: true,
        permit_port_forwarding: who.port_forwarding,
        permit_agent_forwarding: ssh.allow_agent_forwarding,
        permit_x11_forwarding: ssh.allow_x11_forwarding,
    };
    let (key, cert) = gateway
        .keys
        .mint_user_certificate(&request)
        .map_err(|e| UpstreamError::Protocol { target: target.into(), message: e.to_string() })?;
    let result = handle
        .authenticate_openssh_cert(who.login, key, cert)
        .await
        .map_err(|e| UpstreamError::Protocol { target: target.into(), message: e.to_string() })?;
    if !result.success() {
        return Err(UpstreamError::AuthRejected { target: target.into(), login: who.login.into() });
    }
    Ok(Upstream { handle, reverse })
}

impl UpstreamHandler {
    async fn judge(&self, key: &PublicKey) -> Verdict {
        let presented = openssh_line(key);
        if let Some(pin) = &self.pinned {
            return if openssh_line(pin) == presented {
                Verdict::Trusted
            } else {
                Verdict::Mismatch(format!("pinned in the inventory: {}", crate::keys::fingerprint(pin)))
            };
        }
        let target = self.target.clone();
        let recorded = blocking(&self.gateway.store, move |s| s.pinned_host_key(&target)).await;
        match recorded {
            Ok(Some(known)) if known == presented => Verdict::Trusted,
            Ok(Some(known)) => match PublicKey::from_openssh(&known) {
                Ok(k) => Verdict::Mismatch(format!("recorded on first use: {}", crate::keys::fingerprint(&k))),
                Err(_) => Verdict::Mismatch("recorded on first use".into()),
            },
            Ok(None) if self.gateway.config.ssh.upstream_host_key_policy == HostKeyPolicy::Tofu => {
                let (target, line) = (self.target.clone(), presented.clone());
                match blocking(&self.gateway.store, move |s| s.pin_host_key(&target, &line)).await {
                    Ok(()) => {
                        tracing::warn!(target = %self.target, fingerprint = %crate::keys::fingerprint(key), "recorded host key on first use");
                        self.gateway
                            .audit(
                                AuditEvent::new(
                                    "hostkey.recorded",
                                    "jit-gateway",
                                    serde_json::json!({"fingerprint": crate::keys::fingerprint(key)}),
                                )
                                .on(self.target.clone()),
                            )
                            .await;
                        Verdict::Recorded
                    }
                    Err(e) => Verdict::Mismatch(e.to_string()),
                }
            }
            Ok(None) => Verdict::Unknown,
            Err(e) => {
                tracing::error!(error = %e, "cannot read recorded host keys; refusing");
                Verdict::Unknown
            }
        }
    }
}

impl UpstreamHandler {
    /// A channel the target opens toward the user (agent, X11): opened on the
    /// inner connection with `open` and piped, when allowed; refused otherwise.
    async fn reverse_channel<F, Fut>(
        &self,
        allowed: bool,
        channel: Channel<Msg>,
        reply: russh::client::ChannelOpenHandle,
        open: F,
    ) where
        F: FnOnce(russh::server::Handle) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Channel<russh::server::Msg>, russh::Error>> + Send,
    {
        let Some(inner) = self.reverse.inner.get().cloned().filter(|_| allowed) else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return;
        };
        tokio::spawn(async move {
            match open(inner).await {
                Ok(client_side) => {
                    reply.accept().await;
                    super::relay::pipe(client_side, channel).await;
                }
                Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
        });
    }
}

impl russh::client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // We never ask for host certificates; judge the key inside.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::new(cert.public_key().clone(), ""),
        };
        let verdict = self.judge(&key).await;
        if let Verdict::Mismatch(detail) = &verdict {
            tracing::error!(target = %self.target, presented = %crate::keys::fingerprint(&key), %detail, "host key mismatch");
            self.gateway
                .audit(
                    AuditEvent::new(
                        "hostkey.mismatch",
                        "jit-gateway",
                        serde_json::json!({"presented": crate::keys::fingerprint(&key), "expected": detail}),
                    )
                    .on(self.target.clone()),
                )
                .await;
        }
        let ok = matches!(verdict, Verdict::Trusted | Verdict::Recorded);
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(verdict);
        }
        Ok(ok)
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.reverse.allow_agent;
        self.reverse_channel(allowed, channel, reply, |inner| async move { inner.channel_open_agent().await }).await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        channel: Channel<Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (allowed, address) = (self.reverse.allow_x11, originator_address.to_string());
        self.reverse_channel(allowed, channel, reply, move |inner| async move {
            inner.channel_open_x11(address, originator_port).await
        })
        .await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _c: Channel<Msg>,
        reply: russh::client::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn server_channel_open_direct_tcpip(
        &mut self,
        _c: Channel<Msg>,
        _h: &str,
        _p: u32,
        _oa: &str,
        _op: u32,
        reply: russh::client::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        _c: Channel<Msg>,
        _h: &str,
        _p: u32,
        _oa: &str,
        _op: u32,
        reply: russh::client::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _c: Channel<Msg>,
        _p: &str,
        reply: russh::client::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }
}
