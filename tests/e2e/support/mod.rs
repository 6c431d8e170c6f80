//! Test support: real peers on loopback.
//!
//! - `Provider`: the oidc-provider fixture (tests/oidc), started per test on port 0.
//! - `Sshd`: a real OpenSSH server on a free port, trusting the gateway's target CA.
//! - `Gw`: the gateway in-process, on port 0, with its own state, certs and recordings.
//! - `Client`: an OpenSSH client configuration (`ssh -F`) with its own key.
//!
//! Peers that are not installed make a test skip with a message, except under
//! `CI=true`, where they make it fail.

#![allow(dead_code)]

pub mod fake_arm;
pub mod ironrdp_client;
pub mod peers;
pub mod rdp;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jit_gateway::admin::{self, protocol::Request};
use jit_gateway::clock::{Clock, SystemClock};
use jit_gateway::config::Config;
use jit_gateway::gateway::{Gateway, Listeners};
use jit_gateway::store::{Identity, KeyBinding, Protocol, blocking};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

pub use peers::{Provider, Sshd};

/// The login used on test targets (an account the support code makes sure exists).
pub const LOGIN: &str = "admin";

pub fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// True when `program` can run; otherwise skip (or fail under CI).
pub fn need(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
        || Path::new(program).is_file();
    if !found {
        if ci() {
            panic!("{program} is required for this test (CI=true): run .ci/run or install it");
        }
        eprintln!("skipping: {program} is not installed");
    }
    found
}

#[macro_export]
macro_rules! require {
    ($($program:expr),+) => {
        $( if !$crate::support::need($program) { return; } )+
    };
}

/// Runs one-time machine setup (test accounts) once at a time across the
/// test processes that nextest runs in parallel. `scripts/test` does this
/// setup before the tests start; the lock covers a plain `cargo test`.
pub fn with_setup_lock<T>(setup: impl FnOnce() -> T) -> T {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("jit-gateway-test-setup.lock"))
        .expect("open the test setup lock file");
    lock.lock().expect("take the test setup lock");
    let out = setup();
    let _ = lock.unlock();
    out
}

/// True when the Unix account exists.
pub fn account_exists(name: &str) -> bool {
    std::process::Command::new("id").arg(name).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Creates a Unix account unless it exists (under the setup lock).
pub fn ensure_account(name: &str) {
    with_setup_lock(|| {
        if !account_exists(name) {
            let status = std::process::Command::new("useradd").args(["-m", "-s", "/bin/bash", name]).status();
            assert!(
                matches!(status, Ok(s) if s.success()) || account_exists(name),
                "cannot create the test account `{name}` (run the tests as root, or run scripts/test-setup once)"
            );
        }
        // A locked account (`!` password) is refused by sshd even with a certificate; `*` is not locked.
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
        if shadow.lines().any(|l| l.starts_with(&format!("{name}:!"))) {
            let _ = std::process::Command::new("usermod").args(["-p", "*", name]).status();
        }
    })
}

/// Makes sure the Unix account the tests log in as exists and may log in with a certificate.
pub fn ensure_login_account() {
    ensure_account(LOGIN);
}

pub struct GwOptions {
    pub issuer: String,
    /// Extra TOML appended to the generated configuration.
    pub extra: String,
    /// `[targets.*]` blocks; `vm1` pointing at `sshd_port` is added when set.
    pub sshd_port: Option<u16>,
    pub vm1_host_key: Option<String>,
    /// Extra lines for the `[ssh]` table.
    pub ssh_extra: String,
    /// A fixed SSH port (for a gateway run as its own process); 0 otherwise.
    pub ssh_port: u16,
    /// Extra lines for the `[gateway]` table.
    pub gateway_extra: String,
}

impl Default for GwOptions {
    fn default() -> Self {
        GwOptions {
            issuer: "http://127.0.0.1:9".into(),
            extra: String::new(),
            sshd_port: None,
            vm1_host_key: None,
            ssh_extra: String::new(),
            ssh_port: 0,
            gateway_extra: String::new(),
        }
    }
}

impl GwOptions {
    pub fn with_ssh(mut self, lines: &str) -> Self {
        self.ssh_extra.push_str(lines);
        self.ssh_extra.push('\n');
        self
    }

    pub fn with_gateway(mut self, lines: &str) -> Self {
        self.gateway_extra.push_str(lines);
        self.gateway_extra.push('\n');
        self
    }
}

/// The gateway running in this test's runtime.
pub struct Gw {
    pub gateway: Arc<Gateway>,
    pub port: u16,
    /// The HTTPS API's port, when the configuration has `[api]`.
    pub api_port: Option<u16>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

/// A gateway's folder with its keys made, before it starts (so a target can trust its CA first).
pub struct Prepared {
    tmp: tempfile::TempDir,
    pub target_ca: String,
}

pub fn prepare() -> Prepared {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = jit_gateway::keys::KeyMaterial::load_or_generate(&tmp.path().join("certs")).expect("keys");
    let target_ca = jit_gateway::keys::openssh_line(keys.target_ca_public());
    Prepared { tmp, target_ca }
}

impl Gw {
    pub async fn start(prepared: Prepared, options: GwOptions) -> Gw {
        let (tmp, config_path) = write_config(prepared, &options);
        let config = Config::load(&config_path).expect("test configuration is valid");
        Gw::start_with(config, config_path, tmp).await
    }
}

/// Writes the gateway's configuration into its folder; returns the folder and the file.
pub fn write_config(prepared: Prepared, options: &GwOptions) -> (tempfile::TempDir, PathBuf) {
    {
        let tmp = prepared.tmp;
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("client_secret"), "jit-gateway-secret\n").unwrap();
        let mut text = format!(
            r#"
[gateway]
name = "jit-gateway"
state_dir = "state"
certs_dir = "certs"
{gateway_extra}
[ssh]
listen = "127.0.0.1:{ssh_port}"
keepalive_interval = "5s"
{ssh_extra}

[oidc]
issuer = "{issuer}"
client_id = "jit-gateway"
client_secret_file = "client_secret"
allow_insecure_loopback_issuer = true
scopes = ["openid", "email", "profile", "groups", "offline_access"]

[recording]
dir = "recordings"
{extra}
"#,
            issuer = options.issuer,
            extra = options.extra,
            ssh_extra = options.ssh_extra,
            ssh_port = options.ssh_port,
            gateway_extra = options.gateway_extra
        );
        if let Some(port) = options.sshd_port {
            text.push_str(&format!("\n[targets.vm1]\naddress = \"127.0.0.1\"\nssh_port = {port}\n"));
            if let Some(pin) = &options.vm1_host_key {
                text.push_str(&format!("host_key = \"{pin}\"\n"));
            }
        }
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, &text).unwrap();
        (tmp, config_path)
    }
}

impl Gw {
    async fn start_with(config: Config, config_path: PathBuf, tmp: tempfile::TempDir) -> Gw {
        Gw::start_on(config, config_path, tmp, None).await
    }

    async fn start_on(
        mut config: Config,
        config_path: PathBuf,
        tmp: tempfile::TempDir,
        ports: Option<(u16, Option<u16>)>,
    ) -> Gw {
        let has_api = config.api.is_some();
        // RDP: bound first, so the `.rdp` files name the real port.
        let rdp = match config.rdp.as_mut() {
            Some(r) => {
                let listener = tokio::net::TcpListener::bind(r.listen).await.unwrap();
                r.listen = listener.local_addr().unwrap();
                r.public_address = Some(r.listen.to_string());
                Some(listener)
            }
            None => None,
        };
        let gateway = Gateway::open(config, Arc::new(SystemClock)).await.expect("gateway opens");
        let (ssh_port, api_port) = ports.unwrap_or((0, Some(0)));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", ssh_port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let api = match (has_api, api_port) {
            (true, Some(p)) => Some(tokio::net::TcpListener::bind(("127.0.0.1", p)).await.unwrap()),
            _ => None,
        };
        let api_port = api.as_ref().map(|l| l.local_addr().unwrap().port());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let gateway = Arc::clone(&gateway);
            let shutdown = shutdown.clone();
            async move {
                jit_gateway::gateway::run(gateway, Listeners { ssh: listener, api, rdp }, shutdown)
                    .await
                    .expect("gateway runs");
            }
        });
        // The admin socket exists once `run` is serving.
        for _ in 0..200 {
            if gateway.config.admin_socket().exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Gw {
            gateway,
            port,
            api_port,
            dir: tmp.path().to_path_buf(),
            config_path,
            shutdown,
            task: Some(task),
            _tmp: tmp,
        }
    }

    /// Stops the gateway (its files stay).
    pub async fn shutdown_only(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    /// Stops the gateway and lets go of its store (so other processes may open
    /// the file); the returned directory keeps the files alive.
    pub async fn stop_keep_files(mut self) -> tempfile::TempDir {
        self.shutdown_only().await;
        let tmp = std::mem::replace(&mut self._tmp, tempfile::tempdir().unwrap());
        let store = Arc::clone(&self.gateway.store);
        drop(self);
        for _ in 0..200 {
            if Arc::strong_count(&store) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(Arc::strong_count(&store), 1, "the store is still in use");
        tmp
    }

    /// Stops the gateway and starts it again on the same state, keys and ports.
    pub async fn restart(mut self) -> Gw {
        self.shutdown_only().await;
        let ports = (self.port, self.api_port);
        let config_path = self.config_path.clone();
        let tmp = std::mem::replace(&mut self._tmp, tempfile::tempdir().unwrap());
        drop(self);
        let config = Config::load(&config_path).expect("configuration");
        Gw::start_on(config, config_path, tmp, Some((ports.0, ports.1))).await
    }

    /// The gateway's API base URL and its (self-signed) certificate.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port.expect("[api] configured"))
    }

    pub fn tls_certificate(&self) -> PathBuf {
        self.gateway.config.gateway.certs_dir.join("tls.crt")
    }

    /// Runs the `jit-gateway` binary as the person whose API session is in `session`.
    pub async fn cli_as(&self, session: &Path, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--config", self.config_path.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jit-gateway"));
        cmd.env("JITGW_SESSION", session).args(&all);
        run(&mut cmd, None, Duration::from_secs(60)).await
    }

    /// `jit-gateway login` as `user`, approving the device code at the provider.
    /// Returns the session file.
    pub async fn login(&self, provider: &Provider, user: &str) -> PathBuf {
        use tokio::io::AsyncBufReadExt;
        let session = self.dir.join(format!("session-{user}.json"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_jit-gateway"))
            .env("JITGW_SESSION", &session)
            .args(["login", "--gateway", &self.api_url(), "--ca-file", self.tls_certificate().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let code = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("user_code=") {
                    return Some(line[at + 10..].split_whitespace().next().unwrap_or("").to_string());
                }
            }
            None
        })
        .await
        .expect("login prints a code")
        .expect("a user code");
        assert!(provider.approve(user, &code, false).await);
        let status =
            tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("login finishes").unwrap();
        assert!(status.success(), "login as {user}");
        session
    }

    /// Stops the gateway and waits for it (sessions ended, recordings sealed).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    pub fn target_ca_public(&self) -> String {
        jit_gateway::keys::openssh_line(self.gateway.keys.target_ca_public())
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.gateway.config.recording.dir.clone()
    }

    /// Adds a grant through the admin socket, as `jit-gateway grant add` does.
    pub async fn grant(&self, user: &str, target: &str, logins: &[&str], duration: Duration) -> String {
        self.grant_with(user, target, logins, duration, false).await
    }

    pub async fn grant_with(
        &self,
        user: &str,
        target: &str,
        logins: &[&str],
        duration: Duration,
        port_forwarding: bool,
    ) -> String {
        self.add_grant(user, target, Protocol::Ssh, logins, duration, port_forwarding, &[]).await
    }

    /// An RDP grant, allowing the given redirections (`clipboard`, `drives`).
    pub async fn grant_rdp(
        &self,
        user: &str,
        target: &str,
        logins: &[&str],
        duration: Duration,
        redirect: &[&str],
    ) -> String {
        self.add_grant(user, target, Protocol::Rdp, logins, duration, false, redirect).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn add_grant(
        &self,
        user: &str,
        target: &str,
        protocol: Protocol,
        logins: &[&str],
        duration: Duration,
        port_forwarding: bool,
        redirect: &[&str],
    ) -> String {
        let request = Request::GrantAdd {
            user: user.into(),
            target: target.into(),
            protocol,
            logins: logins.iter().map(|s| s.to_string()).collect(),
            duration_secs: duration.as_secs().max(1),
            starts_in_secs: 0,
            port_forwarding,
            rdp_redirect: redirect.iter().map(|s| s.to_string()).collect(),
            reason: "integration test".into(),
        };
        let data = admin::call(&self.gateway.config.admin_socket(), &request).await.expect("grant add");
        data["id"].as_str().unwrap().to_string()
    }

    /// Binds a client key to an identity, as a finished device-flow sign-in does.
    pub async fn bind_key(&self, public_key_line: &str, user: &str, login_name: &str) {
        let key = russh::keys::PublicKey::from_openssh(public_key_line.trim()).unwrap();
        let now = SystemClock.now_ms();
        let identity = Identity {
            id: Identity::id_for("http://test-issuer", login_name),
            issuer: "http://test-issuer".into(),
            subject: login_name.into(),
            user: user.into(),
            login_name: Some(login_name.into()),
            display_name: None,
            groups: vec![],
            first_seen_ms: now,
            last_sign_in_ms: now,
        };
        let binding = KeyBinding {
            fingerprint: jit_gateway::keys::fingerprint(&key),
            identity_id: identity.id.clone(),
            user: user.into(),
            algorithm: key.algorithm().to_string(),
            bound_at_ms: now,
            expires_at_ms: now + 3_600_000,
            client_ip: None,
        };
        blocking(&self.gateway.store, move |s| {
            s.upsert_identity(&identity)?;
            s.bind_key(&binding)
        })
        .await
        .unwrap();
    }

    /// Runs the `jit-gateway` binary against this gateway's configuration.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--config", self.config_path.to_str().unwrap()];
        all.extend_from_slice(args);
        run(Command::new(env!("CARGO_BIN_EXE_jit-gateway")).args(&all), None, Duration::from_secs(30)).await
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An OpenSSH client set up for one gateway: its key, config and known_hosts.
#[derive(Clone)]
pub struct Client {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub key: PathBuf,
    pub public_key: String,
    _tmp: Arc<tempfile::TempDir>,
}

impl Client {
    /// `extra_gateway_options` go into the `Host jit-gateway` block.
    pub fn new(gw: &Gw, user: &str, extra_gateway_options: &str) -> Client {
        let targets: Vec<&str> = gw.gateway.config.targets.keys().map(String::as_str).collect();
        let known = gw.gateway.keys.known_hosts_lines("jit-gateway", targets.iter().copied());
        Client::with(gw.port, &known, user, extra_gateway_options)
    }

    /// For a gateway running as its own process, from its folder (certs/) and port.
    pub fn for_process(gateway_dir: &Path, port: u16, user: &str) -> Client {
        let certs = gateway_dir.join("certs");
        let line = |f: &str| {
            std::fs::read_to_string(certs.join(f)).unwrap().split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        };
        let known = format!(
            "jit-gateway {}\n@cert-authority vm1 {}\n",
            line("ssh_host_ed25519_key.pub"),
            line("host_ca_ed25519_key.pub")
        );
        Client::with(port, &known, user, "")
    }

    fn with(port: u16, known: &str, user: &str, extra_gateway_options: &str) -> Client {
        let tmp = tempfile::Builder::new().prefix("c").tempdir_in("/tmp").unwrap();
        let dir = tmp.path().to_path_buf();
        let key = dir.join("id_ed25519");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(status.success());
        let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        std::fs::write(dir.join("known_hosts"), known).unwrap();
        let config = dir.join("ssh_config");
        let text = format!(
            "Host jit-gateway\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  HostKeyAlias jit-gateway\n{extra_gateway_options}\n\
             Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  \
             ConnectTimeout 10\n  ServerAliveInterval 5\n",
            key = key.display(),
            known = dir.join("known_hosts").display()
        );
        std::fs::write(&config, text).unwrap();
        Client { dir, config, key, public_key, _tmp: Arc::new(tmp) }
    }

    /// `ssh -F config <args...>` with stdin from `input` (or nothing), no terminal.
    pub async fn ssh(&self, args: &[&str], input: Option<&[u8]>) -> std::process::Output {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&self.config).args(args);
        run(&mut cmd, input, Duration::from_secs(60)).await
    }

    /// The usual jump: `ssh -J jit-gateway admin@vm1 <command>`, batch mode.
    pub async fn exec(&self, target: &str, command: &str, input: Option<&[u8]>) -> std::process::Output {
        let destination = format!("{LOGIN}@{target}");
        self.ssh(&["-o", "BatchMode=yes", "-J", "jit-gateway", &destination, command], input).await
    }
}

/// Runs a command to completion with a time limit; never hangs a test.
pub async fn run(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> std::process::Output {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&data).await;
        });
    }
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.expect("wait"),
        Err(_) => panic!("command did not finish within {limit:?}: {cmd:?}"),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until `check` is true, polling, up to `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP listener that counts connections: a target nobody may reach.
pub struct Tripwire {
    pub port: u16,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Tripwire {
    pub async fn start() -> Tripwire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((_s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Tripwire { port, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The gateway as its own process (`jit-gateway serve`), for tests that kill it.
pub struct GwProcess {
    child: tokio::process::Child,
    pub config: PathBuf,
    pub port: u16,
}

impl GwProcess {
    pub async fn start(config: &Path, port: u16) -> GwProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_jit-gateway"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the gateway");
        let up =
            eventually(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await;
        assert!(up, "the gateway process listens on {port}");
        GwProcess { child, config: config.to_path_buf(), port }
    }

    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        run(Command::new(env!("CARGO_BIN_EXE_jit-gateway")).args(&all), None, Duration::from_secs(30)).await
    }

    /// SIGTERM, and waits for a clean stop (sessions ended, recordings sealed, store closed).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(matches!(stopped, Ok(Ok(s)) if s.success()), "the gateway stops cleanly on SIGTERM: {stopped:?}");
    }

    /// kill -9: no cleanup of any kind.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
