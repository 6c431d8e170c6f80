//! The outer SSH server: who is this, and may they jump to that target?
//!
//! Sign-in order: a client key bound to an identity logs in silently. An
//! unbound key that the client proves it holds is remembered; the client then
//! falls through to keyboard-interactive, where the gateway starts an OIDC
//! device flow, shows the URL and code at once, and waits for approval. On
//! success the proven key is bound to the identity for next time.
//!
//! After sign-in only `direct-tcpip` to an inventory target with a live grant
//! is accepted; everything else is refused with a reason.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::Killable;
use super::signin;
use crate::access::{self, Denied};
use crate::gateway::Gateway;
use crate::limits::{Full, Permit, Reason, Source};
use crate::oidc::{DeviceAuthorization, OidcError};
use crate::store::{AuditEvent, Identity, Protocol, blocking};

/// Where a connection is on its way in; the watchdog reads it.
/// Nothing begun yet: cut at `ssh.preauth_timeout`.
const PREAUTH: u8 = 0;
/// A device-flow sign-in waits for a person: cut at `ssh.login_grace_time`.
const SIGNING_IN: u8 = 1;
/// Signed in: no more deadlines here.
const AUTHENTICATED: u8 = 2;

enum SignIn {
    NotStarted,
    Waiting {
        auth: Box<DeviceAuthorization>,
        _slot: Permit,
    },
    /// The user was told why sign-in failed; the next answer ends it.
    Failed,
}

pub struct OuterHandler {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    identity: Option<Identity>,
    /// A key the client proved it holds but that is not bound yet.
    proven_key: Option<PublicKey>,
    sign_in: SignIn,
    deadline: tokio::time::Instant,
    unauthenticated_slot: Option<Permit>,
    phase: Arc<AtomicU8>,
    /// Cancelled when this connection (and every session in it) must end.
    shutdown: CancellationToken,
}

fn retry_methods() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..])),
        partial_success: false,
    }
}

/// A user name with control characters (a forged log line in waiting) gets no method to try.
fn refuse_user(user: &str) -> Option<Auth> {
    crate::logging::has_control_chars(user)
        .then(|| Auth::Reject { proceed_with_methods: Some(MethodSet::empty()), partial_success: false })
}

/// After a failed sign-in: nothing more to try, so OpenSSH stops instead of starting another device flow.
fn final_reject() -> Auth {
    Auth::Reject { proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])), partial_success: false }
}

fn show(instructions: String) -> Auth {
    Auth::Partial {
        name: Cow::Borrowed("jit-gateway sign-in"),
        instructions: Cow::Owned(instructions),
        prompts: Cow::Borrowed(&[]),
    }
}

pub async fn handle_connection(
    gateway: Arc<Gateway>,
    socket: TcpStream,
    peer: SocketAddr,
    slot: Permit,
    shutdown: CancellationToken,
) {
    let kill = shutdown.child_token();
    let phase = Arc::new(AtomicU8::new(PREAUTH));
    let accepted = tokio::time::Instant::now();
    let grace = gateway.config.ssh.login_grace_time;
    let preauth_deadline = accepted + gateway.config.ssh.preauth_timeout.min(grace);
    let handler = OuterHandler {
        gateway: Arc::clone(&gateway),
        peer,
        identity: None,
        proven_key: None,
        sign_in: SignIn::NotStarted,
        deadline: accepted + grace,
        unauthenticated_slot: Some(slot),
        phase: Arc::clone(&phase),
        shutdown: kill.clone(),
    };
    let stream = Killable::new(socket, kill.clone());
    let config = Arc::clone(&gateway.outer_ssh);
    let session =
        match tokio::time::timeout_at(preauth_deadline, russh::server::run_stream(config, stream, handler)).await {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection failed before the SSH handshake");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no SSH version line in time");
                gateway.refused(peer.ip(), Reason::SshPreauthTimeout);
                return;
            }
        };
    let watchdog = async {
        // Two deadlines: a short one to begin signing in, a long one for a person to approve.
        tokio::time::sleep_until(preauth_deadline).await;
        if phase.load(Ordering::SeqCst) == PREAUTH {
            tracing::debug!(%peer, "no sign-in begun within ssh.preauth_timeout; disconnecting");
            gateway.refused(peer.ip(), Reason::SshPreauthTimeout);
            kill.cancel();
            return;
        }
        tokio::time::sleep_until(accepted + grace).await;
        if phase.load(Ordering::SeqCst) != AUTHENTICATED {
            tracing::info!(%peer, "sign-in took longer than ssh.login_grace_time; disconnecting");
            kill.cancel();
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        result = session => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        }
        _ = watchdog => {}
    }
    kill.cancel();
}

impl OuterHandler {
    fn client_ip(&self) -> String {
        self.peer.ip().to_string()
    }

    async fn start_sign_in(&mut self) -> Auth {
        // Admitted first, so a sign-in that cannot wait never reaches the identity provider.
        let slot = match self.gateway.sign_ins.try_acquire(Source::of(self.peer.ip())) {
            Ok(slot) => slot,
            Err(full) => {
                let (reason, text) = match full {
                    Full::Source => (Reason::SshSignInsPerSource, "from your address"),
                    Full::Everyone => (Reason::SshSignInsTotal, "at the gateway"),
                };
                self.gateway.refused(self.peer.ip(), reason);
                self.sign_in = SignIn::Failed;
                return show(format!("Too many sign-ins are in progress {text}. Try again in a minute."));
            }
        };
        match self.gateway.oidc.start_device_flow().await {
            Ok(auth) => {
                let text = signin::instructions(&auth, &self.gateway.config.gateway.name);
                self.sign_in = SignIn::Waiting { auth: Box::new(auth), _slot: slot };
                // A person has to act now: from here `ssh.login_grace_time` applies.
                let _ = self.phase.compare_exchange(PREAUTH, SIGNING_IN, Ordering::SeqCst, Ordering::SeqCst);
                show(text)
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "cannot start a device-flow sign-in");
                self.sign_in = SignIn::Failed;
                show(format!("Sign-in is unavailable right now: {e}"))
            }
        }
    }

    async fn finish_sign_in(&mut self, user: &str, auth: Box<DeviceAuthorization>) -> Auth {
        let limit = self.deadline.saturating_duration_since(tokio::time::Instant::now());
        let result = self.gateway.oidc.finish_device_flow(&auth, limit).await;
        let failure = match result {
            Ok(verified)
                if verified.user.eq_ignore_ascii_case(user) || verified.login_name.as_deref() == Some(user) =>
            {
                match signin::remember(
                    &self.gateway,
                    &verified,
                    self.proven_key.as_ref(),
                    &self.client_ip(),
                    "signin.device-flow",
                )
                .await
                {
                    Ok(identity) => {
                        tracing::info!(user = %identity.user, peer = %self.peer, key_bound = self.proven_key.is_some(), "signed in with the device flow");
                        self.identity = Some(identity);
                        return Auth::Accept;
                    }
                    Err(e @ signin::SignInError::NameTaken { .. }) => e.to_string(),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot store the sign-in");
                        "the gateway could not record your sign-in; try again".to_string()
                    }
                }
            }
            Ok(verified) => {
                let name = verified.login_name.clone().unwrap_or_else(|| verified.user.clone());
                format!(
                    "you signed in as {}, but connected as `{user}`. Connect as {name}@{}",
                    verified.user, self.gateway.config.gateway.name
                )
            }
            Err(OidcError::Denied) => "sign-in was denied at the identity provider".to_string(),
            Err(OidcError::Expired) => {
                "the sign-in code expired before it was approved; connect again for a new one".to_string()
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(peer = %self.peer, %user, reason = %failure, "sign-in failed");
        self.gateway
            .audit(AuditEvent::new(
                "signin.failed",
                user,
                serde_json::json!({"client_ip": self.client_ip(), "reason": failure}),
            ))
            .await;
        self.sign_in = SignIn::Failed;
        show(format!("Sign-in failed: {failure}."))
    }
}

impl russh::server::Handler for OuterHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(refuse_user(user).unwrap_or_else(retry_methods))
    }

    async fn auth_publickey_offered(&mut self, user: &str, _offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        // Let the client prove every key: a bound one logs in, an unbound one is remembered for binding.
        Ok(refuse_user(user).unwrap_or(Auth::Accept))
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if let Some(refused) = refuse_user(user) {
            return Ok(refused);
        }
        match signin::bound_identity(&self.gateway, key.public_key, user).await {
            Ok(Some(identity)) => {
                if let Err(why) = crate::identity::ensure_current(&self.gateway, &identity).await {
                    // Renewed by a fresh sign-in (keyboard-interactive) if the provider still accepts them.
                    tracing::info!(user = %identity.user, peer = %self.peer, reason = %why, "bound key not accepted: sign-in must be renewed");
                    self.proven_key.get_or_insert_with(|| key.public_key.clone());
                    return Ok(retry_methods());
                }
                tracing::debug!(user = %identity.user, peer = %self.peer, "signed in with a bound key");
                let details = serde_json::json!({
                    "identity": identity.id, "key": crate::keys::fingerprint(key.public_key), "client_ip": self.client_ip(),
                });
                self.gateway.audit(AuditEvent::new("signin.key", identity.user.clone(), details)).await;
                self.identity = Some(identity);
                Ok(Auth::Accept)
            }
            Ok(None) => {
                self.proven_key.get_or_insert_with(|| key.public_key.clone());
                Ok(retry_methods())
            }
            Err(e) => {
                tracing::error!(error = %e, "key binding lookup failed");
                Ok(retry_methods())
            }
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if crate::logging::has_control_chars(user) {
            self.sign_in = SignIn::Failed;
            return Ok(show("Sign-in refused: the user name contains control characters.".into()));
        }
        match std::mem::replace(&mut self.sign_in, SignIn::NotStarted) {
            SignIn::NotStarted => Ok(self.start_sign_in().await),
            SignIn::Waiting { auth, _slot } => Ok(self.finish_sign_in(user, auth).await),
            SignIn::Failed => {
                self.sign_in = SignIn::Failed;
                Ok(final_reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.phase.store(AUTHENTICATED, Ordering::SeqCst);
        self.unauthenticated_slot = None;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name = &self.gateway.config.gateway.name;
        let reason = format!("{name} is a jump host: connect with `ssh -J {name} <login>@<target>`");
        reply.reject(ChannelOpenFailure::Other { code: 1, reason }).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(identity) = self.identity.clone() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let gateway = Arc::clone(&self.gateway);
        let host = host.chars().take(255).collect::<String>();
        let peer = self.peer;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Refused before any lookup: such a name could only forge log and audit lines.
            if crate::logging::has_control_chars(&host) {
                let reason = "the target name contains control characters";
                audit_denied(&gateway, &identity, &crate::logging::escape(&host), port, reason, peer).await;
                reply.reject(ChannelOpenFailure::Other { code: 1, reason: format!("jit-gateway: {reason}") }).await;
                return;
            }
            match check_jump(&gateway, &identity, &host, port).await {
                Jump::Allowed(target) => {
                    reply.accept().await;
                    super::inner::serve(gateway, identity, target, None, channel, peer, shutdown).await;
                }
                Jump::Refused { target, reason } => {
                    audit_denied(&gateway, &identity, &host, port, &reason, peer).await;
                    // An inventory target: explain inside the connection, where the reason
                    // survives OpenSSH connection sharing (its mux client drops open-failure texts).
                    reply.accept().await;
                    super::inner::serve(gateway, identity, target, Some(reason), channel, peer, shutdown).await;
                }
                Jump::Unknown(denied) => {
                    audit_denied(&gateway, &identity, &host, port, &denied.to_string(), peer).await;
                    reply.reject(ChannelOpenFailure::Other { code: 1, reason: format!("jit-gateway: {denied}") }).await;
                }
            }
        });
        Ok(())
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

enum Jump {
    Allowed(String),
    /// An inventory target this person may not reach now.
    Refused {
        target: String,
        reason: String,
    },
    /// Not a target at all (unknown name, raw address, other port).
    Unknown(Denied),
}

/// The target a signed-in person may jump to, or why not.
async fn check_jump(gateway: &Gateway, identity: &Identity, host: &str, port: u32) -> Jump {
    let inventory = gateway.inventory.snapshot();
    let name = match access::resolve_target(&inventory, host, port) {
        Ok((name, _)) => name.to_string(),
        Err(denied) => return Jump::Unknown(denied),
    };
    let user = identity.user.clone();
    let grants = match blocking(&gateway.store, move |s| s.grants_for_user(&user)).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "cannot read grants; refusing");
            return Jump::Refused {
                target: name,
                reason: "the gateway cannot read grants right now; try again later".into(),
            };
        }
    };
    match access::check_target(&grants, &identity.user, &name, Protocol::Ssh, gateway.clock.now_ms()) {
        Ok(_) => Jump::Allowed(name),
        Err(denied) => Jump::Refused { target: name, reason: denied.to_string() },
    }
}

async fn audit_denied(gateway: &Gateway, identity: &Identity, host: &str, port: u32, reason: &str, peer: SocketAddr) {
    tracing::info!(user = %identity.user, %host, port, %reason, "jump refused");
    let details = serde_json::json!({"requested": format!("{host}:{port}"), "reason": reason, "client_ip": peer.ip().to_string()});
    gateway.audit(AuditEvent::new("access.denied", identity.user.clone(), details).on(host.to_string())).await;
}
