//! Limits before sign-in (issue 9, M1-M6): one address cannot lock another
//! out, idle connections are cut at the pre-auth deadline, sign-ins that
//! cannot be admitted never reach the identity provider, API bodies are
//! bounded in size and time, anonymous refusals are audited in aggregate,
//! and key exchange offers no finite-field Diffie-Hellman.
//!
//! The attacker is always 127.0.0.2, the user 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jit_gateway::limits::Reason;
use jit_gateway::rdp::wire;
use jit_gateway::store::{AuditRecord, blocking};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::require;
use crate::support::{self, Client, Gw, GwOptions, LOGIN, Provider, Sshd, eventually, text};

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn connect_from(from: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)).await
}

/// True when the peer closes the connection within `limit` (whatever it sent first).
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

async fn audit(gw: &Gw) -> Vec<AuditRecord> {
    blocking(&gw.gateway.store, |s| s.audit_records(1, 100_000)).await.unwrap()
}

/// `refusals.aggregated` records for `client`, and the sum of their counts for `code`.
fn aggregated(records: &[AuditRecord], client: &str, code: &str) -> (usize, u64) {
    let mine: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.kind == "refusals.aggregated" && r.details["client_ip"].as_str() == Some(client))
        .collect();
    (mine.len(), mine.iter().filter_map(|r| r.details["counts"][code].as_u64()).sum())
}

/// A gateway in front of a real sshd with alice's key bound and granted.
async fn ssh_world(options: GwOptions) -> Option<(Gw, Sshd, Client)> {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return None;
    }
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let gw = Gw::start(prepared, GwOptions { sshd_port: Some(sshd.port), ..options }).await;
    let alice = Client::new(&gw, "alice", "");
    gw.bind_key(&alice.public_key, "alice@example.test", "alice").await;
    gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(3600)).await;
    Some((gw, sshd, alice))
}

/// M6: ssh-audit's verdict on the SSH port, and what a client gets that offers only finite-field DH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_finds_no_failure_and_finite_field_dh_is_not_offered() {
    require!("ssh-audit");
    let Some((gw, _sshd, alice)) = ssh_world(GwOptions::default()).await else { return };
    let mut cmd = tokio::process::Command::new("ssh-audit");
    cmd.args(["-n", "-p", &gw.port.to_string(), "127.0.0.1"]);
    let report = text(&support::run(&mut cmd, None, Duration::from_secs(60)).await.stdout);
    eprintln!("{report}");
    assert!(report.contains("(kex) curve25519-sha256"), "ssh-audit saw the key exchange: {report}");
    let fails: Vec<&str> = report.lines().filter(|l| l.contains("[fail]")).collect();
    assert!(fails.is_empty(), "ssh-audit failures: {fails:#?}");
    assert!(!report.contains("diffie-hellman"), "no finite-field DH offered: {report}");
    assert!(!report.contains("(mac) hmac-sha2-256 "), "encrypt-then-MAC only: {report}");

    let dh_only = alice
        .ssh(&["-o", "BatchMode=yes", "-o", "KexAlgorithms=diffie-hellman-group16-sha512", "jit-gateway", "true"], None)
        .await;
    assert!(!dh_only.status.success());
    assert!(text(&dh_only.stderr).contains("no matching key exchange method"), "{}", text(&dh_only.stderr));

    // OpenSSH's defaults still get in, through the jump.
    let out = alice.exec("vm1", "echo kex-ok", None).await;
    assert_eq!(text(&out.stdout).trim(), "kex-ok", "{}", text(&out.stderr));
}

/// M2: 300 idle connections from one address (the review used 256) leave a bound-key user on
/// another address unaffected, and the ones admitted are cut at `ssh.preauth_timeout`, also a
/// real client stuck in the middle of authenticating (at its key's passphrase prompt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_lock_out_another_and_are_cut_at_the_preauth_timeout() {
    let options =
        GwOptions::default().with_ssh("preauth_timeout = \"5s\"").with_gateway("refusal_audit_interval = \"1s\"");
    let Some((gw, _sshd, alice)) = ssh_world(options).await else { return };
    let per_source = gw.gateway.config.ssh.max_unauthenticated_per_source as u64;

    let mut idle = Vec::new();
    for i in 0..300 {
        let mut s = connect_from(ATTACKER, gw.port).await.expect("connect from 127.0.0.2");
        if i % 2 == 0 {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        }
        idle.push(s);
    }
    // All but its share are dropped at once (a few more get in if the loop outlasts the pre-auth deadline).
    let gateway = Arc::clone(&gw.gateway);
    let at_once = || gateway.refusals.total(Reason::SshConnectionsPerSource);
    assert!(
        eventually(Duration::from_secs(10), || at_once() >= 300 - 2 * per_source).await,
        "all but {per_source} refused at once: {:?}",
        gateway.refusals.totals()
    );

    // The user on another address gets in while the flood is still connected.
    let out = alice.exec("vm1", "echo still-in", None).await;
    assert_eq!(text(&out.stdout).trim(), "still-in", "{}", text(&out.stderr));

    // A real client that stops while authenticating: its bound key's passphrase comes after
    // the pre-auth deadline (without one it would get in, as the same key does below).
    let stuck = Client::new(&gw, "alice", "");
    gw.bind_key(&stuck.public_key, "alice@example.test", "alice").await;
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "typed-late", "-f"])
        .arg(&stuck.key)
        .status()
        .unwrap();
    assert!(status.success());
    let askpass = |delay: u32| {
        let path = stuck.dir.join(format!("askpass-{delay}.sh"));
        std::fs::write(&path, format!("#!/bin/sh\nsleep {delay}\necho typed-late\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    };
    let jump = |askpass: std::path::PathBuf| {
        let mut cmd = tokio::process::Command::new("setsid");
        cmd.arg("ssh")
            .arg("-F")
            .arg(&stuck.config)
            .args(["-J", "jit-gateway", &format!("{LOGIN}@vm1"), "echo got-in"])
            .env("SSH_ASKPASS", askpass)
            .env("SSH_ASKPASS_REQUIRE", "force");
        cmd
    };
    let out = support::run(&mut jump(askpass(8)), None, Duration::from_secs(40)).await;
    assert!(!out.status.success() && text(&out.stdout).is_empty(), "the stuck client was cut: {}", text(&out.stderr));
    let out = support::run(&mut jump(askpass(0)), None, Duration::from_secs(40)).await;
    assert_eq!(text(&out.stdout).trim(), "got-in", "the same client in time: {}", text(&out.stderr));

    // Every admitted idle connection is cut too.
    let mut closed = 0;
    for s in idle.iter_mut() {
        if closed_within(s, Duration::from_secs(15)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "every connection from 127.0.0.2 ends");
    // Each of the 300 was refused at once or cut at the deadline; so was the stuck client.
    let accounted = || at_once() + gateway.refusals.total(Reason::SshPreauthTimeout) == 301;
    assert!(eventually(Duration::from_secs(5), accounted).await, "{:?}", gateway.refusals.totals());
    let refused = at_once();

    // Audited in aggregate: a few records for 127.0.0.2, not one per connection.
    let mut records = Vec::new();
    for _ in 0..100 {
        records = audit(&gw).await;
        if aggregated(&records, "127.0.0.2", "ssh.connections-per-source").1 == refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = aggregated(&records, "127.0.0.2", "ssh.connections-per-source");
    assert_eq!(found.1, refused, "every refusal counted in the audit log");
    assert!(found.0 <= 10, "{} aggregate records for {refused} refusals", found.0);
    assert!(records.len() < 40, "the audit log did not grow per connection: {} records", records.len());
}

/// Starts `ssh` needing a device-flow sign-in; returns the process and what it showed
/// once a code or a refusal appeared.
async fn start_sign_in(client: &Client) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new("setsid")
        .arg("ssh")
        .arg("-F")
        .arg(&client.config)
        .args(["-o", "BatchMode=no", "jit-gateway", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut shown = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            shown.push_str(&line);
            shown.push('\n');
            if line.contains("user_code=") || line.contains("Too many sign-ins") {
                return;
            }
        }
    })
    .await;
    (child, shown)
}

/// M3: one address gets its share of device-flow sign-ins; past it, no device code is asked
/// of the identity provider; another address still signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_sign_ins_past_an_address_share_are_refused_without_asking_the_provider() {
    if !support::need("ssh") {
        return;
    }
    let Some(provider) = Provider::start() else { return };
    let options = GwOptions { issuer: provider.issuer.clone(), ..Default::default() }
        .with_ssh("max_pending_sign_ins_per_source = 2");
    let gw = Gw::start(support::prepare(), options).await;
    let mallory = Client::new(&gw, "mallory@example.test", "  BindAddress 127.0.0.2\n");
    let before = provider.device_authorizations().await;

    let mut waiting = Vec::new();
    let (mut codes, mut refusals) = (0, 0);
    for _ in 0..3 {
        let (child, shown) = start_sign_in(&mallory).await;
        if shown.contains("user_code=") {
            codes += 1;
        }
        if shown.contains("Too many sign-ins are in progress from your address") {
            refusals += 1;
        }
        waiting.push(child);
    }
    assert_eq!((codes, refusals), (2, 1), "two sign-ins wait, the third is refused");
    assert_eq!(provider.device_authorizations().await - before, 2, "the refused one never reached the provider");
    assert_eq!(gw.gateway.refusals.total(Reason::SshSignInsPerSource), 1);

    // Someone on another address still gets a code.
    let alice = Client::new(&gw, "alice@example.test", "");
    let (child, shown) = start_sign_in(&alice).await;
    assert!(shown.contains("user_code="), "{shown}");
    waiting.push(child);
    assert_eq!(provider.device_authorizations().await - before, 3);
}

fn https_client(gw: &Gw, from: Option<Ipv4Addr>) -> reqwest::Client {
    let pem = std::fs::read(gw.tls_certificate()).unwrap();
    let mut builder = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    if let Some(ip) = from {
        builder = builder.local_address(IpAddr::V4(ip));
    }
    builder.build().unwrap()
}

/// M4: one address fills its share of the API's sign-in table, and no more; `/login/device`
/// past it never reaches the identity provider; another address still signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sign_ins_past_an_address_share_are_refused_without_asking_the_provider() {
    let Some(provider) = Provider::start() else { return };
    let extra = "[api]\nlisten = \"127.0.0.1:0\"\nmax_pending_sign_ins_per_source = 2\n".to_string();
    let gw =
        Gw::start(support::prepare(), GwOptions { issuer: provider.issuer.clone(), extra, ..Default::default() }).await;
    let url = |p: &str| format!("{}/api/v1{p}", gw.api_url());
    let attacker = https_client(&gw, Some(ATTACKER));
    let user = https_client(&gw, None);
    let code = serde_json::json!({"redirect_uri": "http://127.0.0.1:5555/callback"});
    let before = provider.device_authorizations().await;

    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(attacker.post(url("/login/device")).send().await.unwrap()), 201);
    assert_eq!(status(attacker.post(url("/login/code")).json(&code).send().await.unwrap()), 201);
    let full = attacker.post(url("/login/device")).send().await.unwrap();
    assert_eq!(full.status().as_u16(), 429);
    let body: serde_json::Value = full.json().await.unwrap();
    assert!(body["error"].as_str().unwrap_or("").contains("from your address"), "{body}");
    assert_eq!(status(attacker.post(url("/login/code")).json(&code).send().await.unwrap()), 429);
    assert_eq!(provider.device_authorizations().await - before, 1, "refused sign-ins never reached the provider");

    assert_eq!(status(user.post(url("/login/device")).send().await.unwrap()), 201, "another address signs in");
    assert_eq!(status(user.post(url("/login/code")).json(&code).send().await.unwrap()), 201);
    assert_eq!(provider.device_authorizations().await - before, 2);
    assert_eq!(gw.gateway.refusals.total(Reason::ApiSignInsPerSource), 2);
}

async fn tls_from(gw: &Gw, from: Ipv4Addr) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(gw.tls_certificate()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = connect_from(from, gw.api_port.unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// What the server answers until it closes (at most `limit`).
async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// M5: a body trickled in is cut at `api.body_timeout` while others are served; bodies over
/// `api.max_body` get 413 (declared or chunked); one address holds its share of connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bodies_are_bounded_in_time_and_size_and_connections_per_address() {
    let extra = "[api]\nlisten = \"127.0.0.1:0\"\nbody_timeout = \"2s\"\nmax_connections_per_source = 4\n";
    let gw = Gw::start(support::prepare(), GwOptions { extra: extra.into(), ..Default::default() }).await;
    let user = https_client(&gw, None);
    let health = format!("{}/api/v1/health", gw.api_url());

    // A body trickled one byte at a time.
    let mut slow = tls_from(&gw, ATTACKER).await;
    slow.write_all(
        b"POST /api/v1/login/code HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut reader, mut writer) = tokio::io::split(slow);
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let served = user.get(&health).send().await.unwrap();
    assert_eq!(served.status().as_u16(), 200, "others are served meanwhile");
    let answer = read_answer(&mut reader, Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "cut at the body timeout: {answer}");
    assert!(answer.contains("api.body_timeout"), "{answer}");
    trickle.abort();

    // Too large, declared up front: refused from the headers alone, before any of the body is read.
    // (A client that sends the body anyway may see the connection closed under it, so none is sent here.)
    let big = format!("{{\"redirect_uri\": \"{}\"}}", "x".repeat(65 << 10));
    let mut declared = tls_from(&gw, ATTACKER).await;
    let head = format!(
        "POST /api/v1/login/code HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    declared.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut declared, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(declared);
    // Too large, in chunks with no length.
    let mut chunked = tls_from(&gw, ATTACKER).await;
    let mut request = b"POST /api/v1/login/code HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in big.as_bytes().chunks(8192) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let _ = chunked.write_all(&request).await;
    let answer = read_answer(&mut chunked, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(chunked);

    // Connections: 127.0.0.2 holds its share, the rest are closed at once; 127.0.0.1 is served.
    let gateway = Arc::clone(&gw.gateway);
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect_from(ATTACKER, gw.api_port.unwrap()).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || gateway.refusals.total(Reason::ApiConnectionsPerSource) >= 6).await,
        "{:?}",
        gateway.refusals.totals()
    );
    assert_eq!(user.get(&health).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(gateway.refusals.total(Reason::ApiBodyTimeout), 1);
    assert_eq!(gateway.refusals.total(Reason::ApiBodyTooLarge), 2);
}

/// M1: garbage tickets from one address cost one audit record per interval, not one each;
/// idle connections from it hold its share of RDP handshakes, not everyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_garbage_tickets_are_audited_in_aggregate_and_an_address_holds_only_its_share() {
    let extra = "[rdp]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"10s\"\n".to_string();
    let options = GwOptions { extra, ..Default::default() }.with_gateway("refusal_audit_interval = \"1s\"");
    let gw = Gw::start(support::prepare(), options).await;
    let port = gw.gateway.config.rdp.as_ref().unwrap().listen.port();
    let before = audit(&gw).await.len();

    let knock = |from: Ipv4Addr, ticket: String| async move {
        let mut s = connect_from(from, port).await.unwrap();
        let mut hello = wire::encode_preconnection(&ticket);
        hello.extend_from_slice(&wire::encode_connection_request("bob", wire::PROTOCOL_SSL));
        let _ = s.write_all(&hello).await;
        closed_within(&mut s, Duration::from_secs(10)).await
    };
    for i in 0..200 {
        assert!(knock(ATTACKER, format!("jgwrdp1.garbage-{i}.AAAA")).await, "refused connection {i} closes");
    }
    let gateway = Arc::clone(&gw.gateway);
    assert!(
        eventually(Duration::from_secs(5), || gateway.refusals.total(Reason::RdpBadTicket) == 200).await,
        "{:?}",
        gateway.refusals.totals()
    );

    // Idle connections from 127.0.0.2 hold its share only; a client on 127.0.0.1 is still heard.
    let per_source = gw.gateway.config.rdp.as_ref().unwrap().max_handshakes_per_source;
    let mut idle = Vec::new();
    for _ in 0..per_source + 4 {
        idle.push(connect_from(ATTACKER, port).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(5), || gateway.refusals.total(Reason::RdpHandshakesPerSource) == 4).await,
        "{:?}",
        gateway.refusals.totals()
    );
    assert!(knock(Ipv4Addr::LOCALHOST, "not-a-ticket".into()).await);
    assert!(eventually(Duration::from_secs(5), || gateway.refusals.total(Reason::RdpBadTicket) == 201).await);
    drop(idle);

    let mut records = Vec::new();
    for _ in 0..100 {
        records = audit(&gw).await;
        if aggregated(&records, "127.0.0.2", "rdp.bad-ticket").1 == 200
            && aggregated(&records, "127.0.0.1", "rdp.bad-ticket").1 == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (count, sum) = aggregated(&records, "127.0.0.2", "rdp.bad-ticket");
    assert_eq!(sum, 200, "every garbage ticket counted");
    assert!(count <= 10, "{count} records for 200 refusals");
    assert_eq!(aggregated(&records, "127.0.0.1", "rdp.bad-ticket").1, 1);
    assert!(!records.iter().any(|r| r.kind == "rdp.refused"), "no record per refusal");
    assert!(records.len() - before < 20, "{} records added", records.len() - before);
}

/// M5: a request whose handler hangs (here: an identity provider that accepts and never answers)
/// is answered at `api.request_timeout`, and the sign-in place it took is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_request_is_answered_at_the_request_timeout_and_gives_its_sign_in_place_back() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            sockets.push(s);
        }
    });
    let extra = "[api]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"2s\"\nbody_timeout = \"1s\"\n\
                 max_pending_sign_ins_per_source = 1\n";
    let gw = Gw::start(support::prepare(), GwOptions { issuer, extra: extra.into(), ..Default::default() }).await;
    let user = https_client(&gw, None);
    for attempt in 0..2 {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            user.post(format!("{}/api/v1/login/device", gw.api_url())).send(),
        )
        .await
        .expect("answered")
        .unwrap();
        assert_eq!(r.status().as_u16(), 503, "attempt {attempt}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap_or("").contains("api.request_timeout"), "{body}");
    }
    assert_eq!(gw.gateway.refusals.total(Reason::ApiRequestTimeout), 2);
    assert_eq!(gw.gateway.refusals.total(Reason::ApiSignInsPerSource), 0, "the first place was given back");
    held.abort();
}
