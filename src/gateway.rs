//! The running gateway: everything a connection needs, built once, and the
//! `run` entry point shared by `main` and the tests. `run` takes bound
//! listeners and a shutdown token, so tests bind port 0 and stop cleanly.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::keys::KeyMaterial;
use crate::oidc::OidcClient;
use crate::recording::RecordingService;
use crate::sessions::{GrantEnforcer, SessionRegistry};
use crate::store::{AuditEvent, RedbStore, SharedStore, blocking};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    #[error("{0}")]
    Keys(#[from] crate::keys::KeyError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Oidc(#[from] crate::oidc::OidcError),
    #[error("recordings directory: {0}")]
    Recordings(std::io::Error),
    #[error("admin socket {path}: {message}")]
    Admin { path: String, message: String },
    #[error("{0}")]
    Azure(String),
    #[error("rdp: {0}")]
    Rdp(String),
}

/// The port opener the configuration asks for, and the Azure client if any.
async fn port_openings(
    config: &Config,
    store: &SharedStore,
    clock: &SharedClock,
    inventory: &Arc<crate::azure::Inventory>,
) -> Result<(Arc<crate::ports::Openings>, Option<Arc<crate::azure::Arm>>), StartError> {
    use crate::azure::{Arm, DefenderJit, NsgRules, OpenerKind};
    use crate::ports::{NoneOpener, Openings, PortOpener};
    let Some(az) = &config.azure else {
        return Ok((
            Openings::new(Arc::new(NoneOpener), Arc::clone(store), Arc::clone(clock), std::time::Duration::ZERO),
            None,
        ));
    };
    let arm = Arc::new(Arm::new(az).map_err(|e| StartError::Azure(e.to_string()))?);
    let gateway_ip = if az.gateway_ip == "imds" {
        crate::azure::imds_private_ip()
            .await
            .map_err(|e| StartError::Azure(format!("azure.gateway_ip = \"imds\": {e}")))?
    } else {
        az.gateway_ip.clone()
    };
    let opener: Arc<dyn PortOpener> = match az.opener {
        OpenerKind::None => Arc::new(NoneOpener),
        OpenerKind::AzureNsg => {
            Arc::new(NsgRules::new(Arc::clone(&arm), Arc::clone(inventory), gateway_ip, az.priority_range))
        }
        OpenerKind::AzureDefenderJit => {
            Arc::new(DefenderJit::new(Arc::clone(&arm), Arc::clone(inventory), gateway_ip, az.jit_policy.clone()))
        }
    };
    Ok((Openings::new(opener, Arc::clone(store), Arc::clone(clock), az.linger), Some(arm)))
}

pub struct Gateway {
    pub config: Arc<Config>,
    pub keys: Arc<KeyMaterial>,
    pub store: SharedStore,
    pub clock: SharedClock,
    pub oidc: Arc<OidcClient>,
    pub sessions: Arc<SessionRegistry>,
    pub recordings: Arc<RecordingService>,
    pub enforcer: Arc<GrantEnforcer>,
    /// Device-flow sign-ins waiting for approval (`ssh.max_pending_sign_ins[_per_source]`).
    pub sign_ins: crate::limits::Limiter,
    /// What was refused to peers that had not signed in; audited in aggregate.
    pub refusals: Arc<crate::limits::Refusals>,
    /// The outer SSH server's configuration (host key, algorithms, limits).
    pub outer_ssh: Arc<russh::server::Config>,
    pub notifier: crate::notify::Notifier,
    /// Cloud firewall openings for targets (the `none` backend unless `[azure]` says otherwise).
    pub ports: Arc<crate::ports::Openings>,
    /// The targets as currently known (configuration, Azure addresses, discovered VMs).
    pub inventory: Arc<crate::azure::Inventory>,
    pub arm: Option<Arc<crate::azure::Arm>>,
    /// TLS toward RDP clients, when `[rdp]` is configured.
    pub rdp_tls: Option<Arc<crate::rdp::tls::ClientSide>>,
}

impl Gateway {
    /// Opens the state directory, store and keys. Nothing listens yet.
    pub async fn open(config: Config, clock: SharedClock) -> Result<Arc<Gateway>, StartError> {
        let state = &config.gateway.state_dir;
        let state_err = |source| StartError::StateDir { path: state.display().to_string(), source };
        std::fs::create_dir_all(state).map_err(state_err)?;
        std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).map_err(state_err)?;
        let keys = Arc::new(KeyMaterial::load_or_generate(&config.gateway.certs_dir)?);
        // Configured TLS keys too: a key others may read refuses the start, before anything listens.
        for key in
            [config.api.as_ref().and_then(|a| a.tls_key.as_ref()), config.rdp.as_ref().and_then(|r| r.tls_key.as_ref())]
                .into_iter()
                .flatten()
        {
            crate::keys::read_private(key)?;
        }
        if config.api.as_ref().is_some_and(|a| a.tls_cert.is_none())
            || config.rdp.as_ref().is_some_and(|r| r.tls_cert.is_none())
        {
            // Before anything listens: clients may read certs/tls.crt as soon as the gateway is up.
            crate::api::default_identity(&config, &keys)?;
        }
        let signer = Arc::clone(&keys);
        let store: SharedStore = Arc::new(
            RedbStore::open(&state.join("gateway.redb"))?
                .with_head_signer(Box::new(move |data| signer.sign(data).map_err(|e| e.to_string()))),
        );
        let oidc = Arc::new(OidcClient::new(&config.oidc, Arc::clone(&clock))?);
        let sessions = SessionRegistry::new();
        let recordings = Arc::new(
            RecordingService::new(config.recording.clone(), Arc::clone(&store), Arc::clone(&keys), Arc::clone(&clock))
                .map_err(StartError::Recordings)?,
        );
        let inventory = Arc::new(crate::azure::Inventory::new(config.targets.clone()));
        let (ports, arm) = port_openings(&config, &store, &clock, &inventory).await?;
        let enforcer =
            GrantEnforcer::new(Arc::clone(&store), Arc::clone(&clock), Arc::clone(&sessions), Arc::clone(&ports));
        let outer_ssh = Arc::new(crate::ssh::outer_config(&config, &keys));
        let rdp_tls = match &config.rdp {
            Some(rdp) => {
                Some(Arc::new(crate::rdp::tls::ClientSide::load(&config, rdp, &keys).map_err(StartError::Rdp)?))
            }
            None => None,
        };
        Ok(Arc::new(Gateway {
            sign_ins: crate::limits::Limiter::new(
                config.ssh.max_pending_sign_ins_per_source,
                config.ssh.max_pending_sign_ins,
            ),
            refusals: Arc::new(crate::limits::Refusals::new(config.gateway.refusal_audit_interval)),
            notifier: crate::notify::Notifier::new(config.notify.clone()),
            ports,
            inventory,
            arm,
            rdp_tls,
            config: Arc::new(config),
            keys,
            store,
            clock,
            oidc,
            sessions,
            recordings,
            enforcer,
            outer_ssh,
        }))
    }

    /// Counts a refusal of a peer that has not signed in (audited in aggregate, see `audit_refusals`).
    pub fn refused(&self, ip: std::net::IpAddr, reason: crate::limits::Reason) {
        let source = crate::limits::Source::of(ip);
        tracing::debug!(%source, reason = reason.code(), "refused before sign-in");
        self.refusals.record(source, reason, tokio::time::Instant::now().into_std());
    }

    /// Appends to the audit log; a failure is logged, never hidden.
    pub async fn audit(&self, event: AuditEvent) {
        let now = self.clock.now_ms();
        let kind = event.kind;
        if let Err(e) = blocking(&self.store, move |s| s.append_audit(&event, now).map(|_| ())).await {
            tracing::error!(event = kind, error = %e, "cannot write audit record");
        }
    }
}

pub struct Listeners {
    pub ssh: TcpListener,
    /// The HTTPS API, when `[api]` is configured.
    pub api: Option<TcpListener>,
    /// The RDP listener, when `[rdp]` is configured.
    pub rdp: Option<TcpListener>,
}

/// Writes one `refusals.aggregated` audit record per source and interval
/// (`gateway.refusal_audit_interval`), and what is left at shutdown.
async fn audit_refusals(gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let tick = (gateway.refusals.interval() / 4).max(Duration::from_millis(250));
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(tick) => false,
            _ = shutdown.cancelled() => true,
        };
        let due = if stopping {
            gateway.refusals.take_all()
        } else {
            gateway.refusals.take_due(tokio::time::Instant::now().into_std())
        };
        for aggregate in due {
            let client = aggregate.source.map_or_else(|| "other sources".to_string(), |s| s.to_string());
            let counts = aggregate.counts_by_code();
            tracing::warn!(%client, total = aggregate.total(), ?counts, "refused before sign-in");
            let details = serde_json::json!({
                "client_ip": client, "counts": counts, "total": aggregate.total(),
                "interval_s": gateway.refusals.interval().as_secs(),
            });
            gateway.audit(AuditEvent::new("refusals.aggregated", "unauthenticated", details)).await;
        }
        if stopping {
            return;
        }
    }
}

/// Serves until `shutdown` is cancelled, then ends sessions (telling users),
/// seals recordings and returns.
pub async fn run(gateway: Arc<Gateway>, listeners: Listeners, shutdown: CancellationToken) -> Result<(), StartError> {
    let admin = crate::admin::bind(&gateway.config.admin_socket()).map_err(|e| StartError::Admin {
        path: gateway.config.admin_socket().display().to_string(),
        message: e.to_string(),
    })?;
    let tasks = tokio_util::task::TaskTracker::new();
    // Before anything is served: what a crash left open is from the previous run.
    crate::recovery::after_crash(&gateway, &tasks).await;
    tasks.spawn(crate::memory::housekeeping(Arc::clone(&gateway.sessions), shutdown.clone()));
    tasks.spawn(Arc::clone(&gateway.ports).run(shutdown.clone()));
    if let (Some(arm), Some(az)) = (gateway.arm.clone(), gateway.config.azure.clone()) {
        let (gw, stop) = (Arc::clone(&gateway), shutdown.clone());
        tasks.spawn(async move {
            // Azure addresses and leftover openings: now, then every reconcile interval.
            loop {
                for problem in gw.inventory.refresh(&arm, &gw.config.targets, &az.discover).await {
                    tracing::warn!(%problem, "Azure inventory");
                }
                gw.ports.reconcile().await;
                tokio::select! {
                    _ = tokio::time::sleep(az.reconcile_interval) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    tasks.spawn(audit_refusals(Arc::clone(&gateway), shutdown.clone()));
    tasks.spawn(crate::admin::serve(Arc::clone(&gateway), admin, shutdown.clone()));
    tasks.spawn(crate::ssh::serve(Arc::clone(&gateway), listeners.ssh, shutdown.clone()));
    if let Some(rdp) = listeners.rdp {
        tasks.spawn(crate::rdp::serve(Arc::clone(&gateway), rdp, shutdown.clone()));
    }
    if let Some(api) = listeners.api {
        let (gw, stop) = (Arc::clone(&gateway), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = crate::api::serve(gw, api, stop.clone()).await {
                tracing::error!(error = %e, "the HTTPS API cannot start; stopping");
                stop.cancel();
            }
        });
    }
    tracing::info!(
        ssh = %gateway.config.ssh.listen,
        rdp = ?gateway.config.rdp.as_ref().map(|r| r.listen),
        admin = %gateway.config.admin_socket().display(),
        targets = gateway.inventory.snapshot().len(),
        ports = gateway.ports.kind(),
        "jit-gateway is running"
    );
    if !gateway.config.recording.enabled {
        tracing::warn!("recording.enabled = false: sessions are NOT recorded");
    }
    gateway
        .audit(AuditEvent::new(
            "gateway.started",
            "jit-gateway",
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "recording": gateway.config.recording.enabled}),
        ))
        .await;
    // After `gateway.started`, so grants that ended while the gateway was down are audited after it.
    // (Sessions starting meanwhile are safe: each checks its grant again by ID and has its own expiry timer.)
    tasks.spawn(Arc::clone(&gateway.enforcer).run(shutdown.clone()));

    shutdown.cancelled().await;
    let live = gateway.sessions.end_all("the gateway is shutting down");
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), gateway.recordings.drain()).await;
    gateway.audit(AuditEvent::new("gateway.stopped", "jit-gateway", serde_json::json!({"sessions_ended": live}))).await;
    let _ = std::fs::remove_file(gateway.config.admin_socket());
    tracing::info!(sessions_ended = live, "jit-gateway stopped");
    Ok(())
}
