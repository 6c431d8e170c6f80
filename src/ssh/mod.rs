//! SSH through the gateway (`ssh -J gateway user@target`).
//!
//! - `outer`: the server users connect to. Signs them in (bound key, or
//!   keyboard-interactive + OIDC device flow) and answers `direct-tcpip`
//!   only for inventory targets the person holds a live grant for.
//! - `inner`: an SSH server run on each accepted channel, presenting a host
//!   certificate for the target name; it checks the login against the grant
//!   and connects `upstream`.
//! - `upstream`: the client toward the VM, with a short-lived user
//!   certificate and a verified host key.
//! - `relay`: moves each channel between inner and upstream, recording it.
//!
//! russh callbacks stay thin: they decide and reply, and all waiting on the
//! network happens in spawned tasks, so no session loop ever blocks on another.

mod inner;
mod killable;
mod outer;
mod relay;
pub(crate) mod signin;
mod upstream;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::{MethodKind, MethodSet, Preferred, SshId, cipher, kex, mac};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::keys::KeyMaterial;
use crate::limits::{Full, Limiter, Reason, Source};

pub use killable::Killable;

/// Toward targets: AES-GCM first. With AES-NI it costs a fraction of
/// ChaCha20-Poly1305, and the gateway handles every byte three times
/// (client, inner connection, target).
const UPSTREAM_CIPHERS: &[cipher::Name] =
    &[cipher::AES_128_GCM, cipher::AES_256_GCM, cipher::CHACHA20_POLY1305, cipher::AES_256_CTR, cipher::AES_128_CTR];

/// What the gateway's servers offer clients (`ssh.ciphers`; validated at load).
fn offered_ciphers(config: &Config) -> Vec<cipher::Name> {
    config.ssh.ciphers.iter().filter_map(|c| cipher::Name::try_from(c.as_str()).ok()).collect()
}

pub(crate) fn upstream_preferred() -> Preferred {
    Preferred {
        cipher: Cow::Borrowed(UPSTREAM_CIPHERS),
        compression: Cow::Borrowed(&[russh::compression::NONE]),
        ..Preferred::default()
    }
}

/// Key exchange offered to clients (`ssh.kex_algorithms`; validated at load), plus the
/// extension-negotiation and strict-kex markers (the Terrapin countermeasure).
fn offered_kex(config: &Config) -> Vec<kex::Name> {
    let mut names: Vec<kex::Name> =
        config.ssh.kex_algorithms.iter().filter_map(|k| kex::Name::try_from(k.as_str()).ok()).collect();
    names.extend([kex::EXTENSION_SUPPORT_AS_SERVER, kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER]);
    names
}

/// Toward clients: encrypt-then-MAC only (unused with the AEAD ciphers offered by default).
const SERVER_MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

fn server_preferred(config: &Config) -> Preferred {
    Preferred {
        kex: Cow::Owned(offered_kex(config)),
        cipher: Cow::Owned(offered_ciphers(config)),
        mac: Cow::Borrowed(SERVER_MACS),
        ..upstream_preferred()
    }
}

fn server_id() -> SshId {
    SshId::Standard(Cow::Borrowed(concat!("SSH-2.0-jit-gateway_", env!("CARGO_PKG_VERSION"))))
}

/// The server users connect to.
pub fn outer_config(config: &Config, keys: &KeyMaterial) -> russh::server::Config {
    russh::server::Config {
        server_id: server_id(),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        // OpenSSH probes with `none` first; answering at once saves a second per connection.
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![keys.host_key.clone()],
        // A shell left idle for hours is normal; dead peers are found by keepalives instead.
        inactivity_timeout: None,
        keepalive_interval: Some(config.ssh.keepalive_interval),
        keepalive_max: 3,
        max_auth_attempts: 12,
        nodelay: true,
        preferred: server_preferred(config),
        ..Default::default()
    }
}

/// The server run inside a `direct-tcpip` channel, for one target.
fn inner_config(
    config: &Config,
    host_key: russh::keys::PrivateKey,
    certificate: russh::keys::Certificate,
) -> russh::server::Config {
    russh::server::Config {
        server_id: server_id(),
        methods: MethodSet::from(&[MethodKind::None, MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        certificates: vec![certificate],
        inactivity_timeout: None,
        keepalive_interval: Some(config.ssh.keepalive_interval),
        keepalive_max: 3,
        preferred: server_preferred(config),
        ..Default::default()
    }
}

/// Accepts connections until `shutdown`, never more than
/// `ssh.max_unauthenticated` of them signing in at once, nor more than
/// `ssh.max_unauthenticated_per_source` from one address.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener, shutdown: CancellationToken) {
    let ssh = &gateway.config.ssh;
    let unauthenticated = Limiter::new(ssh.max_unauthenticated_per_source, ssh.max_unauthenticated);
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let permit = match unauthenticated.try_acquire(Source::of(peer.ip())) {
                        Ok(permit) => permit,
                        Err(full) => {
                            // Dropped at once: nothing is read from or written to it.
                            gateway.refused(peer.ip(), match full {
                                Full::Source => Reason::SshConnectionsPerSource,
                                Full::Everyone => Reason::SshConnectionsTotal,
                            });
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    connections.spawn(outer::handle_connection(Arc::clone(&gateway), socket, peer, permit, shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(4), connections.wait()).await;
}
