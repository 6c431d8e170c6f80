//! The real peers: OpenSSH's sshd and the oidc-provider fixture.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use super::ci;

/// A real sshd on a free loopback port, trusting the gateway's target CA.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub host_key_public: String,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Sshd {
    pub fn start(target_ca_public: &str) -> Sshd {
        Sshd::start_on(None, target_ca_public)
    }

    /// On a given port (for a target that comes back where it was), or a free one.
    pub fn start_on(fixed_port: Option<u16>, target_ca_public: &str) -> Sshd {
        super::ensure_login_account();
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (run the tests as root)");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let host_key = dir.join("host_key");
        let ok =
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&host_key).status().unwrap();
        assert!(ok.success());
        let host_key_public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        std::fs::write(dir.join("ca.pub"), format!("{target_ca_public}\n")).unwrap();
        let log = dir.join("sshd.log");
        for _attempt in 0..5 {
            let port = fixed_port.unwrap_or_else(free_port);
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nTrustedUserCAKeys {ca}\nAuthorizedKeysFile none\n\
                     UsePAM no\nPidFile none\nStrictModes no\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n\
                     AllowTcpForwarding yes\nAllowAgentForwarding yes\nX11Forwarding no\nPermitRootLogin no\nMaxStartups 200:30:400\n",
                    hk = host_key.display(),
                    ca = dir.join("ca.pub").display()
                ),
            )
            .unwrap();
            let logfile = std::fs::File::create(&log).unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logfile)
                .spawn()
                .expect("start sshd");
            if wait_for_port(port, &mut child) {
                return Sshd { child, port, host_key_public, log, _tmp: tmp };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, child: &mut Child) -> bool {
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The OpenID provider fixture (npm oidc-provider), on a port of its own.
/// It exits when its stdin closes, so a crashed test never leaves it behind.
pub struct Provider {
    child: Child,
    _stdin: ChildStdin,
    pub issuer: String,
    http: reqwest::Client,
    _logdir: tempfile::TempDir,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl Provider {
    /// Starts the provider, or returns None (skip) when node or its packages are missing outside CI.
    pub fn start() -> Option<Provider> {
        if !super::need("node") {
            return None;
        }
        if !fixture_dir().join("node_modules/oidc-provider").is_dir() {
            let message = "the OpenID provider fixture is not installed: run `npm ci --prefix tests/oidc`";
            if ci() {
                panic!("{message}");
            }
            eprintln!("skipping: {message}");
            return None;
        }
        // Its ready line normally comes within a second; a start that stalls
        // (seen once under a loaded full run) is retried instead of hanging the test.
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("provider.log");
        for _attempt in 0..3 {
            let mut child = Command::new("node")
                .arg("server.mjs")
                .args(["--port", "0", "--test-controls"])
                .current_dir(fixture_dir())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start node");
            let stdin = child.stdin.take().unwrap();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if !line.is_empty() => {
                    let ready: serde_json::Value =
                        serde_json::from_str(&line).unwrap_or_else(|e| panic!("provider said {line:?}: {e}"));
                    let issuer = ready["issuer"].as_str().expect("issuer").to_string();
                    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
                    return Some(Provider { child, _stdin: stdin, issuer, http, _logdir: logdir });
                }
                _ => {
                    eprintln!(
                        "the OpenID provider did not start; retrying: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("the OpenID provider did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// Approves (or denies) a device code as `user`, through the provider's pages.
    pub async fn approve(&self, user: &str, code: &str, deny: bool) -> bool {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg("approve.mjs").args(["--issuer", &self.issuer, "--user", user]).current_dir(fixture_dir());
        if deny {
            cmd.arg("--deny");
        }
        cmd.arg(code);
        super::run(&mut cmd, None, Duration::from_secs(30)).await.status.success()
    }

    /// Makes the provider publish keys that did not sign its tokens (or restores them).
    pub async fn rogue_keys(&self, on: bool) {
        let path = if on { "rogue-jwks" } else { "normal-jwks" };
        let r = self.http.post(format!("{}/__test/{path}", self.issuer)).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// Deprovisions `user` at the provider: their refresh tokens are refused from now on.
    pub async fn disable(&self, user: &str) {
        let r = self.http.post(format!("{}/__test/disable?user={user}", self.issuer)).send().await.unwrap();
        assert!(r.status().is_success(), "disabling {user}: {}", r.status());
    }

    /// Device codes the provider has handed out since it started.
    pub async fn device_authorizations(&self) -> u64 {
        let r = self.http.post(format!("{}/__test/counts", self.issuer)).send().await.unwrap();
        let counts: serde_json::Value = r.json().await.unwrap();
        counts["device_authorizations"].as_u64().expect("a count")
    }

    /// A real ID token for `client_id`, obtained with the device flow as `user`.
    pub async fn id_token(&self, client_id: &str, secret: &str, user: &str) -> String {
        let auth: serde_json::Value = self
            .http
            .post(format!("{}/device/auth", self.issuer))
            .basic_auth(client_id, Some(secret))
            .form(&[("scope", "openid email profile groups")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let code = auth["user_code"].as_str().unwrap();
        assert!(self.approve(user, code, false).await, "approval of {code} failed");
        let token: serde_json::Value = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", auth["device_code"].as_str().unwrap()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        token["id_token"].as_str().unwrap_or_else(|| panic!("no id_token in {token}")).to_string()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
