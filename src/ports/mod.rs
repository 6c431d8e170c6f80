//! Opening a target's port in the cloud firewall for the gateway, only while
//! a grant needs it.
//!
//! `PortOpener` is what a backend implements (open, close, reconcile);
//! `Openings` decides *when*. A port opens at a grant's first session, is
//! shared by that grant's sessions, and closes when the grant ends or
//! `linger` after its last session, whichever comes first. Every opening is a
//! `Lease` in the store, written *before* the cloud call: after a crash,
//! reconcile (at start and every `reconcile_interval`) closes what no live
//! lease explains and re-creates what a live one lost.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::TargetConfig;
use crate::store::{AuditEvent, GrantStatus, Lease, SharedStore, blocking};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{0}")]
    Backend(String),
}

/// What to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    pub lease_id: String,
    pub grant_id: String,
    pub target: String,
    pub port: u16,
    pub until_ms: i64,
}

impl OpenRequest {
    /// What a backend reports once it has opened the port: the request, plus its own record.
    pub fn opened(&self, detail: serde_json::Value) -> Opening {
        Opening {
            lease_id: self.lease_id.clone(),
            grant_id: self.grant_id.clone(),
            target: self.target.clone(),
            port: self.port,
            until_ms: self.until_ms,
            detail,
        }
    }
}

/// What a backend opened (enough to close it again, even after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    pub lease_id: String,
    pub grant_id: String,
    pub target: String,
    pub port: u16,
    pub until_ms: i64,
    /// Backend-specific record (rule names, NSG IDs, Azure request IDs).
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl Opening {
    fn from_lease(lease: &Lease) -> Opening {
        Opening {
            lease_id: lease.id.clone(),
            grant_id: lease.grant_id.clone(),
            target: lease.target.clone(),
            port: lease.port,
            until_ms: lease.until_ms,
            detail: lease.detail.clone(),
        }
    }
}

pub trait PortOpener: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn open<'a>(
        &'a self,
        target: &'a TargetConfig,
        request: &'a OpenRequest,
    ) -> BoxFuture<'a, Result<Opening, PortError>>;
    /// Closes an opening; returns the backend's request IDs for the audit log.
    fn close<'a>(&'a self, opening: &'a Opening) -> BoxFuture<'a, Result<Vec<String>, PortError>>;
    /// Removes what no live lease explains, restores what live leases lost.
    fn reconcile<'a>(&'a self, _live: &'a [Lease]) -> BoxFuture<'a, Result<Vec<String>, PortError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The gateway reaches its targets without opening anything.
pub struct NoneOpener;

impl PortOpener for NoneOpener {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn open<'a>(
        &'a self,
        _target: &'a TargetConfig,
        request: &'a OpenRequest,
    ) -> BoxFuture<'a, Result<Opening, PortError>> {
        let opening = request.opened(serde_json::Value::Null);
        Box::pin(async move { Ok(opening) })
    }

    fn close<'a>(&'a self, _opening: &'a Opening) -> BoxFuture<'a, Result<Vec<String>, PortError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[derive(Default)]
struct Slot {
    lease: Option<Lease>,
    sessions: usize,
}

pub struct Openings {
    opener: Arc<dyn PortOpener>,
    store: SharedStore,
    clock: SharedClock,
    linger: Duration,
    slots: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    me: Weak<Openings>,
}

/// Held by a session while it uses an opening; dropping it lets the opening linger and close.
pub struct SessionHold {
    openings: Weak<Openings>,
    key: String,
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        if let Some(openings) = self.openings.upgrade() {
            let key = std::mem::take(&mut self.key);
            tokio::spawn(async move { openings.session_ended(&key).await });
        }
    }
}

fn key(grant_id: &str, target: &str) -> String {
    format!("{grant_id}/{target}")
}

impl Openings {
    pub fn new(opener: Arc<dyn PortOpener>, store: SharedStore, clock: SharedClock, linger: Duration) -> Arc<Openings> {
        Arc::new_cyclic(|me| Openings {
            opener,
            store,
            clock,
            linger,
            slots: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    pub fn kind(&self) -> &'static str {
        self.opener.kind()
    }

    fn uses_cloud(&self) -> bool {
        self.opener.kind() != "none"
    }

    async fn slot(&self, key: &str) -> Arc<Mutex<Slot>> {
        Arc::clone(self.slots.lock().await.entry(key.to_string()).or_default())
    }

    async fn audit(&self, kind: &'static str, target: &str, details: serde_json::Value) {
        let now = self.clock.now_ms();
        let event = AuditEvent::new(kind, "jit-gateway", details).on(target.to_string());
        if let Err(e) = blocking(&self.store, move |s| s.append_audit(&event, now).map(|_| ())).await {
            tracing::error!(error = %e, "cannot write audit record");
        }
    }

    /// Makes sure `target`'s port is open for this grant and counts one more
    /// session on it. Returns once it is open (or why it cannot be).
    pub async fn ensure(
        &self,
        grant_id: &str,
        name: &str,
        target: &TargetConfig,
        port: u16,
        until_ms: i64,
    ) -> Result<SessionHold, PortError> {
        let k = key(grant_id, name);
        let hold = SessionHold { openings: self.me.clone(), key: k.clone() };
        let slot = self.slot(&k).await;
        let mut guard = slot.lock().await;
        let slot = &mut *guard;
        if let Some(lease) = slot.lease.as_mut() {
            slot.sessions += 1;
            if lease.idle_since_ms.take().is_some() {
                let stored = lease.clone();
                let _ = blocking(&self.store, move |s| s.upsert_lease(&stored)).await;
            }
            return Ok(hold);
        }
        if !self.uses_cloud() {
            slot.lease = Some(Lease {
                id: String::new(),
                grant_id: grant_id.into(),
                target: name.into(),
                port,
                backend: "none".into(),
                created_ms: self.clock.now_ms(),
                until_ms,
                idle_since_ms: None,
                opened_ms: None,
                detail: serde_json::Value::Null,
            });
            slot.sessions = 1;
            return Ok(hold);
        }
        let now = self.clock.now_ms();
        let mut lease = Lease {
            id: crate::ids::new_id("p"),
            grant_id: grant_id.into(),
            target: name.into(),
            port,
            backend: self.opener.kind().into(),
            created_ms: now,
            until_ms,
            idle_since_ms: None,
            opened_ms: None,
            detail: serde_json::Value::Null,
        };
        // The lease first: if the gateway dies during the cloud call, reconcile knows what to undo.
        let stored = lease.clone();
        blocking(&self.store, move |s| s.upsert_lease(&stored)).await.map_err(|e| PortError::Backend(e.to_string()))?;
        let request =
            OpenRequest { lease_id: lease.id.clone(), grant_id: grant_id.into(), target: name.into(), port, until_ms };
        match self.opener.open(target, &request).await {
            Ok(opening) => {
                lease.opened_ms = Some(self.clock.now_ms());
                lease.detail = opening.detail.clone();
                let stored = lease.clone();
                if let Err(e) = blocking(&self.store, move |s| s.upsert_lease(&stored)).await {
                    tracing::error!(error = %e, "cannot record an opening; reconcile will find it");
                }
                self.audit("port.opened", name, serde_json::json!({"lease": lease.id, "grant": grant_id, "backend": lease.backend, "port": lease.port, "detail": lease.detail})).await;
                tracing::info!(target = name, lease = %lease.id, backend = %lease.backend, "port opened for the gateway");
                slot.lease = Some(lease);
                slot.sessions = 1;
                Ok(hold)
            }
            Err(e) => {
                self.audit(
                    "port.open-failed",
                    name,
                    serde_json::json!({"lease": lease.id, "grant": grant_id, "error": e.to_string()}),
                )
                .await;
                // Whatever the backend may have created stays covered by the lease until
                // closing it succeeds (now or at reconcile).
                let opening = Opening::from_lease(&lease);
                if self.opener.close(&opening).await.is_ok() {
                    let id = lease.id.clone();
                    let _ = blocking(&self.store, move |s| s.remove_lease(&id)).await;
                } else {
                    lease.idle_since_ms = Some(0);
                    let stored = lease.clone();
                    let _ = blocking(&self.store, move |s| s.upsert_lease(&stored)).await;
                }
                Err(e)
            }
        }
    }

    /// `ensure` in its own task, run to completion even when the caller stops
    /// waiting (its session ended during the setup, or a handshake timed out):
    /// a cloud call is never cut half-way, and an opening nobody waits for any
    /// more is let go like the opening of a session that ended.
    pub async fn ensure_detached(
        self: &Arc<Self>,
        grant_id: &str,
        name: &str,
        target: &TargetConfig,
        port: u16,
        until_ms: i64,
    ) -> Result<SessionHold, PortError> {
        let (me, grant_id, name, target) = (Arc::clone(self), grant_id.to_string(), name.to_string(), target.clone());
        tokio::spawn(async move { me.ensure(&grant_id, &name, &target, port, until_ms).await })
            .await
            .map_err(|e| PortError::Backend(format!("the port opening task failed: {e}")))?
    }

    async fn session_ended(&self, k: &str) {
        let slot = self.slot(k).await;
        let mut slot = slot.lock().await;
        slot.sessions = slot.sessions.saturating_sub(1);
        if slot.sessions > 0 {
            return;
        }
        let now = self.clock.now_ms();
        match slot.lease.as_mut() {
            Some(lease) if !lease.id.is_empty() => {
                lease.idle_since_ms = Some(now);
                let stored = lease.clone();
                let _ = blocking(&self.store, move |s| s.upsert_lease(&stored)).await;
            }
            Some(_) => slot.lease = None,
            None => {}
        }
    }

    async fn close_slot(&self, slot: &mut Slot, why: &str) {
        let Some(lease) = slot.lease.clone() else { return };
        if lease.id.is_empty() {
            slot.lease = None;
            return;
        }
        match self.opener.close(&Opening::from_lease(&lease)).await {
            Ok(request_ids) => {
                let id = lease.id.clone();
                let _ = blocking(&self.store, move |s| s.remove_lease(&id)).await;
                self.audit("port.closed", &lease.target, serde_json::json!({"lease": lease.id, "grant": lease.grant_id, "why": why, "request_ids": request_ids, "detail": lease.detail})).await;
                tracing::info!(target = %lease.target, lease = %lease.id, why, "port closed");
                slot.lease = None;
            }
            Err(e) => tracing::error!(lease = %lease.id, error = %e, "cannot close a port opening; will retry"),
        }
    }

    /// Closes what a grant opened (it ended or was revoked).
    pub async fn release_grant(&self, grant_id: &str) {
        let keys: Vec<String> =
            self.slots.lock().await.keys().filter(|k| k.starts_with(&format!("{grant_id}/"))).cloned().collect();
        for k in keys {
            let slot = self.slot(&k).await;
            let mut slot = slot.lock().await;
            self.close_slot(&mut slot, "the grant ended").await;
        }
    }

    /// Closes openings idle for longer than the linger.
    async fn sweep(&self) {
        let now = self.clock.now_ms();
        let keys: Vec<String> = self.slots.lock().await.keys().cloned().collect();
        for k in keys {
            let slot = self.slot(&k).await;
            let mut slot = slot.lock().await;
            let due = slot.sessions == 0
                && slot.lease.as_ref().is_some_and(|l| {
                    l.until_ms <= now || l.idle_since_ms.is_some_and(|t| t + self.linger.as_millis() as i64 <= now)
                });
            if due {
                self.close_slot(&mut slot, "no session used it for the linger time").await;
            }
        }
    }

    /// At start: every stored lease is taken over with no sessions; those whose grant is over
    /// are closed, the others linger. Then the backend removes what no lease explains.
    pub async fn reconcile(&self) {
        if !self.uses_cloud() {
            return;
        }
        let now = self.clock.now_ms();
        let Ok(leases) = blocking(&self.store, |s| s.leases()).await else { return };
        for mut lease in leases {
            let k = key(&lease.grant_id, &lease.target);
            let slot = self.slot(&k).await;
            let mut slot = slot.lock().await;
            if slot.lease.is_some() {
                continue;
            }
            let gid = lease.grant_id.clone();
            let grant_live = blocking(&self.store, move |s| s.grant(&gid))
                .await
                .ok()
                .flatten()
                .is_some_and(|g| g.status(now) == GrantStatus::Live);
            lease.idle_since_ms.get_or_insert(now);
            slot.lease = Some(lease);
            slot.sessions = 0;
            if !grant_live {
                self.close_slot(&mut slot, "its grant is over").await;
            }
        }
        self.sweep().await;
        let live: Vec<Lease> = {
            let slots: Vec<Arc<Mutex<Slot>>> = self.slots.lock().await.values().cloned().collect();
            let mut out = Vec::new();
            for s in slots {
                if let Some(l) = s.lock().await.lease.clone().filter(|l| !l.id.is_empty()) {
                    out.push(l);
                }
            }
            out
        };
        match self.opener.reconcile(&live).await {
            Ok(actions) => {
                for action in actions {
                    tracing::warn!(%action, "reconcile");
                    self.audit("port.reconciled", "", serde_json::json!({"action": action})).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "reconcile failed; will retry"),
        }
    }

    /// Closes idle openings, checking every second (reconcile is driven by the Azure task).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.uses_cloud() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
            self.sweep().await;
        }
    }
}
