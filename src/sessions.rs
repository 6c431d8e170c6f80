//! Live sessions, and ending them when their grant ends.
//!
//! Every relayed connection registers here with the grant that allows it.
//! The `GrantEnforcer` sleeps until the next grant end (expiry or
//! revocation) in the store, or until told that grants changed, and then ends
//! the sessions of every grant that is over, telling users why. Ending a
//! session is a signal with a reason; the relay writes the reason to the
//! user's terminal and closes the connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{AuditEvent, Grant, GrantStatus, Protocol, SharedStore, blocking};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSession {
    pub id: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub protocol: Protocol,
    pub grant_id: String,
    pub client_ip: Option<String>,
    pub started_ms: i64,
}

/// Tells a session to end, and why. Cloned into every task of the session.
#[derive(Debug, Clone, Default)]
pub struct EndSignal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl EndSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the session; the first reason given is the one users see.
    pub fn end(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| reason.into());
        }
        self.token.cancel();
    }

    pub fn is_ended(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> String {
        self.reason.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| "the session was ended".into())
    }

    /// Resolves with the reason once the session is told to end.
    pub async fn ended(&self) -> String {
        self.token.cancelled().await;
        self.reason()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

struct Entry {
    info: LiveSession,
    end: EndSignal,
}

#[derive(Default)]
pub struct SessionRegistry {
    live: Mutex<HashMap<String, Entry>>,
}

/// Removes the session from the registry when dropped.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.registry.live.lock() {
            live.remove(&self.id);
        }
    }
}

impl SessionRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(self: &Arc<Self>, info: LiveSession, end: EndSignal) -> SessionGuard {
        let id = info.id.clone();
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.clone(), Entry { info, end });
        }
        SessionGuard { registry: Arc::clone(self), id }
    }

    fn end_where(&self, reason: &str, matches: impl Fn(&LiveSession) -> bool) -> usize {
        let Ok(live) = self.live.lock() else { return 0 };
        let mut n = 0;
        for entry in live.values().filter(|e| matches(&e.info)) {
            entry.end.end(reason);
            n += 1;
        }
        n
    }

    /// Ends every session running under `grant_id`; returns how many.
    pub fn end_grant(&self, grant_id: &str, reason: &str) -> usize {
        self.end_where(reason, |s| s.grant_id == grant_id)
    }

    pub fn end_session(&self, session_id: &str, reason: &str) -> bool {
        self.end_where(reason, |s| s.id == session_id) > 0
    }

    pub fn end_all(&self, reason: &str) -> usize {
        self.end_where(reason, |_| true)
    }

    pub fn list(&self) -> Vec<LiveSession> {
        let Ok(live) = self.live.lock() else { return Vec::new() };
        let mut out: Vec<LiveSession> = live.values().map(|e| e.info.clone()).collect();
        out.sort_by_key(|a| a.started_ms);
        out
    }
}

/// What users are told when their grant ends.
pub fn grant_end_message(grant: &Grant) -> String {
    match &grant.revocation {
        Some(r) => format!("your grant {} for {} was revoked by {}: {}", grant.id, grant.target, r.by, r.reason),
        None => format!("your grant {} for {} has expired", grant.id, grant.target),
    }
}

/// Ends sessions when grants end, from a single place.
pub struct GrantEnforcer {
    store: SharedStore,
    clock: SharedClock,
    sessions: Arc<SessionRegistry>,
    ports: Arc<crate::ports::Openings>,
    changed: Notify,
}

/// Longest sleep between looks at the store (a safety net; changes also wake it).
const MAX_SLEEP: Duration = Duration::from_secs(30);

impl GrantEnforcer {
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        sessions: Arc<SessionRegistry>,
        ports: Arc<crate::ports::Openings>,
    ) -> Arc<Self> {
        Arc::new(GrantEnforcer { store, clock, sessions, ports, changed: Notify::new() })
    }

    /// Wakes the enforcer: a grant was added, revoked or changed.
    pub fn grants_changed(&self) {
        self.changed.notify_one();
    }

    /// Ends the sessions of every grant that is over and marks it processed.
    pub async fn enforce_now(&self) -> Result<usize, crate::store::StoreError> {
        let now = self.clock.now_ms();
        let due = blocking(&self.store, move |s| s.grants_due(now)).await?;
        let mut ended = 0;
        for grant in due {
            let message = grant_end_message(&grant);
            let sessions = self.sessions.end_grant(&grant.id, &message);
            self.ports.release_grant(&grant.id).await;
            let id = grant.id.clone();
            let status = grant.status(now);
            let event = AuditEvent::new(
                if status == GrantStatus::Revoked { "grant.ended.revoked" } else { "grant.ended.expired" },
                "jit-gateway",
                serde_json::json!({"grant": grant.id, "user": grant.user, "sessions_ended": sessions}),
            )
            .on(grant.target.clone());
            blocking(&self.store, move |s| {
                s.update_grant(&id, &mut |g| {
                    g.ended_ms = Some(now);
                    Ok(())
                })?;
                s.append_audit(&event, now).map(|_| ())
            })
            .await?;
            tracing::info!(grant = %grant.id, user = %grant.user, target = %grant.target, sessions, "grant ended ({status})");
            ended += 1;
        }
        Ok(ended)
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.enforce_now().await {
                tracing::error!(error = %e, "cannot process ended grants; retrying");
            }
            let next = blocking(&self.store, |s| s.next_grant_end()).await.ok().flatten();
            let wait = match next {
                Some(at) => {
                    Duration::from_millis((at - self.clock.now_ms()).clamp(0, MAX_SLEEP.as_millis() as i64) as u64)
                }
                None => MAX_SLEEP,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, grant: &str) -> LiveSession {
        LiveSession {
            id: id.into(),
            user: "alice@example.test".into(),
            target: "vm1".into(),
            login: "admin".into(),
            protocol: Protocol::Ssh,
            grant_id: grant.into(),
            client_ip: None,
            started_ms: 0,
        }
    }

    #[tokio::test]
    async fn ending_a_grant_ends_its_sessions_only() {
        let reg = SessionRegistry::new();
        let (a, b) = (EndSignal::new(), EndSignal::new());
        let _ga = reg.register(info("s-1", "g-1"), a.clone());
        let gb = reg.register(info("s-2", "g-2"), b.clone());
        assert_eq!(reg.end_grant("g-1", "revoked"), 1);
        assert_eq!(a.ended().await, "revoked");
        assert!(!b.is_ended());
        drop(gb);
        assert_eq!(reg.list().len(), 1);
        // The first reason sticks.
        a.end("later");
        assert_eq!(a.reason(), "revoked");
    }
}
