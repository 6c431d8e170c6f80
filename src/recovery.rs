//! Start-up after a crash (`kill -9`, power loss): the store still lists the
//! sessions and recordings of the previous run as live. Before anything is
//! served, the gateway takes both lists (after that, open ones are new); it
//! ends those sessions in the store and the audit log at once, and seals
//! those recordings as interrupted in the background (hashing can take a
//! while; see `recording::recovery`). Nothing here runs while serving.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::store::{AuditEvent, SessionRecord, blocking};

/// Why a session was ended at start-up.
pub const SESSION_REASON: &str = "interrupted: the gateway stopped while the session was live";

/// Ends what the previous run left open; recordings are sealed on `tasks`.
pub async fn after_crash(gateway: &Arc<Gateway>, tasks: &TaskTracker) {
    let recordings = crate::recording::recovery::left_open(&gateway.store).await;
    let sessions = match blocking(&gateway.store, |s| s.sessions(usize::MAX)).await {
        Ok(all) => all.into_iter().filter(|s| s.ended_ms.is_none()).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot list sessions left open by a crash");
            Vec::new()
        }
    };
    let ended = end_sessions(gateway, sessions).await;
    if ended > 0 || !recordings.is_empty() {
        tracing::warn!(
            sessions = ended,
            recordings = recordings.len(),
            "the gateway did not stop cleanly last time: ending its sessions and sealing its recordings as interrupted"
        );
    }
    if !recordings.is_empty() {
        tasks.spawn(crate::recording::recovery::seal_interrupted(Arc::clone(&gateway.recordings), recordings));
    }
}

async fn end_sessions(gateway: &Gateway, sessions: Vec<SessionRecord>) -> usize {
    let mut ended = 0;
    for mut session in sessions {
        let now = gateway.clock.now_ms();
        session.ended_ms = Some(now);
        session.end_reason = Some(SESSION_REASON.into());
        let event = AuditEvent::new(
            "session.ended",
            session.user.clone(),
            serde_json::json!({"session": session.id, "login": session.login, "grant": session.grant_id,
                               "protocol": session.protocol, "reason": SESSION_REASON, "interrupted": true}),
        )
        .on(session.target.clone());
        let id = session.id.clone();
        match blocking(&gateway.store, move |s| {
            s.upsert_session(&session)?;
            s.append_audit(&event, now).map(|_| ())
        })
        .await
        {
            Ok(()) => ended += 1,
            Err(e) => tracing::error!(session = %id, error = %e, "cannot end a session left open by a crash"),
        }
    }
    ended
}
