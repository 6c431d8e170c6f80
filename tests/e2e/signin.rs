//! Signing in: the device flow through keyboard-interactive, key binding, and
//! tokens that must be refused.

use std::process::Stdio;
use std::time::Duration;

use jit_gateway::clock::ManualClock;
use jit_gateway::oidc::OidcClient;
use jit_gateway::store::blocking;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{self, Client, Gw, GwOptions, LOGIN, Provider, Sshd, text};

struct SignInWorld {
    provider: Provider,
    gw: Gw,
    _sshd: Sshd,
}

async fn sign_in_world(rogue_keys: bool) -> Option<SignInWorld> {
    sign_in_world_with(rogue_keys, "").await
}

async fn sign_in_world_with(rogue_keys: bool, extra: &str) -> Option<SignInWorld> {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return None;
    }
    let provider = Provider::start()?;
    if rogue_keys {
        // Before the gateway's first look at the provider's keys.
        provider.rogue_keys(true).await;
    }
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let options = GwOptions {
        issuer: provider.issuer.clone(),
        sshd_port: Some(sshd.port),
        extra: extra.to_string(),
        ..Default::default()
    };
    let gw = Gw::start(prepared, options).await;
    gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(3600)).await;
    Some(SignInWorld { provider, gw, _sshd: sshd })
}

/// Runs `ssh -J` with no terminal, approves (or denies) the code it prints as
/// `approver`, and returns the finished process output.
async fn ssh_with_device_flow(
    client: &Client,
    provider: &Provider,
    approver: &str,
    deny: bool,
) -> (std::process::Output, String) {
    let destination = format!("{LOGIN}@vm1");
    let mut child = tokio::process::Command::new("setsid")
        .arg("ssh")
        .arg("-F")
        .arg(&client.config)
        .args(["-o", "BatchMode=no", "-J", "jit-gateway", &destination, "echo signed-in-ok"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut shown = String::new();
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            shown.push_str(&line);
            shown.push('\n');
            if let Some(at) = line.find("user_code=") {
                return line[at + 10..].split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .expect("the sign-in instructions appear")
    .expect("a user code in the instructions");
    assert!(provider.approve(approver, &code, deny).await, "approving {code}");
    let rest = tokio::spawn(async move {
        let mut more = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            more.push_str(&line);
            more.push('\n');
        }
        more
    });
    let output =
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("ssh finishes").unwrap();
    shown.push_str(&rest.await.unwrap());
    (output, shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connection_signs_in_with_the_device_flow_and_the_next_is_silent() {
    let Some(w) = sign_in_world(false).await else { return };
    let alice = Client::new(&w.gw, "alice", "");

    let (out, shown) = ssh_with_device_flow(&alice, &w.provider, "alice", false).await;
    assert!(
        shown.contains("http://127.0.0.1:") && shown.contains("/device?user_code="),
        "instructions show the URL: {shown}"
    );
    assert_eq!(text(&out.stdout).trim(), "signed-in-ok", "stderr: {shown}");
    assert!(out.status.success());

    // The key is now bound: batch mode (no keyboard-interactive possible) gets in.
    let again = alice.exec("vm1", "echo silent-ok", None).await;
    assert_eq!(text(&again.stdout).trim(), "silent-ok", "{}", text(&again.stderr));
    assert!(!text(&again.stderr).contains("user_code"), "no second sign-in");

    let fp = jit_gateway::keys::fingerprint(&russh::keys::PublicKey::from_openssh(alice.public_key.trim()).unwrap());
    let binding = blocking(&w.gw.gateway.store, move |s| s.key_bindings(&fp)).await.unwrap().pop().expect("key bound");
    assert_eq!(binding.user, "alice@example.test");
    let ttl = binding.expires_at_ms - binding.bound_at_ms;
    assert_eq!(ttl, 12 * 3600 * 1000, "default binding lifetime is 12h");
    let audit = blocking(&w.gw.gateway.store, |s| s.audit_records(1, 1000)).await.unwrap();
    assert!(audit.iter().any(|r| r.kind == "signin.device-flow" && r.actor == "alice@example.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_sign_in_is_refused_with_a_reason() {
    let Some(w) = sign_in_world(false).await else { return };
    let alice = Client::new(&w.gw, "alice", "");
    let (out, shown) = ssh_with_device_flow(&alice, &w.provider, "alice", true).await;
    assert!(!out.status.success());
    assert!(shown.contains("Sign-in failed: sign-in was denied"), "{shown}");
    assert!(text(&out.stdout).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_as_someone_else_than_the_ssh_user_is_refused() {
    let Some(w) = sign_in_world(false).await else { return };
    let bob_name = Client::new(&w.gw, "bob", "");
    let (out, shown) = ssh_with_device_flow(&bob_name, &w.provider, "alice", false).await;
    assert!(!out.status.success());
    assert!(shown.contains("you signed in as alice@example.test, but connected as `bob`"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_with_a_bad_signature_is_refused() {
    let Some(w) = sign_in_world(true).await else { return };
    let alice = Client::new(&w.gw, "alice", "");
    let (out, shown) = ssh_with_device_flow(&alice, &w.provider, "alice", false).await;
    assert!(!out.status.success());
    assert!(shown.contains("ID token rejected: signature does not verify"), "{shown}");
    let fp = jit_gateway::keys::fingerprint(&russh::keys::PublicKey::from_openssh(alice.public_key.trim()).unwrap());
    assert!(blocking(&w.gw.gateway.store, move |s| s.key_bindings(&fp)).await.unwrap().is_empty(), "nothing bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_for_another_audience_or_past_their_expiry_are_refused() {
    let Some(provider) = Provider::start() else { return };
    let config: jit_gateway::config::OidcConfig = toml::from_str(&format!(
        "issuer = \"{}\"\nclient_id = \"jit-gateway\"\nallow_insecure_loopback_issuer = true\nclock_skew = \"0s\"",
        provider.issuer
    ))
    .unwrap();
    let clock = ManualClock::starting_now();
    let oidc = OidcClient::new(&config, clock.clone()).unwrap();

    let good = provider.id_token("jit-gateway", "jit-gateway-secret", "alice").await;
    let who = oidc.verify_id_token(&good, None).await.expect("a real token for us verifies");
    assert_eq!(who.user, "alice@example.test");
    assert_eq!(who.groups, ["ops"]);

    let other = provider.id_token("other-app", "other-app-secret", "alice").await;
    let err = oidc.verify_id_token(&other, None).await.unwrap_err().to_string();
    assert!(err.contains("wrong audience"), "{err}");

    // A forged claim under the real signature: alice's token made to say mallory.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let b64 = data_encoding::BASE64URL_NOPAD;
    let claims = String::from_utf8(b64.decode(parts[1].as_bytes()).unwrap()).unwrap();
    assert!(claims.contains("alice@example.test"));
    parts[1] = b64.encode(claims.replace("alice@example.test", "mallory@example.test").as_bytes());
    let err = oidc.verify_id_token(&parts.join("."), None).await.unwrap_err().to_string();
    assert!(err.contains("signature does not verify"), "{err}");

    let short = provider.id_token("short-lived", "short-lived-secret", "alice").await;
    let short_config: jit_gateway::config::OidcConfig = toml::from_str(&format!(
        "issuer = \"{}\"\nclient_id = \"short-lived\"\nallow_insecure_loopback_issuer = true\nclock_skew = \"0s\"",
        provider.issuer
    ))
    .unwrap();
    // A clock of its own, at the token's issue time: the token (2 s lifetime) is fresh, then an hour old.
    let claims: serde_json::Value = serde_json::from_slice(
        &data_encoding::BASE64URL_NOPAD.decode(short.split('.').nth(1).unwrap().as_bytes()).unwrap(),
    )
    .unwrap();
    let short_clock = ManualClock::starting_at(claims["iat"].as_i64().unwrap() * 1000);
    let short_oidc = OidcClient::new(&short_config, short_clock.clone()).unwrap();
    short_oidc.verify_id_token(&short, None).await.expect("fresh short-lived token verifies");
    short_clock.advance(Duration::from_secs(3600));
    let err = short_oidc.verify_id_token(&short, None).await.unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
}

/// Outside review H2: a second account at the provider that sends alice's
/// address must not get alice's grant, whether or not its provider says the
/// address is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_with_the_same_email_gets_nothing() {
    let Some(w) = sign_in_world(false).await else { return };
    let alice = Client::new(&w.gw, "alice", "");
    let (out, shown) = ssh_with_device_flow(&alice, &w.provider, "alice", false).await;
    assert_eq!(text(&out.stdout).trim(), "signed-in-ok", "alice signs in first: {shown}");

    // eve: a verified alice@example.test under another subject. The name is alice's.
    let eve = Client::new(&w.gw, "alice@example.test", "");
    let (out, shown) = ssh_with_device_flow(&eve, &w.provider, "eve", false).await;
    assert!(!out.status.success(), "{shown}");
    assert!(text(&out.stdout).is_empty(), "no command ran as eve: {}", text(&out.stdout));
    assert!(shown.contains("belongs to another account at this gateway"), "{shown}");

    // mallory: alice@example.test with no email_verified claim (Entra ID's default).
    let mallory = Client::new(&w.gw, "alice@example.test", "");
    let (out, shown) = ssh_with_device_flow(&mallory, &w.provider, "mallory", false).await;
    assert!(!out.status.success(), "{shown}");
    assert!(text(&out.stdout).is_empty());
    assert!(shown.contains("no `email_verified` claim"), "{shown}");

    // Neither key is bound; eve's refusal is audited with both subjects.
    for client in [&eve, &mallory] {
        let fp =
            jit_gateway::keys::fingerprint(&russh::keys::PublicKey::from_openssh(client.public_key.trim()).unwrap());
        assert!(blocking(&w.gw.gateway.store, move |s| s.key_bindings(&fp)).await.unwrap().is_empty());
    }
    let audit = blocking(&w.gw.gateway.store, |s| s.audit_records(1, 1000)).await.unwrap();
    let refused: Vec<_> = audit.iter().filter(|r| r.kind == "signin.refused").collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].details["reason"], "user_name_taken");
    assert_eq!(refused[0].details["subject"], "user-eve");
    let alice_id = jit_gateway::store::Identity::id_for(&w.provider.issuer, "user-alice");
    assert_eq!(refused[0].details["owner"], alice_id.as_str());
    // Alice's own key still works.
    let again = alice.exec("vm1", "echo still-alice", None).await;
    assert_eq!(text(&again.stdout).trim(), "still-alice", "{}", text(&again.stderr));
}

/// Deprovisioning at the provider reaches key bindings (12 h) and sessions:
/// past `signin.revalidate`, the gateway asks the provider again with the
/// refresh token from the sign-in, and a refusal ends every binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_disabled_at_the_provider_is_refused_after_the_revalidation_window() {
    let extra = "[signin]\nrevalidate = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n";
    let Some(w) = sign_in_world_with(false, extra).await else { return };
    let alice = Client::new(&w.gw, "alice", "");
    let (out, shown) = ssh_with_device_flow(&alice, &w.provider, "alice", false).await;
    assert_eq!(text(&out.stdout).trim(), "signed-in-ok", "{shown}");
    let api_session = w.gw.login(&w.provider, "alice").await;
    let alice_id = jit_gateway::store::Identity::id_for(&w.provider.issuer, "user-alice");
    let id = alice_id.clone();
    let check = blocking(&w.gw.gateway.store, move |s| s.identity_check(&id)).await.unwrap().expect("checked");
    assert!(check.refresh_token.is_some(), "offline_access gives the gateway a refresh token");

    // Past the window, still enabled: the provider confirms, twice (refresh tokens rotate).
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let out = alice.exec("vm1", "echo still-in", None).await;
        assert_eq!(text(&out.stdout).trim(), "still-in", "round {round}: {}", text(&out.stderr));
    }
    let audit = blocking(&w.gw.gateway.store, |s| s.audit_records(1, 1000)).await.unwrap();
    assert!(audit.iter().filter(|r| r.kind == "identity.revalidated").count() >= 2, "each renewal audited");
    assert!(!format!("{audit:?}").contains(check.refresh_token.as_deref().unwrap()), "no token in the audit");

    let grants = w.gw.cli_as(&api_session, &["grants"]).await;
    assert!(grants.status.success(), "the API session works while alice stands: {}", text(&grants.stderr));

    // Deprovisioned: the next session is refused, and the binding is gone.
    w.provider.disable("alice").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out = alice.exec("vm1", "echo should-not-run", None).await;
    assert!(!out.status.success());
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    let fp = jit_gateway::keys::fingerprint(&russh::keys::PublicKey::from_openssh(alice.public_key.trim()).unwrap());
    assert!(blocking(&w.gw.gateway.store, move |s| s.key_bindings(&fp)).await.unwrap().is_empty(), "unbound");
    let audit = blocking(&w.gw.gateway.store, |s| s.audit_records(1, 1000)).await.unwrap();
    let ended = audit.iter().find(|r| r.kind == "identity.signins_ended").expect("the end is audited");
    assert_eq!(ended.details["reason"], "refused_by_provider");
    assert_eq!(ended.details["identity"], alice_id.as_str());
    let id = alice_id.clone();
    assert!(blocking(&w.gw.gateway.store, move |s| s.identity_check(&id)).await.unwrap().is_none(), "token forgotten");
    // The API session from `jit-gateway login` (8 h) ended with it.
    let grants = w.gw.cli_as(&api_session, &["grants"]).await;
    assert!(!grants.status.success());
    assert!(text(&grants.stderr).contains("signed out"), "{}", text(&grants.stderr));
}
