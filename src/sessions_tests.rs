//! Unit tests of `sessions`: the registry, the re-check by grant ID, expiry
//! timers and the enforcer under concurrent runs.

use std::time::Duration;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::store::{RedbStore, Revocation};

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
        state: SessionState::Starting,
    }
}

fn grant(id: &str, expires_at_ms: i64) -> Grant {
    Grant {
        id: id.into(),
        user: "alice@example.test".into(),
        target: "vm1".into(),
        protocol: Protocol::Ssh,
        logins: vec!["admin".into()],
        port_forwarding: false,
        rdp_redirect: Vec::new(),
        not_before_ms: 0,
        expires_at_ms,
        reason: "r".into(),
        created_by: "root".into(),
        created_at_ms: 0,
        request_id: None,
        approved_by: vec![],
        revocation: None,
        ended_ms: None,
    }
}

fn store() -> (tempfile::TempDir, SharedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("gateway.redb")).unwrap();
    (dir, Arc::new(store))
}

/// A far-away expiry, for tests that are not about the timer.
const LATER: i64 = i64::MAX / 2;

#[tokio::test]
async fn ending_a_grant_ends_its_sessions_only() {
    let reg = SessionRegistry::new();
    let (a, b) = (EndSignal::new(), EndSignal::new());
    let _ga = reg.register(info("s-1", "g-1"), a.clone(), LATER, 0);
    let gb = reg.register(info("s-2", "g-2"), b.clone(), LATER, 0);
    assert_eq!(reg.end_grant("g-1", "revoked"), 1);
    assert_eq!(a.ended().await, "revoked");
    assert!(!b.is_ended());
    drop(gb);
    assert_eq!(reg.list().len(), 1);
    // The first reason sticks.
    a.end("later");
    assert_eq!(a.reason(), "revoked");
}

#[test]
fn a_grant_holds_only_while_live_by_id() {
    let now = 1_000;
    let live = grant("g-1", 2_000);
    assert_eq!(grant_holds(Some(&live), "g-1", now), Ok(()));
    assert_eq!(grant_holds(None, "g-1", now), Err(NotLive::GrantGone("g-1".into())));
    let expired = grant_holds(Some(&live), "g-1", 2_000).unwrap_err();
    assert_eq!(expired.to_string(), "your grant g-1 for vm1 has expired");
    let mut revoked = live.clone();
    revoked.revocation = Some(Revocation { at_ms: 900, by: "bob".into(), reason: "incident".into() });
    let refusal = grant_holds(Some(&revoked), "g-1", now).unwrap_err();
    assert_eq!(refusal.code(), "grant-ended");
    assert!(refusal.to_string().contains("was revoked by bob: incident"), "{refusal}");
    let mut processed = live.clone();
    processed.ended_ms = Some(900);
    assert!(matches!(grant_holds(Some(&processed), "g-1", now), Err(NotLive::GrantEnded(_))));
    let mut later = live;
    later.not_before_ms = 1_500;
    assert_eq!(grant_holds(Some(&later), "g-1", now).unwrap_err().code(), "grant-not-yet");
}

#[tokio::test]
async fn a_starting_session_is_reached_by_its_grant_end_and_cannot_go_live() {
    let (_dir, store) = store();
    store.insert_grant(&grant("g-1", LATER)).unwrap();
    let reg = SessionRegistry::new();
    let end = EndSignal::new();
    let _guard = reg.register(info("s-1", "g-1"), end.clone(), LATER, 0);
    assert_eq!(reg.list()[0].state, SessionState::Starting);
    assert_eq!(reg.end_grant("g-1", "your grant g-1 for vm1 was revoked"), 1);
    let refused = reg.go_live("s-1", store.as_ref(), 1_000).unwrap_err();
    assert_eq!(refused, NotLive::SessionEnded("your grant g-1 for vm1 was revoked".into()));
}

#[tokio::test]
async fn going_live_rereads_the_grant_by_id() {
    let (_dir, store) = store();
    store.insert_grant(&grant("g-1", LATER)).unwrap();
    let reg = SessionRegistry::new();
    let end = EndSignal::new();
    let _guard = reg.register(info("s-1", "g-1"), end.clone(), LATER, 0);
    assert_eq!(reg.go_live("s-1", store.as_ref(), 1_000), Ok(()));
    assert_eq!(reg.list()[0].state, SessionState::Live);

    // Revoked in the store after the first check, before the enforcer ran: refused, and ended.
    let end2 = EndSignal::new();
    let _guard2 = reg.register(info("s-2", "g-1"), end2.clone(), LATER, 0);
    store
        .update_grant("g-1", &mut |g| {
            g.revocation = Some(Revocation { at_ms: 1_500, by: "bob".into(), reason: "done".into() });
            Ok(())
        })
        .unwrap();
    let refused = reg.go_live("s-2", store.as_ref(), 2_000).unwrap_err();
    assert!(matches!(refused, NotLive::GrantEnded(_)), "{refused:?}");
    assert!(end2.is_ended());
    assert!(end2.reason().contains("was revoked by bob"), "{}", end2.reason());
    assert_eq!(
        reg.go_live("s-9", store.as_ref(), 2_000).unwrap_err(),
        NotLive::SessionEnded("the session was ended".into())
    );
}

#[tokio::test]
async fn a_session_ends_by_itself_at_its_grants_expiry() {
    let reg = SessionRegistry::new();
    let end = EndSignal::new();
    let _guard = reg.register(info("s-1", "g-1"), end.clone(), 1_200, 1_000);
    let reason = tokio::time::timeout(Duration::from_secs(10), end.ended()).await.expect("ended at the deadline");
    assert_eq!(reason, "your grant g-1 for vm1 has expired");

    // A guard dropped before the deadline stops its timer.
    let other = EndSignal::new();
    drop(reg.register(info("s-2", "g-2"), other.clone(), 1_100, 1_000));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!other.is_ended());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enforcer_runs_end_a_grant_once() {
    let (_dir, store) = store();
    let clock = ManualClock::starting_at(10_000);
    let shared_clock: SharedClock = clock.clone();
    let sessions = SessionRegistry::new();
    let ports = crate::ports::Openings::new(
        Arc::new(crate::ports::NoneOpener),
        Arc::clone(&store),
        Arc::clone(&shared_clock),
        Duration::from_secs(60),
    );
    let enforcer = GrantEnforcer::new(Arc::clone(&store), shared_clock, Arc::clone(&sessions), ports);
    for round in 0..5 {
        let id = format!("g-{round}");
        store.insert_grant(&grant(&id, clock.now_ms() + 1_000)).unwrap();
        let end = EndSignal::new();
        let _guard = sessions.register(info(&format!("s-{round}"), &id), end.clone(), LATER, 0);
        clock.advance(Duration::from_secs(2));
        let runs: Vec<_> = (0..8)
            .map(|_| {
                let e = Arc::clone(&enforcer);
                tokio::spawn(async move { e.enforce_now().await.unwrap() })
            })
            .collect();
        let mut processed = 0;
        for run in runs {
            processed += run.await.unwrap();
        }
        assert_eq!(processed, 1, "round {round}: one run processes the grant's end");
        assert!(end.is_ended());
        assert!(store.grant(&id).unwrap().unwrap().ended_ms.is_some());
    }
    let ends = store.audit_records(0, 1000).unwrap().into_iter().filter(|r| r.kind == "grant.ended.expired").count();
    assert_eq!(ends, 5, "one end record per grant, whatever the concurrency");
}
