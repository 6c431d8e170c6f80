//! RDP through the gateway: xfreerdp to xrdp with a ticket, credentials
//! injected (TLS logon info, and NLA toward FreeRDP's shadow server), the
//! session recorded and rendered back to frames; every way a ticket can be
//! wrong refused with nothing sent to the target; bad bytes survived.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::require;
use crate::support::rdp::{FakeTarget, RDP_USER, ShadowServer, XFreeRdp, Xrdp, Xvfb, ensure_rdp_account};
use crate::support::{self, Gw, GwOptions, eventually, text};
use crate::workflow::flow;
use jit_gateway::rdp::{ticket, wire};

const ALICE: &str = "alice@example.test";

fn rdp_section() -> String {
    "[rdp]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"10s\"\n".to_string()
}

/// A `[targets.<name>]` block for an RDP target.
fn rdp_target(name: &str, port: u16, pin: Option<&str>, credential: Option<(&str, &Path)>) -> String {
    let mut t = format!("\n[targets.{name}]\naddress = \"127.0.0.1\"\nrdp_port = {port}\n");
    if let Some(pin) = pin {
        t.push_str(&format!("rdp_certificate = \"{pin}\"\n"));
    }
    if let Some((user, file)) = credential {
        t.push_str(&format!(
            "[targets.{name}.rdp_credential]\nusername = \"{user}\"\npassword_file = \"{}\"\n",
            file.display()
        ));
    }
    t
}

fn secret_file(dir: &Path, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("pw-{}", jit_gateway::ids::new_id("x")));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The gateway's RDP address.
fn rdp_addr(gw: &Gw) -> String {
    gw.gateway.config.rdp.as_ref().unwrap().listen.to_string()
}

fn rdp_recordings(gw: &Gw) -> Vec<PathBuf> {
    let dir = gw.gateway.recordings.dir().to_path_buf();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rdprec"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// xrdp as `vm2` (its certificate pinned, the gateway holding its account's
/// fresh password) behind a gateway with RDP on.
struct XrdpWorld {
    xrdp: Xrdp,
    gw: Gw,
    password: String,
    _secrets: tempfile::TempDir,
}

impl XrdpWorld {
    async fn start() -> XrdpWorld {
        let password = format!("Rdp-{}", jit_gateway::ids::new_id("pw"));
        ensure_rdp_account(&password);
        let xrdp = Xrdp::start();
        let secrets = tempfile::tempdir().unwrap();
        let pw_file = secret_file(secrets.path(), &password);
        let extra = format!(
            "{}{}",
            rdp_section(),
            rdp_target("vm2", xrdp.port, Some(&xrdp.certificate_sha256), Some((RDP_USER, &pw_file)))
        );
        let gw = Gw::start(support::prepare(), GwOptions { extra, ..Default::default() }).await;
        XrdpWorld { xrdp, gw, password, _secrets: secrets }
    }
}

/// xfreerdp through the gateway to xrdp, as the `.rdp` ticket says; types in
/// the session; revokes the grant; renders the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_xrdp_xfreerdp_logs_in_through_the_gateway_and_the_recording_replays_to_frames() {
    require!("xrdp", "xrdp-sesman", "xfreerdp", "Xvfb", "xdotool", "openssl");
    let XrdpWorld { xrdp, gw, password, _secrets } = XrdpWorld::start().await;
    let grant = gw.grant_rdp(ALICE, "vm2", &[RDP_USER], Duration::from_secs(3600), &[]).await;
    let issued = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "vm2", None).await.expect("a ticket");
    assert_eq!(issued.login, RDP_USER);
    assert!(
        issued.rdp_file.contains(&format!("full address:s:{}", rdp_addr(&gw)))
            && issued.rdp_file.contains("pcb:s:jgwrdp1.")
    );

    let x = Xvfb::start();
    // The user does not know the target's password: the client sends another one.
    let mut client = XFreeRdp::start(
        &x.display,
        &[
            format!("/v:{}", issued.address),
            format!("/pcb:{}", issued.ticket),
            // As `jit-gateway rdp` prints it: the gateway's certificate pinned.
            format!(
                "/cert:fingerprint:sha256:{}",
                issued.certificate_sha256.clone().expect("the gateway's fingerprint")
            ),
            "/size:800x600".into(),
            "/u:someone".into(),
            "/p:not-the-password".into(),
            "+clipboard".into(),
        ],
    );
    let logged_in =
        eventually(Duration::from_secs(30), || xrdp.log().contains(&format!("login successful for user {RDP_USER}")))
            .await;
    assert!(logged_in, "xrdp log: {}\nxfreerdp: {}", xrdp.log(), client.log());
    assert_eq!(gw.gateway.sessions.list().len(), 1);
    // Let the desktop (an xterm) draw, then type into it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let typed = Command::new("sh")
        .arg("-c")
        .arg("xdotool mousemove 200 200 && sleep 0.2 && xdotool type --delay 40 'echo typed-through-the-gateway' && xdotool key Return")
        .env("DISPLAY", &x.display)
        .status()
        .unwrap();
    assert!(typed.success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(client.exited(), None, "xfreerdp is still connected: {}", client.log());

    let revoke = gw.cli(&["grant", "revoke", &grant, "--reason", "change window over"]).await;
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    let revoked = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || gw.gateway.sessions.list().is_empty()).await,
        "the RDP session ends within 1 s of the revocation"
    );
    assert!(
        eventually(Duration::from_secs(5), || client.exited().is_some()).await,
        "xfreerdp is disconnected: {}",
        client.log()
    );
    eprintln!("RDP session ended {:?} after the revocation", revoked.elapsed());

    // The recording: sealed, signed, without the password, and it renders.
    let files = rdp_recordings(&gw);
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    assert!(eventually(Duration::from_secs(10), || jit_gateway::recording::seal::manifest_path(file).exists()).await);
    let data = std::fs::read(file).unwrap();
    assert!(
        !contains(&data, password.as_bytes()) && !contains(&data, &utf16(&password)),
        "the password never reaches the recording"
    );
    assert!(!contains(&data, &utf16("not-the-password")), "nor the one the client typed");
    // Keystrokes are not kept by default: nothing fast-path (input) from the client.
    let parsed = jit_gateway::recording::rdp_format::read(&data).unwrap();
    assert!(!parsed.header.input_recorded);
    let from_client: Vec<_> =
        parsed.records.iter().filter(|r| r.kind == jit_gateway::recording::rdp_format::FROM_CLIENT).collect();
    assert!(
        !from_client.is_empty() && from_client.iter().all(|r| r.data.first() == Some(&0x03)),
        "only X.224 frames from the client"
    );
    let verify = gw.cli(&["verify", file.to_str().unwrap()]).await;
    assert!(
        verify.status.success() && text(&verify.stdout).contains("hash chain intact"),
        "{}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );

    let frames = tempfile::tempdir().unwrap();
    let replay = gw
        .cli(&["replay", file.to_str().unwrap(), "--frames", frames.path().to_str().unwrap(), "--every", "500ms"])
        .await;
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    eprintln!("{}", text(&replay.stdout));
    let summary =
        jit_gateway::rdp::replay::render_frames(&data, &frames.path().join("again"), Duration::from_millis(500))
            .unwrap();
    assert!(summary.frames_written >= 2, "{summary:?}");
    assert!(summary.graphics_updates >= 20, "decoded graphics updates: {summary:?}");
    assert_eq!((summary.width, summary.height), (800, 600));
    let first = png_pixels(&summary.files[0]);
    let last = png_pixels(summary.files.last().unwrap());
    assert_ne!(first, last, "the typed text changes the picture");
    assert!(last.iter().any(|&b| b != 0), "the last frame is not blank");

    if let Some(keep) = std::env::var_os("JITGW_TEST_ARTIFACTS") {
        // For a look at the frames: JITGW_TEST_ARTIFACTS=/tmp/frames cargo nextest run -E 'test(/rdp_xfreerdp/)'
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for f in &summary.files {
            std::fs::copy(f, keep.join(f.file_name().unwrap())).unwrap();
        }
    }
    let audit = audit_text(&gw).await;
    let decision = audit
        .lines()
        .find(|l| l.contains("\"kind\":\"rdp.channels\""))
        .unwrap_or_else(|| panic!("channel decision audited: {audit}"));
    let decision: serde_json::Value = serde_json::from_str(decision).unwrap();
    let dropped = decision["details"]["channels_dropped"].as_array().unwrap();
    assert!(dropped.iter().any(|c| c == "cliprdr") && decision["details"]["clipboard"] == false, "{decision}");
    let listed = gw.cli(&["recordings"]).await;
    assert!(text(&listed.stdout).contains("rdp"), "{}", text(&listed.stdout));
}

/// The whole audit log as JSON lines (read from the store).
async fn audit_text(gw: &Gw) -> String {
    let records = jit_gateway::store::blocking(&gw.gateway.store, |s| s.audit_records(0, 100_000)).await.unwrap();
    records.iter().map(|r| serde_json::to_string(r).unwrap()).collect::<Vec<_>>().join("\n")
}

fn png_pixels(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

/// NLA: the target (FreeRDP's shadow server) requires CredSSP; the gateway
/// authenticates with the configured account. The client never has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_nla_targets_get_the_configured_credential_from_the_gateway() {
    require!("freerdp-shadow-cli", "winpr-hash", "xfreerdp", "Xvfb");
    let x = Xvfb::start();
    let shadow = ShadowServer::start(&x.display, "shadowuser", "Shadow-Pass-42");
    let secrets = tempfile::tempdir().unwrap();
    let right = secret_file(secrets.path(), "Shadow-Pass-42");
    let wrong = secret_file(secrets.path(), "not-it");
    let extra = format!(
        "{}{}{}",
        rdp_section(),
        rdp_target("shadow", shadow.port, None, Some(("shadowuser", &right))),
        rdp_target("shadow-wrong", shadow.port, None, Some(("shadowuser", &wrong)))
    );
    let gw = Gw::start(support::prepare(), GwOptions { extra, ..Default::default() }).await;
    for target in ["shadow", "shadow-wrong"] {
        gw.grant_rdp(ALICE, target, &["shadowuser"], Duration::from_secs(600), &[]).await;
    }
    let run = |ticket: String, address: String| {
        let display = x.display.clone();
        async move {
            let mut client = XFreeRdp::start(
                &display,
                &[
                    format!("/v:{address}"),
                    format!("/pcb:{ticket}"),
                    "/cert:ignore".into(),
                    "/sec:tls".into(),
                    "/u:shadowuser".into(),
                    "/p:".into(),
                    "+auth-only".into(),
                ],
            );
            assert!(
                eventually(Duration::from_secs(30), || client.exited().is_some()).await,
                "xfreerdp finishes: {}",
                client.log()
            );
            (client.exited().unwrap(), client.log())
        }
    };
    let good = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "shadow", None).await.unwrap();
    let (code, log) = run(good.ticket, good.address).await;
    assert_eq!(code, 0, "authenticated through the gateway: {log}");
    let audit = audit_text(&gw).await;
    assert!(audit.contains("\"security\":\"nla\""), "{audit}");

    let bad = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "shadow-wrong", None).await.unwrap();
    let (code, log) = run(bad.ticket, bad.address).await;
    assert_ne!(code, 0, "a wrong configured credential fails NLA: {log}");
    assert!(gw.gateway.sessions.list().is_empty());
}

/// A raw client: the pre-connection PDU (if any) and an X.224 request, then
/// whatever the gateway answers until it closes (or 5 s pass).
async fn knock(addr: &str, pcb: Option<&str>) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = pcb.map(wire::encode_preconnection).unwrap_or_default();
    hello.extend_from_slice(&wire::encode_connection_request("bob", wire::PROTOCOL_SSL | wire::PROTOCOL_HYBRID));
    let _ = s.write_all(&hello).await;
    // A Connection Confirm is 19 bytes; a refusal is the connection closing.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 256];
        while got.len() < 19 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway neither answered nor closed the connection");
    got
}

fn mint(gw: &Gw, grant: &str, target: &str, login: &str, expires_ms: i64) -> String {
    let now = jit_gateway::clock::SystemClock.now_ms();
    let claims = ticket::Claims {
        jti: jit_gateway::ids::new_id("t"),
        user: ALICE.into(),
        grant: grant.into(),
        target: target.into(),
        login: login.into(),
        issued_ms: now,
        expires_ms,
    };
    ticket::mint(gw.gateway.keys.token_key(), &claims)
}

use jit_gateway::clock::Clock as _;

/// Every wrong ticket is refused before the gateway contacts the target; the
/// `jit-gateway rdp` command writes a `.rdp` file through the HTTPS API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_tickets_that_are_missing_forged_expired_reused_revoked_or_for_another_target_are_refused() {
    let target = FakeTarget::start().await;
    let other = FakeTarget::start().await;
    let extra = format!(
        "{}{}{}",
        rdp_section(),
        rdp_target("vm2", target.port, None, None),
        rdp_target("vm3", other.port, None, None)
    );
    let Some(f) = flow(&extra).await else { return };
    let gw = &f.gw;
    let addr = rdp_addr(gw);

    // Through the API and CLI, with a real sign-in.
    let alice = gw.login(&f.provider, "alice").await;
    let refused = gw.cli_as(&alice, &["rdp", "vm2", "--out", gw.dir.join("none.rdp").to_str().unwrap()]).await;
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("no grant for vm2 over rdp"),
        "{}",
        text(&refused.stderr)
    );
    let grant = gw.grant_rdp(ALICE, "vm2", &["Administrator"], Duration::from_secs(600), &[]).await;
    let file = gw.dir.join("vm2.rdp");
    let made = gw.cli_as(&alice, &["rdp", "vm2", "--out", file.to_str().unwrap()]).await;
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(
        text(&made.stdout).contains("xfreerdp /v:") && text(&made.stdout).contains("/pcb:jgwrdp1."),
        "{}",
        text(&made.stdout)
    );
    let pem = std::fs::read_to_string(gw.tls_certificate()).unwrap();
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    let fingerprint = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    assert!(text(&made.stdout).contains(&format!("/cert:fingerprint:sha256:{fingerprint}")), "{}", text(&made.stdout));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let rdp_file = std::fs::read_to_string(&file).unwrap();
    let from_file = rdp_file.lines().find_map(|l| l.strip_prefix("pcb:s:")).unwrap().trim().to_string();
    assert!(rdp_file.contains(&format!("full address:s:{addr}")), "{rdp_file}");

    // No pre-connection PDU at all.
    assert!(knock(&addr, None).await.is_empty());
    // Garbage where the ticket goes, and a forged one.
    assert!(knock(&addr, Some("hello")).await.is_empty());
    let mut forged = from_file.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert!(knock(&addr, Some(&forged)).await.is_empty());
    let now = jit_gateway::clock::SystemClock.now_ms();
    assert!(knock(&addr, Some(&mint(gw, &grant, "vm2", "Administrator", now - 1))).await.is_empty(), "expired");
    // A signed ticket for a target the grant does not cover.
    assert!(
        knock(&addr, Some(&mint(gw, &grant, "vm3", "Administrator", now + 60_000))).await.is_empty(),
        "another target"
    );
    // A signed ticket for a login the grant does not allow.
    assert!(knock(&addr, Some(&mint(gw, &grant, "vm2", "root", now + 60_000))).await.is_empty(), "another login");
    assert_eq!((target.count(), other.count()), (0, 0), "nothing reached a target");

    // The real ticket works once: the gateway answers with TLS selected.
    let answer = knock(&addr, Some(&from_file)).await;
    assert!(
        matches!(
            wire::parse_connection_confirm(&answer),
            Ok(wire::ConnectionConfirm::Selected { protocol: wire::PROTOCOL_SSL, .. })
        ),
        "{answer:?}"
    );
    assert_eq!(target.count(), 1);
    assert!(knock(&addr, Some(&from_file)).await.is_empty(), "used twice");
    assert_eq!(target.count(), 1);

    // Revoked grant: a fresh ticket from before the revocation is refused.
    let pending = mint(gw, &grant, "vm2", "Administrator", now + 60_000);
    let revoke = gw.cli(&["grant", "revoke", &grant, "--reason", "done"]).await;
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    assert!(knock(&addr, Some(&pending)).await.is_empty(), "revoked grant");
    assert_eq!(target.count(), 1);

    // Refusals are audited just after the connection closes.
    let mut log = String::new();
    for _ in 0..50 {
        log = audit_text(gw).await;
        if log.contains("was revoked by") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for reason in ["was revoked", "no grant for vm3", "does not allow the login `root`"] {
        assert!(log.contains(reason), "audited refusal `{reason}`: {log}");
    }
    // Refusals anyone can cause (no ticket, garbage, forged, expired, replayed) are counted and
    // audited in aggregate (`refusals.aggregated`), not one record each.
    for reason in ["signature is not this gateway", "expired", "used before"] {
        assert!(!log.contains(reason), "`{reason}` is not audited one by one: {log}");
    }
    use jit_gateway::limits::Reason;
    assert_eq!(gw.gateway.refusals.total(Reason::RdpBadTicket), 4, "none, garbage, forged, expired");
    assert_eq!(gw.gateway.refusals.total(Reason::RdpReplayedTicket), 1);
    assert!(log.contains("rdp.ticket.issued"), "{log}");
    assert!(!log.contains(&from_file), "tickets are never written to the audit log");
}

/// Bad bytes close one connection and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_garbage_truncated_pdus_and_clients_that_stop_mid_tls_leave_the_gateway_up() {
    let target = FakeTarget::start().await;
    let extra = format!("{}{}", rdp_section(), rdp_target("vm2", target.port, None, None));
    let gw = Gw::start(support::prepare(), GwOptions { extra, ..Default::default() }).await;
    let grant = gw.grant_rdp(ALICE, "vm2", &["Administrator"], Duration::from_secs(600), &[]).await;
    let addr = rdp_addr(&gw);
    let closes = |bytes: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(12), s.read_to_end(&mut got)).await.expect("closed").ok();
            got
        }
    };
    // Random bytes, an oversized length, a truncated PDU then EOF.
    let mut state = 0x9e37_79b9u32;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    assert!(closes(garbage).await.is_empty());
    assert!(closes(vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]).await.is_empty());
    let pdu = wire::encode_preconnection(
        &jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "vm2", None).await.unwrap().ticket,
    );
    assert!(closes(pdu[..pdu.len() / 2].to_vec()).await.is_empty());
    assert_eq!(target.count(), 0);

    // A client that stops in the middle of its TLS handshake.
    let ticket = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "vm2", None).await.unwrap().ticket;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut hello = wire::encode_preconnection(&ticket);
    hello.extend_from_slice(&wire::encode_connection_request("x", wire::PROTOCOL_SSL));
    s.write_all(&hello).await.unwrap();
    let mut confirm = vec![0u8; 19];
    s.read_exact(&mut confirm).await.unwrap();
    assert!(matches!(wire::parse_connection_confirm(&confirm), Ok(wire::ConnectionConfirm::Selected { .. })));
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]).await.unwrap();
    drop(s);

    // A client that says nothing is cut off at the handshake timeout.
    let silent = TcpStream::connect(&addr).await.unwrap();
    // The gateway still serves: a new ticket reaches the target.
    let next = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "vm2", None).await.unwrap().ticket;
    let answer = knock(&addr, Some(&next)).await;
    assert!(wire::parse_connection_confirm(&answer).is_ok(), "{answer:?}");
    assert_eq!(target.count(), 2);
    drop(silent);
    let _ = grant;
    assert!(gw.gateway.sessions.list().is_empty());
}

/// IronRDP's client, as a second independent client, through the gateway to xrdp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_xrdp_an_ironrdp_client_connects_through_the_gateway() {
    require!("xrdp", "xrdp-sesman", "openssl");
    let XrdpWorld { xrdp, gw, _secrets, .. } = XrdpWorld::start().await;
    gw.grant_rdp(ALICE, "vm2", &[RDP_USER], Duration::from_secs(600), &[]).await;
    let issued = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "vm2", None).await.unwrap();
    let address = issued.address.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        support::ironrdp_client::connect(&address, &issued.ticket, Duration::from_secs(6))
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("IronRDP through the gateway: {e}\nxrdp: {}", xrdp.log()));
    eprintln!("{outcome:?}");
    assert!(xrdp.log().contains(&format!("login successful for user {RDP_USER}")), "{}", xrdp.log());
    assert_eq!((outcome.width, outcome.height), (1024, 768));
    assert!(outcome.graphics_updates > 0 && outcome.drawn_pixels > 1000, "the desktop was drawn: {outcome:?}");
    assert!(eventually(Duration::from_secs(5), || gw.gateway.sessions.list().is_empty()).await);
    assert_eq!(rdp_recordings(&gw).len(), 1);
}

/// In Azure, the VM's RDP port is opened in its NSGs for the gateway only,
/// when a ticket is used, and closed when the grant ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_opens_the_vms_rdp_port_in_azure_for_the_gateway_while_the_grant_lasts() {
    use crate::support::fake_arm::{self, FakeArm};
    let target = FakeTarget::start().await;
    let fake = FakeArm::start("127.0.0.1", None).await;
    let extra = format!(
        "{}{}\n[targets.vm2]\nazure_vm = \"{}\"\nrdp_port = {}\n",
        rdp_section(),
        crate::azure::azure_section(&fake, "azure-nsg", "1h"),
        fake_arm::VM,
        target.port
    );
    let gw = Gw::start(support::prepare(), GwOptions { extra, ..Default::default() }).await;
    assert!(
        eventually(Duration::from_secs(15), || gw
            .gateway
            .inventory
            .get("vm2")
            .is_some_and(|t| t.address == "127.0.0.1"))
        .await
    );
    let grant = gw.grant_rdp(ALICE, "vm2", &["Administrator"], Duration::from_secs(600), &[]).await;
    let rules =
        |fake: &FakeArm| fake.gateway_rules(fake_arm::NSG_NIC).len() + fake.gateway_rules(fake_arm::NSG_SUBNET).len();
    assert_eq!(rules(&fake), 0, "nothing is open before a session needs it");

    let ticket = jit_gateway::rdp::issue_ticket(&gw.gateway, ALICE, "vm2", None).await.unwrap().ticket;
    let answer = knock(&rdp_addr(&gw), Some(&ticket)).await;
    assert!(wire::parse_connection_confirm(&answer).is_ok(), "{answer:?}");
    assert_eq!(target.count(), 1);
    for nsg in [fake_arm::NSG_NIC, fake_arm::NSG_SUBNET] {
        let opened = fake.gateway_rules(nsg);
        let (_, p) = &opened[0];
        assert_eq!(p["sourceAddressPrefix"], crate::azure::GATEWAY_IP);
        assert_eq!(p["destinationPortRange"], target.port.to_string(), "the RDP port, not SSH's");
    }
    let revoke = gw.cli(&["grant", "revoke", &grant, "--reason", "done"]).await;
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    assert!(eventually(Duration::from_secs(10), || rules(&fake) == 0).await, "closed when the grant ends");
}
