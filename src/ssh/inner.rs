//! The inner SSH server, run on one accepted `direct-tcpip` channel.
//!
//! The client believes it talks to the target: the gateway presents a host
//! certificate for the target's name, minted for this connection. The first
//! authentication request names the login; the gateway checks it against the
//! person's grants and, if allowed, connects upstream. The client is always
//! let in (its identity was proven on the outer connection); when access is
//! refused, every channel it opens says why and closes, so the reason reaches
//! the user even from `scp` or in batch mode.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, Pty};
use tokio_util::sync::CancellationToken;

use super::Killable;
use super::relay::{self, ChannelCtx};
use super::upstream::{self, Upstream, Who};
use crate::access::{self, Permit, valid_login};
use crate::config::TargetConfig;
use crate::gateway::Gateway;
use crate::sessions::{EndSignal, LiveSession, SessionGuard};
use crate::store::{AuditEvent, Identity, Protocol, SessionRecord, blocking};

enum State {
    Fresh,
    /// Access refused or the target unreachable; the message says why.
    Refused(String),
    Ready(Arc<Upstream>),
}

struct InnerHandler {
    gateway: Arc<Gateway>,
    identity: Identity,
    target: String,
    target_config: TargetConfig,
    peer: SocketAddr,
    session_id: String,
    end: EndSignal,
    kill: CancellationToken,
    state: State,
    login: String,
    permit: Option<Permit>,
    record: Arc<Mutex<Option<SessionRecord>>>,
    _registration: Option<SessionGuard>,
    /// Keeps the target's port opening in use while this session lives.
    _opening: Option<crate::ports::SessionHold>,
}

/// Serves one inner connection until it closes or its session is ended.
/// `refused` carries the reason when access was already refused (and audited).
pub async fn serve(
    gateway: Arc<Gateway>,
    identity: Identity,
    target: String,
    refused: Option<String>,
    channel: Channel<Msg>,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Some(target_config) = gateway.inventory.get(&target) else { return };
    let session_id = crate::ids::new_id("s");
    let end = EndSignal::new();
    let kill = stop.child_token();
    let (host_key, certificate) =
        match gateway.keys.mint_host_certificate(&target, SystemTime::now() + Duration::from_secs(86400)) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "cannot mint a host certificate");
                return;
            }
        };
    let config = Arc::new(super::inner_config(&gateway.config, host_key, certificate));
    let record = Arc::new(Mutex::new(None));
    let handler = InnerHandler {
        gateway: Arc::clone(&gateway),
        identity,
        target,
        target_config,
        peer,
        session_id,
        end: end.clone(),
        kill: kill.clone(),
        state: refused.map_or(State::Fresh, State::Refused),
        login: String::new(),
        permit: None,
        record: Arc::clone(&record),
        _registration: None,
        _opening: None,
    };
    let stream = Killable::new(channel.into_stream(), kill.clone());
    let running = match russh::server::run_stream(config, stream, handler).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "inner connection failed before the handshake");
            return;
        }
    };
    let handle = running.handle();
    tokio::pin!(running);
    tokio::select! {
        _ = &mut running => {}
        reason = end.ended() => {
            // The channel tasks tell the user; give them a moment, then hang up.
            // (A finished session future must not be polled again.)
            if tokio::time::timeout(Duration::from_millis(750), &mut running).await.is_err() {
                let _ = handle.disconnect(Disconnect::ByApplication, format!("jit-gateway: {reason}"), "en".into()).await;
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut running).await;
            }
        }
        _ = kill.cancelled() => {}
    }
    kill.cancel();
    let finished = record.lock().ok().and_then(|mut r| r.take());
    if let Some(mut session) = finished {
        let now = gateway.clock.now_ms();
        session.ended_ms = Some(now);
        session.end_reason = Some(if end.is_ended() { end.reason() } else { "closed by the client".into() });
        let event = AuditEvent::new(
            "session.ended",
            session.user.clone(),
            serde_json::json!({"session": session.id, "login": session.login, "grant": session.grant_id, "reason": session.end_reason}),
        )
        .on(session.target.clone());
        if let Err(e) = blocking(&gateway.store, move |s| {
            s.upsert_session(&session)?;
            s.append_audit(&event, now).map(|_| ())
        })
        .await
        {
            tracing::error!(error = %e, "cannot record the end of a session");
        }
    }
}

impl InnerHandler {
    /// Decides, once, whether this connection may proceed as `login`.
    async fn admit(&mut self, login: &str) -> Auth {
        if !matches!(self.state, State::Fresh) {
            return Auth::Accept;
        }
        self.login = login.chars().take(64).collect();
        self.state = match self.decide().await {
            Ok(upstream) => State::Ready(upstream),
            Err(message) => {
                tracing::info!(user = %self.identity.user, target = %self.target, login = %self.login, reason = %message, "session refused");
                self.gateway
                    .audit(
                        AuditEvent::new(
                            "access.denied",
                            self.identity.user.clone(),
                            serde_json::json!({"login": self.login, "reason": message, "client_ip": self.peer.ip().to_string()}),
                        )
                        .on(self.target.clone()),
                    )
                    .await;
                State::Refused(message)
            }
        };
        Auth::Accept
    }

    async fn decide(&mut self) -> Result<Arc<Upstream>, String> {
        if !valid_login(&self.login) {
            return Err(format!("`{}` is not a valid login name", self.login.escape_debug()));
        }
        crate::identity::ensure_current(&self.gateway, &self.identity).await.map_err(|e| e.to_string())?;
        let user = self.identity.user.clone();
        let grants = blocking(&self.gateway.store, move |s| s.grants_for_user(&user))
            .await
            .map_err(|e| format!("the gateway cannot read grants right now ({e})"))?;
        let now = self.gateway.clock.now_ms();
        let permit = access::check_login(&grants, &self.identity.user, &self.target, Protocol::Ssh, &self.login, now)
            .map_err(|d| d.to_string())?;
        if self.target_config.address.is_empty() {
            return Err(format!(
                "the gateway does not know {}'s address yet (Azure has not answered); try again shortly",
                self.target
            ));
        }
        let hold = self
            .gateway
            .ports
            .ensure(
                &permit.grant_id,
                &self.target,
                &self.target_config,
                self.target_config.ssh_port,
                permit.expires_at_ms,
            )
            .await
            .map_err(|e| format!("the gateway could not open {}'s port: {e}", self.target))?;
        self._opening = Some(hold);
        let who = Who {
            user: &self.identity.user,
            login: &self.login,
            grant_id: &permit.grant_id,
            session_id: &self.session_id,
            port_forwarding: permit.port_forwarding,
        };
        let upstream = upstream::connect(&self.gateway, &self.target, &self.target_config, &who, self.kill.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.register(&permit).await;
        self.permit = Some(permit);
        Ok(Arc::new(upstream))
    }

    async fn register(&mut self, permit: &Permit) {
        let now = self.gateway.clock.now_ms();
        let info = LiveSession {
            id: self.session_id.clone(),
            user: self.identity.user.clone(),
            target: self.target.clone(),
            login: self.login.clone(),
            protocol: Protocol::Ssh,
            grant_id: permit.grant_id.clone(),
            client_ip: Some(self.peer.ip().to_string()),
            started_ms: now,
        };
        self._registration = Some(self.gateway.sessions.register(info.clone(), self.end.clone()));
        let session = SessionRecord {
            id: info.id.clone(),
            user: info.user.clone(),
            target: info.target.clone(),
            protocol: Protocol::Ssh,
            login: info.login.clone(),
            grant_id: info.grant_id.clone(),
            client_ip: info.client_ip.clone(),
            started_ms: now,
            ended_ms: None,
            end_reason: None,
        };
        if let Ok(mut slot) = self.record.lock() {
            *slot = Some(session.clone());
        }
        let event = AuditEvent::new(
            "session.started",
            info.user.clone(),
            serde_json::json!({"session": info.id, "login": info.login, "grant": info.grant_id, "client_ip": info.client_ip}),
        )
        .on(info.target.clone());
        if let Err(e) = blocking(&self.gateway.store, move |s| {
            s.upsert_session(&session)?;
            s.append_audit(&event, now).map(|_| ())
        })
        .await
        {
            tracing::error!(error = %e, "cannot record a session start");
        }
        tracing::info!(session = %info.id, user = %info.user, target = %info.target, login = %info.login, grant = %info.grant_id, "session started");
        // A grant that ended while we were connecting: the enforcer already ran, so check here too.
        if let Err(e) = self.gateway.enforcer.enforce_now().await {
            tracing::error!(error = %e, "grant enforcement failed");
        }
    }

    fn ctx(&self, session: &Session) -> ChannelCtx {
        ChannelCtx {
            gateway: Arc::clone(&self.gateway),
            session_id: self.session_id.clone(),
            user: self.identity.user.clone(),
            target: self.target.clone(),
            login: self.login.clone(),
            end: self.end.clone(),
            inner: session.handle(),
        }
    }

    fn answer(session: &mut Session, channel: ChannelId, yes: bool) -> Result<(), russh::Error> {
        if yes { session.channel_success(channel) } else { session.channel_failure(channel) }
    }
}

impl russh::server::Handler for InnerHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.admit(user).await)
    }

    async fn auth_publickey_offered(&mut self, _user: &str, _offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(&mut self, user: &str, _key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        Ok(self.admit(user).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _sub: &str,
        _response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.admit(user).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.state {
            State::Ready(upstream) => {
                let _ = upstream.reverse.inner.set(session.handle());
                tokio::spawn(relay::session_channel(Arc::clone(upstream), channel, reply, self.ctx(session)));
            }
            State::Refused(message) => {
                let message = message.clone();
                tokio::spawn(async move {
                    reply.accept().await;
                    relay::refuse_session(channel, message).await;
                });
            }
            State::Fresh => reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await,
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let refusal = match (&self.state, &self.permit) {
            (State::Ready(upstream), Some(permit)) => match access::check_forwarding(permit) {
                Ok(()) => {
                    let originator = (originator_address.to_string(), originator_port);
                    let host = host.chars().take(255).collect();
                    tokio::spawn(relay::forward(
                        Arc::clone(upstream),
                        channel,
                        host,
                        port,
                        originator,
                        reply,
                        self.ctx(session),
                    ));
                    return Ok(());
                }
                Err(denied) => denied.to_string(),
            },
            (State::Refused(message), _) => message.clone(),
            _ => "not signed in".to_string(),
        };
        reply.reject(ChannelOpenFailure::Other { code: 1, reason: format!("jit-gateway: {refusal}") }).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _t: &str,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        _m: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Self::answer(session, channel, true)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        Self::answer(session, channel, true)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Self::answer(session, channel, true)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed =
            relay::subsystem_allowed(&self.gateway.config.ssh, name) || matches!(self.state, State::Refused(_));
        Self::answer(session, channel, allowed)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Self::answer(session, channel, relay::env_allowed(&self.gateway.config.ssh, name))
    }

    #[allow(clippy::too_many_arguments)]
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Self::answer(session, channel, self.gateway.config.ssh.allow_x11_forwarding)
    }

    async fn agent_request(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        Ok(self.gateway.config.ssh.allow_agent_forwarding)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
