//! Findings of the outside review (issue 9, L1, L3 and the small items),
//! checked against the real binary, OpenSSH and the OpenID provider: file
//! modes of keys and the store, control characters in names, a wrong
//! authorization code, and the host CA line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{self, Client, GwOptions, GwProcess, Tripwire, eventually, text};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `jit-gateway serve` that is expected to refuse to start.
async fn refused_start(config: &Path) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-gateway"));
    cmd.args(["--config", config.to_str().unwrap(), "serve"]).env("RUST_LOG", "warn");
    let out = support::run(&mut cmd, None, Duration::from_secs(30)).await;
    assert!(!out.status.success(), "the gateway must not start: {}", text(&out.stderr));
    text(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_files_are_made_private_and_a_key_others_may_read_refuses_the_start() {
    let prepared = support::prepare();
    let port = support::peers::free_port();
    let extra = "[api]\nlisten = \"127.0.0.1:0\"\n".to_string();
    let (tmp, config) = support::write_config(prepared, &GwOptions { extra, ssh_port: port, ..Default::default() });
    let dir = tmp.path();
    let (certs, state) = (dir.join("certs"), dir.join("state"));
    // A certs folder that already exists with a loose mode (as `mkdir` under umask 022 makes it).
    chmod(&certs, 0o755);

    let gateway = GwProcess::start(&config, port).await;
    assert!(eventually(Duration::from_secs(20), || state.join("admin.sock").exists()).await);
    assert_eq!(mode(&certs), 0o700, "an existing certs folder is narrowed");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&dir.join("recordings")), 0o700);
    assert_eq!(mode(&state.join("gateway.redb")), 0o600, "the store is created private");
    assert_eq!(mode(&state.join("admin.sock")), 0o600);
    for key in [
        "ssh_host_ed25519_key",
        "host_ca_ed25519_key",
        "target_ca_ed25519_key",
        "signing_ed25519_key",
        "api_token.key",
        "tls.key",
    ] {
        assert_eq!(mode(&certs.join(key)), 0o600, "{key}");
    }
    gateway.kill9().await;

    // A private key its group or others may read: the start is refused, naming the file.
    for key in ["api_token.key", "tls.key", "signing_ed25519_key"] {
        let path = certs.join(key);
        for loose in [0o644, 0o640] {
            chmod(&path, loose);
            let stderr = refused_start(&config).await;
            assert!(stderr.contains(&format!("{}: private key", path.display())), "{key}: {stderr}");
            assert!(stderr.contains(&format!("chmod 600 {}", path.display())), "{key}: {stderr}");
        }
        chmod(&path, 0o600);
    }

    // A configured TLS key (api.tls_key) is held to the same rule.
    let (custom_cert, custom_key) = (dir.join("custom.crt"), dir.join("custom.key"));
    std::fs::copy(certs.join("tls.crt"), &custom_cert).unwrap();
    std::fs::copy(certs.join("tls.key"), &custom_key).unwrap();
    chmod(&custom_key, 0o644);
    let custom_config = dir.join("custom.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            custom_cert.display(),
            custom_key.display()
        ),
    );
    std::fs::write(&custom_config, text).unwrap();
    let stderr = refused_start(&custom_config).await;
    assert!(stderr.contains(&format!("{}: private key", custom_key.display())), "{stderr}");

    // A store left 0644 by an older version is narrowed at the next start.
    chmod(&state.join("gateway.redb"), 0o644);
    let gateway = GwProcess::start(&config, port).await;
    assert_eq!(mode(&state.join("gateway.redb")), 0o600);
    gateway.kill9().await;
}

/// A russh client for what OpenSSH will not send; the gateway's host key does not matter here.
struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_a_jump_host_or_a_user_name_are_refused_and_forge_no_log_line() {
    if !support::need("ssh") {
        return;
    }
    let vm1 = Tripwire::start().await;
    let port = support::peers::free_port();
    let extra = format!("[targets.vm1]\naddress = \"127.0.0.1\"\nssh_port = {}\n", vm1.port);
    let (tmp, config) =
        support::write_config(support::prepare(), &GwOptions { extra, ssh_port: port, ..Default::default() });
    let log_path = tmp.path().join("gateway.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-gateway"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await);
    let mallory = Client::for_process(tmp.path(), port, "mallory");
    let bind = support::run(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-gateway")).args([
            "--config",
            config.to_str().unwrap(),
            "key",
            "bind",
            "--user",
            "mallory@example.test",
            "--login-name",
            "mallory",
            "--public-key",
            mallory.key.with_extension("pub").to_str().unwrap(),
        ]),
        None,
        Duration::from_secs(30),
    )
    .await;
    assert!(bind.status.success(), "{}", text(&bind.stderr));

    // A jump host name carrying a whole forged log line (no `:`, which `-W host:port` would split on).
    let forged = "FORGED 2026-12-02T150000.000000Z  INFO session started user=alice@example.test target=vm1";
    let host = format!("vm1\n{forged}");
    let out = mallory.ssh(&["-o", "BatchMode=yes", "-W", &format!("{host}:22"), "jit-gateway"], None).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("the target name contains control characters"), "{}", text(&out.stderr));

    // A user name with a newline and an escape sequence (OpenSSH's client refuses to send one; other
    // clients do): no key opens the door for it, and keyboard-interactive says why.
    let user = format!("mallory\u{1b}[2K\n{forged}");
    let mut session = russh::client::connect(Default::default(), ("127.0.0.1", port), AnyHostKey).await.unwrap();
    let key = std::sync::Arc::new(russh::keys::load_secret_key(&mallory.key, None).unwrap());
    let with_key = || russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::clone(&key), None);
    let by_key = session.authenticate_publickey(user.as_str(), with_key()).await.unwrap();
    assert!(!by_key.success(), "a bound key does not sign in under a name with control characters");
    match session.authenticate_keyboard_interactive_start(user.as_str(), None).await {
        Ok(russh::client::KeyboardInteractiveAuthResponse::InfoRequest { instructions, .. }) => {
            assert!(instructions.contains("the user name contains control characters"), "{instructions}")
        }
        Ok(russh::client::KeyboardInteractiveAuthResponse::Success) => panic!("signed in"),
        Ok(_) | Err(_) => {}
    }
    // The same key under its own name still signs in (the refusal was about the name).
    let mut session = russh::client::connect(Default::default(), ("127.0.0.1", port), AnyHostKey).await.unwrap();
    assert!(session.authenticate_publickey("mallory", with_key()).await.unwrap().success());

    let _ = child.start_kill();
    let _ = child.wait().await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("jump refused"), "{log}");
    assert!(log.contains("vm1\\nFORGED"), "the name is escaped in the log: {log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "a forged line: {log}");
    assert!(!log.contains('\u{1b}'), "no raw escape sequence reaches the log: {log}");
    assert_eq!(vm1.hits(), 0, "nothing reached the target");
}

/// Starts a browser sign-in through the API; returns its ID and the `state` the provider would send back.
async fn start_code_login(http: &reqwest::Client, api: &str) -> (String, String) {
    let r = http
        .post(format!("{api}/api/v1/login/code"))
        .json(&serde_json::json!({"redirect_uri": "http://127.0.0.1:9/callback"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let started: serde_json::Value = r.json().await.unwrap();
    let authorize = reqwest::Url::parse(started["authorize_url"].as_str().unwrap()).unwrap();
    let state = authorize.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.into_owned()).unwrap();
    (started["login_id"].as_str().unwrap().to_string(), state)
}

/// Finishes it with a code the provider never issued: the status and the error message.
async fn finish_with_a_wrong_code(http: &reqwest::Client, api: &str, login: (String, String)) -> (u16, String) {
    let r = http
        .post(format!("{api}/api/v1/login/code/finish"))
        .json(&serde_json::json!({"login_id": login.0, "code": "not-a-code-the-provider-issued", "state": login.1}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_authorization_code_is_a_client_error_and_an_unreachable_provider_is_a_503() {
    let Some(f) = crate::workflow::flow("").await else { return };
    let pem = std::fs::read(f.gw.tls_certificate()).unwrap();
    let http =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap();
    let api = f.gw.api_url();

    let login = start_code_login(&http, &api).await;
    let (status, message) = finish_with_a_wrong_code(&http, &api, login).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("the authorization code is wrong, expired or already used"), "{message}");

    // The provider goes away between the start and the finish: that one is an outage.
    let login = start_code_login(&http, &api).await;
    drop(f.provider);
    let (status, message) = finish_with_a_wrong_code(&http, &api, login).await;
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("unreachable"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_ca_line_names_the_targets_and_an_empty_inventory_gets_no_wildcard() {
    let gw = support::Gw::start(support::prepare(), GwOptions::default()).await;
    let out = gw.cli(&["ca", "known-hosts"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(!printed.contains("@cert-authority *"), "{printed}");
    assert!(
        printed.lines().all(|l| l.starts_with('#') || l.starts_with("jit-gateway ssh-ed25519 ")),
        "only the gateway's own key is usable: {printed}"
    );
    assert!(printed.contains("No targets"), "{printed}");

    let extra = "[targets.vm1]\naddress = \"127.0.0.1\"\n\n[targets.vm2]\naddress = \"127.0.0.2\"\n".to_string();
    let gw = support::Gw::start(support::prepare(), GwOptions { extra, ..Default::default() }).await;
    let printed = text(&gw.cli(&["ca", "known-hosts"]).await.stdout);
    let ca = jit_gateway::keys::openssh_line(gw.gateway.keys.host_ca_public());
    assert!(printed.contains(&format!("@cert-authority vm1,vm2 {ca}")), "{printed}");
}
