//! The request workflow with two real provider users, through the CLI and
//! the HTTPS API: bob requests, alice approves, bob connects; what policy
//! refuses; auto-approval; restarts; the audit chain; bad API input.

use std::time::Duration;

use jit_gateway::store::blocking;

use crate::sessions::{Tmux, interactive};
use crate::support::{self, Client, Gw, GwOptions, Provider, Sshd, eventually, text};

pub const POLICY: &str = r#"
[api]
listen = "127.0.0.1:0"

[policy]
admin_roles = ["ops"]

[policy.roles]
ops = ["ops"]
dev = ["dev"]

[[policy.rules]]
name = "dev-vm1"
requesters = ["dev"]
targets = ["vm1"]
logins = ["admin"]
max_duration = "4h"
approvers = ["ops"]

[[policy.rules]]
name = "ops-self-service"
requesters = ["ops"]
targets = ["vm1"]
logins = ["admin"]
max_duration = "4h"
approvers = ["ops"]
auto_approve = { roles = ["ops"], max_duration = "1h" }
"#;

pub struct Flow {
    pub provider: Provider,
    pub gw: Gw,
    pub sshd: Sshd,
}

pub async fn flow(extra: &str) -> Option<Flow> {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return None;
    }
    let provider = Provider::start()?;
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let options = GwOptions {
        issuer: provider.issuer.clone(),
        sshd_port: Some(sshd.port),
        extra: format!("{extra}\n{POLICY}"),
        ..Default::default()
    };
    let gw = Gw::start(prepared, options).await;
    Some(Flow { provider, gw, sshd })
}

fn request_id(out: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("json: {} {}", text(&out.stdout), text(&out.stderr)));
    v["request"]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_requests_alice_approves_and_bob_connects() {
    let Some(f) = flow("").await else { return };
    let alice = f.gw.login(&f.provider, "alice").await;
    let bob = f.gw.login(&f.provider, "bob").await;
    let carol = f.gw.login(&f.provider, "carol").await;

    let who = f.gw.cli_as(&bob, &["whoami"]).await;
    assert!(text(&who.stdout).contains("bob@example.test (roles: dev"), "{}", text(&who.stdout));

    // Beyond the rule's maximum: refused, with the maximum.
    let long = f.gw.cli_as(&bob, &["request", "vm1", "--login", "admin", "--for", "5h", "--reason", "INC-4711"]).await;
    assert!(!long.status.success());
    assert!(text(&long.stderr).contains("5h is longer than the 4h allowed for vm1"), "{}", text(&long.stderr));

    let asked =
        f.gw.cli_as(&bob, &["request", "vm1", "--login", "admin", "--for", "2h", "--reason", "INC-4711 disk full"])
            .await;
    assert!(asked.status.success(), "{}", text(&asked.stderr));
    let said = text(&asked.stdout);
    assert!(
        said.contains("pending") && said.contains("from the role ops") && said.contains("alice@example.test"),
        "the requester sees who can approve: {said}"
    );
    let listed = f.gw.cli_as(&bob, &["requests", "--mine", "--json"]).await;
    let mine: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = mine["mine"][0]["id"].as_str().unwrap().to_string();

    // Before approval bob has no access.
    let bob_ssh = Client::new(&f.gw, "bob", "");
    f.gw.bind_key(&bob_ssh.public_key, "bob@example.test", "bob").await;
    let early = bob_ssh.exec("vm1", "true", None).await;
    assert!(text(&early.stderr).contains("have no grant for vm1"), "{}", text(&early.stderr));

    let own = f.gw.cli_as(&bob, &["approve", &id]).await;
    assert!(text(&own.stderr).contains("cannot approve your own request"), "{}", text(&own.stderr));
    let outsider = f.gw.cli_as(&carol, &["approve", &id]).await;
    assert!(text(&outsider.stderr).contains("needs one of the roles ops; you have none"), "{}", text(&outsider.stderr));

    let inbox = f.gw.cli_as(&alice, &["requests", "--to-approve"]).await;
    assert!(text(&inbox.stdout).contains(&id), "{}", text(&inbox.stdout));
    let approved = f.gw.cli_as(&alice, &["approve", &id, "--comment", "go ahead"]).await;
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    assert!(text(&approved.stdout).contains("lets bob@example.test reach vm1"), "{}", text(&approved.stdout));
    let again = f.gw.cli_as(&alice, &["approve", &id]).await;
    assert!(text(&again.stderr).contains("is approved, not pending"), "{}", text(&again.stderr));

    let out = bob_ssh.exec("vm1", "echo bob-is-in", None).await;
    assert_eq!(text(&out.stdout).trim(), "bob-is-in", "{}", text(&out.stderr));
    let grants = f.gw.cli_as(&bob, &["grants"]).await;
    assert!(
        text(&grants.stdout).contains("live") && text(&grants.stdout).contains("INC-4711 disk full"),
        "{}",
        text(&grants.stdout)
    );

    // alice (admin) revokes through the API; bob is out again.
    let gid = {
        let g = f.gw.cli_as(&bob, &["grants", "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&g.stdout).unwrap();
        v[0]["id"].as_str().unwrap().to_string()
    };
    let revoked = f.gw.cli_as(&alice, &["revoke", &gid, "--reason", "done"]).await;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let after = bob_ssh.exec("vm1", "true", None).await;
    assert!(text(&after.stderr).contains("was revoked by alice@example.test: done"), "{}", text(&after.stderr));

    let audit = f.gw.cli_as(&alice, &["audit", "--jsonl", "--user", "bob@example.test"]).await;
    let kinds: Vec<String> = text(&audit.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in
        ["request.refused", "request.created", "request.approved", "grant.created", "session.started", "grant.revoked"]
    {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    let verify = f.gw.cli_as(&alice, &["audit", "verify"]).await;
    assert!(text(&verify.stdout).starts_with("OK:"), "{} {}", text(&verify.stdout), text(&verify.stderr));
    let not_admin = f.gw.cli_as(&bob, &["audit"]).await;
    assert!(text(&not_admin.stderr).contains("needs an admin or auditor role"), "{}", text(&not_admin.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_approval_follows_the_rule_and_is_audited() {
    let Some(f) = flow("").await else { return };
    let alice = f.gw.login(&f.provider, "alice").await;
    let quick =
        f.gw.cli_as(
            &alice,
            &["request", "vm1", "--login", "admin", "--for", "30m", "--reason", "oncall page 123", "--json"],
        )
        .await;
    assert!(quick.status.success(), "{}", text(&quick.stderr));
    let v: serde_json::Value = serde_json::from_slice(&quick.stdout).unwrap();
    assert_eq!(v["request"]["state"], "approved");
    assert_eq!(v["request"]["auto_approved"], true);
    assert!(v["grant"]["id"].as_str().is_some());
    // Longer than the auto-approval limit: a colleague must approve.
    let slow = f
        .gw
        .cli_as(&alice, &["request", "vm1", "--login", "admin", "--for", "2h", "--reason", "maintenance", "--json"])
        .await;
    let v: serde_json::Value = serde_json::from_slice(&slow.stdout).unwrap();
    assert_eq!(v["request"]["state"], "pending");
    let records = blocking(&f.gw.gateway.store, |s| s.audit_records(1, 10_000)).await.unwrap();
    let auto = records.iter().find(|r| r.kind == "request.auto-approved").expect("audited");
    assert_eq!(auto.actor, "policy");
    assert_eq!(auto.details["rule"], "ops-self-service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_grant_that_expires_ends_the_session_within_a_second() {
    if !support::need("tmux") {
        return;
    }
    let Some(f) = flow("").await else { return };
    let alice = f.gw.login(&f.provider, "alice").await;
    let quick = f
        .gw
        .cli_as(&alice, &["request", "vm1", "--login", "admin", "--for", "6s", "--reason", "short check", "--json"])
        .await;
    let v: serde_json::Value = serde_json::from_slice(&quick.stdout).unwrap();
    let expires_ms = v["grant"]["expires_at_ms"].as_i64().expect("auto-approved grant");
    let ssh = Client::new(&f.gw, "alice", "");
    f.gw.bind_key(&ssh.public_key, "alice@example.test", "alice").await;
    let term = Tmux::start(&interactive(&ssh), 120, 30);
    assert!(term.wait_for("$", Duration::from_secs(15)).await, "{}", term.screen());
    let until_expiry = expires_ms - jit_gateway::clock::Clock::now_ms(&jit_gateway::clock::SystemClock);
    assert!(until_expiry > 0, "the session started before the grant ended");
    tokio::time::sleep(Duration::from_millis(until_expiry as u64)).await;
    assert!(eventually(Duration::from_secs(1), || term.ended()).await, "ended within 1 s of expiry: {}", term.screen());
    assert!(term.screen().contains("has expired"), "{}", term.screen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_requests_and_grants_and_ends_grants_that_expired_meanwhile() {
    let Some(f) = flow("").await else { return };
    let Flow { provider, mut gw, sshd: _sshd } = f;
    let alice = gw.login(&provider, "alice").await;
    let bob = gw.login(&provider, "bob").await;
    let pending = request_id(
        &gw.cli_as(
            &bob,
            &["request", "vm1", "--login", "admin", "--for", "1h", "--reason", "after the restart", "--json"],
        )
        .await,
    );
    let short = gw
        .cli_as(
            &alice,
            &["request", "vm1", "--login", "admin", "--for", "5s", "--reason", "expires while down", "--json"],
        )
        .await;
    let short_grant = serde_json::from_slice::<serde_json::Value>(&short.stdout).unwrap()["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let long = gw
        .cli_as(
            &alice,
            &["request", "vm1", "--login", "admin", "--for", "50m", "--reason", "outlives the restart", "--json"],
        )
        .await;
    let long_grant =
        serde_json::from_slice::<serde_json::Value>(&long.stdout).unwrap()["grant"]["id"].as_str().unwrap().to_string();

    // Stop before the short grant ends, so the enforcer cannot have processed it.
    let stopped_at = std::time::Instant::now();
    let gw = {
        gw.shutdown_only().await;
        tokio::time::sleep(Duration::from_secs(6).saturating_sub(stopped_at.elapsed())).await;
        gw.restart().await
    };
    let (sg, lg) = (short_grant.clone(), long_grant.clone());
    let ended = eventually(Duration::from_secs(5), || {
        let store = std::sync::Arc::clone(&gw.gateway.store);
        let sg = sg.clone();
        std::thread::spawn(move || store.grant(&sg).unwrap().and_then(|g| g.ended_ms)).join().unwrap().is_some()
    })
    .await;
    assert!(ended, "the grant that expired while the gateway was down is ended at start-up");
    let long = blocking(&gw.gateway.store, move |s| s.grant(&lg)).await.unwrap().expect("kept");
    assert_eq!(
        long.status(jit_gateway::clock::Clock::now_ms(&jit_gateway::clock::SystemClock)),
        jit_gateway::store::GrantStatus::Live
    );
    let listed = gw.cli_as(&alice, &["requests", "--to-approve"]).await;
    assert!(text(&listed.stdout).contains(&pending), "the pending request survived: {}", text(&listed.stdout));
    let approved = gw.cli_as(&alice, &["approve", &pending]).await;
    assert!(approved.status.success(), "API sessions survive restarts too: {}", text(&approved.stderr));
    let records = blocking(&gw.gateway.store, |s| s.audit_records(1, 10_000)).await.unwrap();
    let restart_at = records.iter().rposition(|r| r.kind == "gateway.started").unwrap();
    assert!(
        records[restart_at..]
            .iter()
            .any(|r| r.kind == "grant.ended.expired" && r.details["grant"] == short_grant.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_record_is_named_by_audit_verify() {
    let Some(f) = flow("").await else { return };
    let alice = f.gw.login(&f.provider, "alice").await;
    for i in 0..3 {
        let out = f
            .gw
            .cli_as(&alice, &["request", "vm1", "--login", "admin", "--for", "10m", "--reason", &format!("task {i}")])
            .await;
        assert!(out.status.success());
    }
    let config = f.gw.config_path.clone();
    let db = f.gw.gateway.config.gateway.state_dir.join("gateway.redb");
    let _files = f.gw.stop_keep_files().await;
    let verify = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-gateway"));
        cmd.env("JITGW_SESSION", "/nonexistent")
            .arg("--config")
            .arg(&config)
            .args(["audit", "verify", "--db"])
            .arg(&db)
            .args(extra);
        cmd
    };
    let ok = support::run(&mut verify(vec![]), None, Duration::from_secs(30)).await;
    assert!(text(&ok.stdout).starts_with("OK:"), "{} {}", text(&ok.stdout), text(&ok.stderr));

    // Change who did something in record 5, directly in the database file.
    {
        let database = redb::Database::open(&db).unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
        let txn = database.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            use redb::ReadableTable;
            let bytes = t.get(5).unwrap().unwrap().value().to_vec();
            let mut record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            record["actor"] = "mallory@example.test".into();
            t.insert(5, serde_json::to_vec(&record).unwrap().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let broken = support::run(&mut verify(vec![]), None, Duration::from_secs(30)).await;
    assert!(!broken.status.success());
    assert!(text(&broken.stderr).contains("record 5 was altered"), "{}", text(&broken.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_api_gets_a_clear_4xx_and_changes_nothing() {
    let Some(f) = flow("").await else { return };
    let bob = f.gw.login(&f.provider, "bob").await;
    let token: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&bob).unwrap()).unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let pem = std::fs::read(f.gw.tls_certificate()).unwrap();
    let http =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap();
    let url = |p: &str| format!("{}/api/v1{p}", f.gw.api_url());
    let before =
        blocking(&f.gw.gateway.store, |s| Ok((s.requests()?.len(), s.audit_records(1, 100_000)?.len()))).await.unwrap();

    let send = |builder: reqwest::RequestBuilder| async move {
        let r = builder.send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        (status, body)
    };
    let auth = |b: reqwest::RequestBuilder| b.bearer_auth(&token).header("content-type", "application/json");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("malformed JSON", auth(http.post(url("/requests"))).body("{\"target\": \"vm1\","), 400, ""),
        (
            "unknown field",
            auth(http.post(url("/requests")))
                .body(r#"{"target":"vm1","logins":["admin"],"duration":"1h","reason":"x","admin":true}"#),
            422,
            "unknown field `admin`",
        ),
        ("missing field", auth(http.post(url("/requests"))).body(r#"{"target":"vm1"}"#), 422, "missing field"),
        (
            "a newline in the reason (a forged log line)",
            auth(http.post(url("/requests"))).body(
                r#"{"target":"vm1","logins":["admin"],"duration":"1h","reason":"x\n2026-12-02T15:00:00Z INFO approved"}"#,
            ),
            422,
            "the reason contains control characters",
        ),
        (
            "bad duration",
            auth(http.post(url("/requests")))
                .body(r#"{"target":"vm1","logins":["admin"],"duration":"forever","reason":"x"}"#),
            422,
            "duration `forever`",
        ),
        (
            "oversized body",
            auth(http.post(url("/requests"))).body(format!("{{\"reason\": \"{}\"}}", "x".repeat(100_000))),
            413,
            "larger than 64 KiB",
        ),
        ("not JSON", http.post(url("/requests")).bearer_auth(&token).body("target=vm1"), 415, "application/json"),
        ("no token", http.get(url("/requests")), 401, "missing bearer token"),
        (
            "forged token",
            http.get(url("/requests"))
                .bearer_auth("jgw1.a-aaaaaaaaaaaaaaaa.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            401,
            "not this gateway's",
        ),
        ("garbage token", http.get(url("/requests")).bearer_auth("x.y"), 401, "not a gateway session token"),
        ("unknown endpoint", auth(http.get(url("/nope"))), 404, "no such endpoint"),
        ("unknown request", auth(http.post(url("/requests/q-zzzzzzzzzzzzzzzz/approve"))).body("{}"), 404, "not found"),
        ("bad scope", auth(http.get(url("/requests?scope=everyone"))), 400, "use mine"),
        ("unknown query key", auth(http.get(url("/grants?sort=desc"))), 400, "unknown field"),
    ];
    for (name, builder, want, needle) in cases {
        let (status, body) = send(builder).await;
        assert_eq!(status, want, "{name}: {body}");
        let message = body["error"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{name}: {message}");
    }

    // A token from another issuer: the identity provider's own ID token.
    let id_token = f.provider.id_token("jit-gateway", "jit-gateway-secret", "bob").await;
    let (status, body) = send(http.get(url("/me")).bearer_auth(&id_token)).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("identity provider's token"), "{body}");
    // A token minted by another gateway (another key) for a real session ID.
    let session_id = token.split('.').nth(1).unwrap();
    let other_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another gateway's key, 32 bytes!");
    let tag = ring::hmac::sign(&other_key, format!("jgw1.{session_id}").as_bytes());
    let foreign = format!("jgw1.{session_id}.{}", data_encoding::BASE64URL_NOPAD.encode(tag.as_ref()));
    let (status, _) = send(http.get(url("/me")).bearer_auth(&foreign)).await;
    assert_eq!(status, 401);

    let after =
        blocking(&f.gw.gateway.store, |s| Ok((s.requests()?.len(), s.audit_records(1, 100_000)?.len()))).await.unwrap();
    assert_eq!(before, after, "nothing changed");
    let (status, _) = send(http.get(url("/health"))).await;
    assert_eq!(status, 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_a_browser_uses_authorization_code_and_pkce() {
    let Some(f) = flow("").await else { return };
    use tokio::io::AsyncBufReadExt;
    let session = f.gw.dir.join("browser-session.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-gateway"))
        .env("JITGW_SESSION", &session)
        .args([
            "login",
            "--browser",
            "--no-open",
            "--gateway",
            &f.gw.api_url(),
            "--ca-file",
            f.gw.tls_certificate().to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(at) = line.find("http://127.0.0.1") {
                return Some(line[at..].trim().to_string());
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("the sign-in URL");
    assert!(url.contains("code_challenge_method=S256") && url.contains("redirect_uri=http%3A%2F%2F127.0.0.1"), "{url}");
    let mut browser = tokio::process::Command::new("node");
    browser
        .arg("browser.mjs")
        .args(["--user", "bob", &url])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc"));
    let b = support::run(&mut browser, None, Duration::from_secs(30)).await;
    assert!(b.status.success(), "{}", text(&b.stderr));
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let who = f.gw.cli_as(&session, &["whoami"]).await;
    assert!(text(&who.stdout).starts_with("bob@example.test"), "{}", text(&who.stdout));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&session).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600, "the session file is private");
    let records = blocking(&f.gw.gateway.store, |s| s.audit_records(1, 10_000)).await.unwrap();
    assert!(records.iter().any(|r| r.kind == "signin.api.browser" && r.actor == "bob@example.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_and_never_block_a_decision() {
    // A hook that fails once, then records what it gets.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hook.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&received);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut first = true;
        while let Ok((mut s, _)) = hook.accept().await {
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            while let Ok(n) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await.unwrap_or(Ok(0))
            {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let t = String::from_utf8_lossy(&got);
                if let Some(h) = t.find("\r\n\r\n") {
                    let len = t
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if got.len() >= h + 4 + len {
                        break;
                    }
                }
            }
            let status = if first { "500 Internal Server Error" } else { "200 OK" };
            if !first {
                let t = String::from_utf8_lossy(&got).into_owned();
                seen.lock().unwrap().push(t.split("\r\n\r\n").nth(1).unwrap_or("").to_string());
            }
            first = false;
            let _ = s
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
        }
    });
    let extra = format!("[notify]\nwebhook_url = \"http://127.0.0.1:{port}/hook\"\nretries = 3\n");
    let Some(f) = flow_with_notify(&extra).await else { return };
    let bob = f.gw.login(&f.provider, "bob").await;
    let id = request_id(
        &f.gw
            .cli_as(&bob, &["request", "vm1", "--login", "admin", "--for", "1h", "--reason", "webhook check", "--json"])
            .await,
    );
    assert!(
        eventually(Duration::from_secs(10), || received.lock().unwrap().iter().any(|b| b.contains(&id))).await,
        "delivered after a retry"
    );
    let body: serde_json::Value =
        serde_json::from_str(received.lock().unwrap().iter().find(|b| b.contains(&id)).unwrap()).unwrap();
    assert!(body["text"].as_str().unwrap().contains("bob@example.test"), "Slack/Teams shape: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_hangs_does_not_hold_up_requests() {
    // Accepts connections and never answers.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hook.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hook.accept().await {
            held.push(s);
        }
    });
    let extra = format!("[notify]\nwebhook_url = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"120s\"\nretries = 5\n");
    let Some(f) = flow_with_notify(&extra).await else { return };
    let alice = f.gw.login(&f.provider, "alice").await;
    // If a decision waited for the webhook, this command would hit the 60 s limit of `cli_as`.
    let out =
        f.gw.cli_as(&alice, &["request", "vm1", "--login", "admin", "--for", "30m", "--reason", "hook is down"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("approved automatically"));
}

/// A workflow gateway whose configuration gets a `[notify]` section.
async fn flow_with_notify(notify: &str) -> Option<Flow> {
    flow(&format!("\n{notify}")).await
}
