//! A session never outlives its grant, whatever the timing: a grant that
//! expires or is revoked while the gateway is still connecting to the target
//! ends the session; a new channel after the grant ended is refused; an RDP
//! client that holds back its handshake is cut by the handshake timeout and
//! by a revocation.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::rdp::FakeTarget;
use crate::support::{self, Client, Gw, GwOptions, LOGIN, Sshd, eventually, text};
use jit_gateway::rdp::wire;
use jit_gateway::store::{Revocation, blocking};

const ALICE: &str = "alice@example.test";

/// A TCP proxy to `port` that holds back the target's first bytes (its SSH
/// banner) for `delay`, so the gateway's connect to the target is slow.
async fn slow_banner_proxy(port: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(target) = TcpStream::connect(("127.0.0.1", port)).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut tr, mut tw) = target.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut tw).await });
                tokio::time::sleep(delay).await;
                let _ = tokio::io::copy(&mut tr, &mut cw).await;
                up.abort();
            });
        }
    });
    proxy_port
}

/// vm1 behind a proxy that delays its banner 4 s; alice's key bound, no grant yet.
async fn slow_world() -> Option<(Gw, Sshd, Client)> {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return None;
    }
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let proxy = slow_banner_proxy(sshd.port, Duration::from_secs(4)).await;
    let gw = Gw::start(prepared, GwOptions { sshd_port: Some(proxy), ..Default::default() }).await;
    let alice = Client::new(&gw, "alice", "");
    gw.bind_key(&alice.public_key, ALICE, "alice").await;
    Some((gw, sshd, alice))
}

/// `ssh -J jit-gateway admin@vm1 'sleep 12; echo done'`, started, not awaited.
fn start_long_command(client: &Client) -> tokio::process::Child {
    tokio::process::Command::new("ssh")
        .arg("-F")
        .arg(&client.config)
        .args(["-o", "BatchMode=yes", "-J", "jit-gateway", &format!("{LOGIN}@vm1"), "sleep 12; echo done"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn audit(gw: &Gw) -> Vec<jit_gateway::store::AuditRecord> {
    blocking(&gw.gateway.store, |s| s.audit_records(0, 100_000)).await.unwrap()
}

/// The audit log once a record matching `wanted` is in it (records written just
/// after a session leaves the list), or as it is after 3 s.
async fn audit_with(
    gw: &Gw,
    wanted: impl Fn(&jit_gateway::store::AuditRecord) -> bool,
) -> Vec<jit_gateway::store::AuditRecord> {
    let mut records = audit(gw).await;
    for _ in 0..60 {
        if records.iter().any(&wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        records = audit(gw).await;
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_expires_while_the_gateway_connects_ends_the_session() {
    let Some((gw, _sshd, alice)) = slow_world().await else { return };
    let granted = Instant::now();
    let grant = gw.grant(ALICE, "vm1", &[LOGIN], Duration::from_secs(3)).await;
    let mut ssh = start_long_command(&alice);
    tokio::time::sleep_until((granted + Duration::from_secs(3)).into()).await;
    // The command would run until 16 s; the session must end about when the grant does.
    let over = eventually(Duration::from_secs(4), || matches!(ssh.try_wait(), Ok(Some(_)))).await;
    assert!(over, "the session outlived its grant");
    let out = ssh.wait_with_output().await.unwrap();
    let expires_at = gw.gateway.store.grant(&grant).unwrap().unwrap().expires_at_ms;
    let late = jit_gateway::clock::Clock::now_ms(&jit_gateway::clock::SystemClock) - expires_at;
    eprintln!("the client was gone {late} ms after the grant's end (polled every 50 ms)");
    assert!(!text(&out.stdout).contains("done"), "{}", text(&out.stdout));
    let expired = format!("your grant {grant} for vm1 has expired");
    assert!(text(&out.stderr).contains(&expired), "the user is told why: {}", text(&out.stderr));
    assert!(gw.gateway.sessions.list().is_empty());
    let ended =
        |r: &jit_gateway::store::AuditRecord| r.kind == "grant.ended.expired" && r.details["grant"] == grant.as_str();
    let records = audit_with(&gw, ended).await;
    assert!(
        records.iter().any(|r| r.kind == "access.denied" && r.details["reason"].as_str() == Some(expired.as_str())),
        "{records:?}"
    );
    assert!(records.iter().any(ended), "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_while_the_gateway_connects_ends_the_session() {
    let Some((gw, _sshd, alice)) = slow_world().await else { return };
    let grant = gw.grant(ALICE, "vm1", &[LOGIN], Duration::from_secs(3600)).await;
    let mut ssh = start_long_command(&alice);
    // Registered (starting) while the target's banner is held back.
    assert!(eventually(Duration::from_secs(3), || !gw.gateway.sessions.list().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let revoke = gw.cli(&["grant", "revoke", &grant, "--reason", "incident closed"]).await;
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    let revoked = Instant::now();
    let over = eventually(Duration::from_secs(3), || matches!(ssh.try_wait(), Ok(Some(_)))).await;
    assert!(over, "the session outlived its revoked grant");
    eprintln!("the client was gone {:?} after the revocation returned (polled every 50 ms)", revoked.elapsed());
    let out = ssh.wait_with_output().await.unwrap();
    assert!(!text(&out.stdout).contains("done"), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("your grant {grant} for vm1 was revoked")), "{stderr}");
    assert!(stderr.contains("incident closed"), "{stderr}");
    assert!(eventually(Duration::from_secs(3), || gw.gateway.sessions.list().is_empty()).await);
    let records = audit(&gw).await;
    let ended = records
        .iter()
        .find(|r| r.kind == "grant.ended.revoked" && r.details["grant"] == grant.as_str())
        .expect("the grant's end is audited");
    assert_eq!(ended.details["sessions_ended"], 1, "the starting session was reached: {ended:?}");
    assert_eq!(records.iter().filter(|r| r.kind.starts_with("grant.ended")).count(), 1, "one end record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_opened_after_the_grant_ended_is_refused_and_ends_the_session() {
    let Some(w) = crate::World::new("").await else { return };
    // Multiplexing on the target side: later sessions are new channels on one inner connection.
    let inner = format!(
        "Host vm1\n  ControlMaster auto\n  ControlPath {}/vm1-%C\n  ControlPersist 60\n",
        w.alice.dir.display()
    );
    let config = std::fs::read_to_string(&w.alice.config).unwrap();
    std::fs::write(&w.alice.config, format!("{inner}{config}")).unwrap();
    let first = w.alice.exec("vm1", "echo first", None).await;
    assert_eq!(text(&first.stdout).trim(), "first", "{}", text(&first.stderr));
    assert_eq!(w.gw.gateway.sessions.list().len(), 1, "the master keeps the session");

    revoke_behind_the_enforcers_back(&w.gw, &w.grant).await;
    let second = w.alice.exec("vm1", "echo second", None).await;
    assert!(!text(&second.stdout).contains("second"), "a new channel ran after the revocation");
    let stderr = text(&second.stderr);
    assert!(
        stderr.contains(&format!("your grant {} for vm1 was revoked by bob@example.test: left", w.grant)),
        "{stderr}"
    );
    assert!(
        eventually(Duration::from_secs(5), || w.gw.gateway.sessions.list().is_empty()).await,
        "the session ends with its grant"
    );
    let _ = w.alice.ssh(&["-O", "exit", &format!("{LOGIN}@vm1")], None).await;
}

/// Revokes `grant` in the store only, as another gateway node would: the
/// enforcer here has not run, so only the re-check on a new channel can see it.
async fn revoke_behind_the_enforcers_back(gw: &Gw, grant: &str) {
    let id = grant.to_string();
    let now = jit_gateway::clock::Clock::now_ms(&jit_gateway::clock::SystemClock);
    blocking(&gw.gateway.store, move |s| {
        s.update_grant(&id, &mut |g| {
            g.revocation = Some(Revocation { at_ms: now, by: "bob@example.test".into(), reason: "left".into() });
            Ok(())
        })
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_opened_after_the_grant_ended_is_refused_and_ends_the_session() {
    let Some(w) = crate::World::new("").await else { return };
    let revoke = w.gw.cli(&["grant", "revoke", &w.grant, "--reason", "replaced"]).await;
    assert!(revoke.status.success());
    let grant = w.gw.grant_with(ALICE, "vm1", &[LOGIN], Duration::from_secs(600), true).await;
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let forward = format!("{local}:127.0.0.1:{}", w.sshd.port);
    let mut ssh = tokio::process::Command::new("ssh")
        .arg("-F")
        .arg(&w.alice.config)
        .args(["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-L", &forward, "-J", "jit-gateway"])
        .args([&format!("{LOGIN}@vm1"), "sleep 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Through the forward, the target's own sshd answers (a direct-tcpip channel on the inner connection).
    let banner = |port: u16| async move {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else { return None };
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 64];
            while got.len() < 8 {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        Some(got)
    };
    let mut first = None;
    for _ in 0..100 {
        if let Some(got) = banner(local).await {
            first = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.is_some_and(|b| b.starts_with(b"SSH-2.0-")), "the forward works while the grant holds");

    revoke_behind_the_enforcers_back(&w.gw, &grant).await;
    let after = banner(local).await.unwrap_or_default();
    assert!(!after.starts_with(b"SSH-2.0-"), "a forward reached the target after the revocation");
    let over = eventually(Duration::from_secs(5), || matches!(ssh.try_wait(), Ok(Some(_)))).await;
    assert!(over, "the session ends with its grant");
    let out = ssh.wait_with_output().await.unwrap();
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("your grant {grant} for vm1 was revoked by bob@example.test: left")), "{stderr}");
    assert!(eventually(Duration::from_secs(5), || w.gw.gateway.sessions.list().is_empty()).await);
}

/// The gateway's RDP address.
fn rdp_addr(gw: &Gw) -> String {
    gw.gateway.config.rdp.as_ref().unwrap().listen.to_string()
}

/// Connects with a fresh ticket, sends the X.224 request and reads the gateway's confirm.
async fn rdp_up_to_tls(gw: &Gw) -> TcpStream {
    let ticket = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "vm2", None).await.expect("a ticket").ticket;
    let mut s = TcpStream::connect(rdp_addr(gw)).await.unwrap();
    let mut hello = wire::encode_preconnection(&ticket);
    hello.extend_from_slice(&wire::encode_connection_request("x", wire::PROTOCOL_SSL));
    s.write_all(&hello).await.unwrap();
    let mut confirm = vec![0u8; 19];
    s.read_exact(&mut confirm).await.unwrap();
    assert!(matches!(wire::parse_connection_confirm(&confirm), Ok(wire::ConnectionConfirm::Selected { .. })));
    s
}

/// Resolves when the peer closes `s` (or resets it).
async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_a_client_holding_back_its_handshake_is_cut_by_the_timeout_and_by_a_revocation() {
    let target = FakeTarget::start().await;
    let extra = format!(
        "[rdp]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"4s\"\n\n[targets.vm2]\naddress = \"127.0.0.1\"\nrdp_port = {}\n",
        target.port
    );
    let gw = Gw::start(support::prepare(), GwOptions { extra, ..Default::default() }).await;
    let grant = gw.grant_rdp(ALICE, "vm2", &["Administrator"], Duration::from_secs(600), &[]).await;

    // Holding back the TLS ClientHello: listed (starting) under the grant, and cut by a revocation.
    let mut held = rdp_up_to_tls(&gw).await;
    let listed = gw.gateway.sessions.list();
    assert_eq!(listed.len(), 1, "registered during the handshake: {listed:?}");
    assert_eq!(listed[0].grant_id, grant);
    let revoke = gw.cli(&["grant", "revoke", &grant, "--reason", "incident closed"]).await;
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    assert!(closed(&mut held, Duration::from_secs(3)).await, "the revocation cut the handshake");
    assert!(eventually(Duration::from_secs(2), || gw.gateway.sessions.list().is_empty()).await);
    let refused = |r: &jit_gateway::store::AuditRecord| {
        r.kind == "rdp.refused"
            && r.details["reason"].as_str().is_some_and(|m| m.contains("was revoked") && m.contains("incident closed"))
    };
    let records = audit_with(&gw, refused).await;
    assert!(records.iter().any(refused), "{records:?}");

    // Holding back the ClientHello: cut at the handshake timeout, not listed afterwards.
    gw.grant_rdp(ALICE, "vm2", &["Administrator"], Duration::from_secs(600), &[]).await;
    let mut silent = rdp_up_to_tls(&gw).await;
    assert!(closed(&mut silent, Duration::from_secs(15)).await, "cut at the handshake timeout");
    assert!(eventually(Duration::from_secs(2), || gw.gateway.sessions.list().is_empty()).await);

    // TLS done, then nothing (no MCS Connect-Initial): still the client's handshake, still cut.
    let tcp = rdp_up_to_tls(&gw).await;
    let connector = tokio_rustls::TlsConnector::from(support::ironrdp_client::accept_any_tls());
    let name = rustls::pki_types::ServerName::try_from("jit-gateway").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS with the gateway");
    assert!(
        eventually(Duration::from_secs(3), || gw
            .gateway
            .sessions
            .list()
            .iter()
            .any(|s| s.state == jit_gateway::sessions::SessionState::Live))
        .await,
        "live after TLS"
    );
    assert!(closed(&mut tls, Duration::from_secs(15)).await, "cut at the handshake timeout after TLS");
    assert!(eventually(Duration::from_secs(2), || gw.gateway.sessions.list().is_empty()).await);
    let records = audit(&gw).await;
    assert!(
        records.iter().any(|r| r.kind == "session.ended"
            && r.details["reason"].as_str().is_some_and(|m| m.contains("connection sequence took longer than"))),
        "{records:?}"
    );
}
