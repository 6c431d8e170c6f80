//! Live sessions, and ending them when their grant ends.
//!
//! Every relayed connection registers here with the grant that allows it,
//! *before* its slow setup (port opening, upstream connect, RDP handshakes),
//! in the `starting` state: ending the grant reaches it from then on. When
//! the setup is done, `go_live` re-reads the grant by ID under the registry's
//! lock and refuses if it is over, so a grant that ended before registration
//! is caught too. Each registration also arms a timer at the grant's expiry,
//! so expiry never depends on the enforcer having seen it.
//!
//! The `GrantEnforcer` sleeps until the next grant end (expiry or
//! revocation) in the store, or until told that grants changed, and then ends
//! the sessions of every grant that is over, telling users why; each grant's
//! end is claimed once in the store, so concurrent runs never write two end
//! records or release its ports twice. Ending a session is a signal with a
//! reason; the relay writes the reason to the user's terminal and closes the
//! connection. This module never does I/O toward clients or targets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, format_ms};
use crate::store::{AuditEvent, Grant, GrantStatus, Protocol, SharedStore, Store, blocking};

/// Where a registered session is: still connecting, or relaying.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Registered, its setup (port, upstream, handshakes) still running.
    Starting,
    #[default]
    Live,
}

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
    #[serde(default)]
    pub state: SessionState,
}

/// Why a session may not start or go on: its grant is over, or it was ended.
/// The text is what the user is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotLive {
    #[error("your grant {0} no longer exists")]
    GrantGone(String),
    /// Revoked, expired, or its end already processed; the text says which.
    #[error("{0}")]
    GrantEnded(String),
    #[error("your grant {grant} starts at {}", format_ms(*starts_ms))]
    GrantNotYet { grant: String, starts_ms: i64 },
    /// The session was told to end (grant end, admin kill, shutdown) while starting.
    #[error("{0}")]
    SessionEnded(String),
    #[error("the gateway cannot check your grant right now ({0})")]
    Store(String),
}

impl NotLive {
    /// A stable code for logs and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            NotLive::GrantGone(_) => "grant-gone",
            NotLive::GrantEnded(_) => "grant-ended",
            NotLive::GrantNotYet { .. } => "grant-not-yet",
            NotLive::SessionEnded(_) => "session-ended",
            NotLive::Store(_) => "store-unavailable",
        }
    }
}

/// Whether the grant read by ID still allows a session at `now_ms`: not
/// revoked, not expired by the clock, its end not processed, its window begun.
pub fn grant_holds(grant: Option<&Grant>, grant_id: &str, now_ms: i64) -> Result<(), NotLive> {
    let Some(grant) = grant else { return Err(NotLive::GrantGone(grant_id.to_string())) };
    if grant.revocation.is_some() || grant.ended_ms.is_some() || now_ms >= grant.expires_at_ms {
        return Err(NotLive::GrantEnded(grant_end_message(grant)));
    }
    if now_ms < grant.not_before_ms {
        return Err(NotLive::GrantNotYet { grant: grant.id.clone(), starts_ms: grant.not_before_ms });
    }
    Ok(())
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

/// Removes the session from the registry (and stops its expiry timer) when dropped.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    id: String,
    timer: CancellationToken,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.timer.cancel();
        if let Ok(mut live) = self.registry.live.lock() {
            live.remove(&self.id);
        }
    }
}

impl SessionRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a session (usually `Starting`, before its slow setup) and arms
    /// a timer that ends it at `expires_at_ms`, its grant's expiry.
    pub fn register(
        self: &Arc<Self>,
        info: LiveSession,
        end: EndSignal,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> SessionGuard {
        let id = info.id.clone();
        let message = expired_message(&info.grant_id, &info.target);
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.clone(), Entry { info, end: end.clone() });
        }
        let timer = CancellationToken::new();
        let stop = timer.clone();
        let wait = Duration::from_millis(expires_at_ms.saturating_sub(now_ms).max(0) as u64);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => end.end(message),
                _ = stop.cancelled() => {}
                _ = end.token.cancelled() => {}
            }
        });
        SessionGuard { registry: Arc::clone(self), id, timer }
    }

    /// Makes a starting session live, after re-reading its grant by ID from
    /// `store` under the registry's lock (so `end_grant` cannot pass in between).
    /// A grant that is over, or a session told to end meanwhile, is refused:
    /// the session is ended with the reason, which is returned.
    pub fn go_live(&self, session_id: &str, store: &dyn Store, now_ms: i64) -> Result<(), NotLive> {
        let Ok(mut live) = self.live.lock() else {
            return Err(NotLive::Store("the session registry is poisoned".into()));
        };
        let Some(entry) = live.get_mut(session_id) else {
            return Err(NotLive::SessionEnded("the session was ended".into()));
        };
        if entry.end.is_ended() {
            return Err(NotLive::SessionEnded(entry.end.reason()));
        }
        let checked = match store.grant(&entry.info.grant_id) {
            Ok(grant) => grant_holds(grant.as_ref(), &entry.info.grant_id, now_ms),
            Err(e) => Err(NotLive::Store(e.to_string())),
        };
        match checked {
            Ok(()) => {
                entry.info.state = SessionState::Live;
                Ok(())
            }
            Err(refusal) => {
                entry.end.end(refusal.to_string());
                Err(refusal)
            }
        }
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
        None => expired_message(&grant.id, &grant.target),
    }
}

fn expired_message(grant_id: &str, target: &str) -> String {
    format!("your grant {grant_id} for {target} has expired")
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
    /// Safe to call concurrently: each grant's end is claimed once in the store
    /// (one `grant.ended.*` record, one port release); ending sessions twice is harmless.
    pub async fn enforce_now(&self) -> Result<usize, crate::store::StoreError> {
        let now = self.clock.now_ms();
        let due = blocking(&self.store, move |s| s.grants_due(now)).await?;
        let mut ended = 0;
        for grant in due {
            let message = grant_end_message(&grant);
            let sessions = self.sessions.end_grant(&grant.id, &message);
            let id = grant.id.clone();
            let status = grant.status(now);
            let event = AuditEvent::new(
                if status == GrantStatus::Revoked { "grant.ended.revoked" } else { "grant.ended.expired" },
                "jit-gateway",
                serde_json::json!({"grant": grant.id, "user": grant.user, "sessions_ended": sessions}),
            )
            .on(grant.target.clone());
            let claimed = blocking(&self.store, move |s| s.finish_grant(&id, now, &event)).await?;
            if !claimed {
                continue; // another run processed it meanwhile
            }
            self.ports.release_grant(&grant.id).await;
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
#[path = "sessions_tests.rs"]
mod tests;
