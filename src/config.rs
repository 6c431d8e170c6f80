//! The gateway's configuration: TOML, unknown keys rejected, named defaults,
//! and a `validate()` pass whose errors name the offending key.
//!
//! This module only parses and checks; it never opens sockets or files other
//! than the configuration file itself. Paths are resolved relative to the
//! directory of the configuration file so a config can be moved as a unit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub ssh: SshConfig,
    pub oidc: OidcConfig,
    /// How long a sign-in stands before the gateway asks the provider again.
    #[serde(default)]
    pub signin: SigninConfig,
    #[serde(default)]
    pub recording: RecordingConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Who may request what, who approves (the request workflow).
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    /// The HTTPS API (`jit-gateway login`, requests, approvals). Off when absent.
    pub api: Option<ApiConfig>,
    /// Webhook notifications of requests and decisions. Off when absent.
    pub notify: Option<crate::notify::NotifyConfig>,
    /// Azure: opening ports in NSGs or with Defender JIT, and targets from Azure. Off when absent.
    pub azure: Option<crate::azure::AzureConfig>,
    /// The RDP listener (`jit-gateway rdp` tickets). Off when absent.
    pub rdp: Option<RdpConfig>,
    /// The inventory: the only places the gateway ever connects to.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The name users give the gateway in their ssh config (`Host <name>`).
    pub name: String,
    /// Host name or address users reach the gateway at (printed by `ssh-config`).
    pub public_host: String,
    /// Where the embedded store, the admin socket and TOFU host keys live.
    pub state_dir: PathBuf,
    /// Key material (see certs/README.md).
    pub certs_dir: PathBuf,
    /// Refusals of peers that have not signed in (limits, bad RDP tickets) are counted and
    /// written to the audit log as one `refusals.aggregated` record per source and interval.
    #[serde(with = "humantime_serde")]
    pub refusal_audit_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            name: "jit-gateway".into(),
            public_host: "127.0.0.1".into(),
            state_dir: PathBuf::from("/var/lib/jit-gateway"),
            certs_dir: PathBuf::from("/etc/jit-gateway/certs"),
            refusal_audit_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Only pinned keys (inventory `host_key`) are accepted.
    Strict,
    /// Pinned keys are checked; an unpinned target's key is recorded on first
    /// use and must match from then on.
    Tofu,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    pub listen: SocketAddr,
    /// Port users connect to, when it differs from `listen` (NAT, load balancer).
    pub public_port: Option<u16>,
    /// Longest time a connection may take to sign in, device flow included.
    #[serde(with = "humantime_serde")]
    pub login_grace_time: Duration,
    /// How long a client key stays bound to the identity that signed in with it.
    #[serde(with = "humantime_serde")]
    pub key_binding_ttl: Duration,
    /// Connections that have not signed in yet, at most (like OpenSSH's MaxStartups).
    pub max_unauthenticated: usize,
    /// Device-flow sign-ins waiting for approval at once, at most.
    pub max_pending_sign_ins: usize,
    pub allow_agent_forwarding: bool,
    pub allow_x11_forwarding: bool,
    /// Environment variables passed to the target (`SendEnv`); `*` at the end is a prefix match.
    pub allowed_env: Vec<String>,
    /// Subsystems a client may start on a target.
    pub allowed_subsystems: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// Lifetime of the user certificate the gateway presents to a target.
    #[serde(with = "humantime_serde")]
    pub upstream_certificate_ttl: Duration,
    pub upstream_host_key_policy: HostKeyPolicy,
    /// Keepalive toward clients and targets; three missed answers end the connection.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Ciphers offered to clients, in order. OpenSSH clients prefer ChaCha20-Poly1305 and
    /// AES-CTR when offered; AES-GCM (with AES-NI) costs the gateway about half as much CPU,
    /// so only AES-GCM is offered by default. Add "chacha20-poly1305@openssh.com" for
    /// clients without AES-GCM.
    pub ciphers: Vec<String>,
    /// Time a connection has to begin a sign-in (a bound key accepted, or a device-flow
    /// sign-in started) before it is cut; `login_grace_time` then covers the wait for approval.
    /// The shorter of the two applies when `login_grace_time` is shorter.
    #[serde(with = "humantime_serde")]
    pub preauth_timeout: Duration,
    /// Connections that have not signed in, from one source address (an IPv6 /64), at most.
    pub max_unauthenticated_per_source: usize,
    /// Device-flow sign-ins waiting for approval from one source address, at most.
    pub max_pending_sign_ins_per_source: usize,
    /// Key exchange methods offered, in order. Finite-field Diffie-Hellman
    /// (`diffie-hellman-group14-sha256` ... `group18-sha512`, `diffie-hellman-group-exchange-sha256`)
    /// costs the server far more than the client (DHEat) and is only offered when listed here.
    pub kex_algorithms: Vec<String>,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:2222".parse().expect("literal address"),
            public_port: None,
            login_grace_time: Duration::from_secs(600),
            key_binding_ttl: Duration::from_secs(12 * 3600),
            max_unauthenticated: 256,
            max_pending_sign_ins: 64,
            allow_agent_forwarding: false,
            allow_x11_forwarding: false,
            allowed_env: vec!["LANG".into(), "LC_*".into()],
            allowed_subsystems: vec!["sftp".into()],
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_certificate_ttl: Duration::from_secs(300),
            upstream_host_key_policy: HostKeyPolicy::Tofu,
            keepalive_interval: Duration::from_secs(30),
            ciphers: vec!["aes128-gcm@openssh.com".into(), "aes256-gcm@openssh.com".into()],
            preauth_timeout: Duration::from_secs(30),
            max_unauthenticated_per_source: 16,
            max_pending_sign_ins_per_source: 4,
            kex_algorithms: vec![
                "mlkem768x25519-sha256".into(),
                "curve25519-sha256".into(),
                "curve25519-sha256@libssh.org".into(),
            ],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery is fetched from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (confidential clients). Never put the secret itself here.
    pub client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret, as an alternative to the file.
    pub client_secret_env: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Claim that names a user in grants (`grant add --user`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim whose value a user may also type as the SSH user name at the gateway.
    #[serde(default = "default_login_name_claim")]
    pub login_name_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// With `user_claim = "email"`, a token must carry `email_verified: true`; a missing
    /// claim counts as unverified. Set this only for a provider that verifies every
    /// address it issues but does not send the claim (check first: Entra ID does neither).
    #[serde(default)]
    pub assume_email_verified: bool,
    /// Accept an `http://` issuer, only when it is on a loopback address (demo and tests).
    #[serde(default)]
    pub allow_insecure_loopback_issuer: bool,
    /// Extra CA certificate (PEM) to trust for the provider's TLS.
    pub ca_file: Option<PathBuf>,
    /// Clock skew tolerated when checking token times.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub http_timeout: Duration,
}

fn default_scopes() -> Vec<String> {
    // offline_access: a refresh token, so that sign-ins are re-checked with the
    // provider (signin.revalidate) without asking the person again.
    vec!["openid".into(), "email".into(), "profile".into(), "offline_access".into()]
}
fn default_user_claim() -> String {
    "email".into()
}
fn default_login_name_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigninConfig {
    /// A person's sign-in is checked with the provider again (refresh token) when
    /// they start a session or call the API this long after the last check; a
    /// person disabled at the provider is refused from then on. Without a refresh
    /// token (no `offline_access`), they must sign in again.
    #[serde(with = "humantime_serde")]
    pub revalidate: Duration,
}

impl Default for SigninConfig {
    fn default() -> Self {
        Self { revalidate: Duration::from_secs(3600) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Record sessions at all. Turning it off keeps audit events (commands, sign-ins,
    /// grants) but no session content; it is logged loudly at start.
    pub enabled: bool,
    pub dir: PathBuf,
    /// Record what users type in pty sessions (may contain passwords typed at prompts).
    pub record_input: bool,
    /// Output of an exec channel kept (compressed) per channel; past it only counts and a SHA-256.
    pub exec_output_cap: ByteSize,
    /// Recording data waiting for the disk, per recording, at most.
    pub max_backlog: ByteSize,
    /// End the session when its recording cannot be written (fail closed).
    pub fail_closed: bool,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/var/lib/jit-gateway/recordings"),
            record_input: false,
            exec_output_cap: ByteSize(64 << 20),
            max_backlog: ByteSize(64 << 20),
            fail_closed: true,
            flush_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// The URL users give `jit-gateway login --gateway`; printed in hints.
    pub public_url: Option<String>,
    /// Lifetime of a session from `jit-gateway login`.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Certificate chain and key (PEM). Default: `tls.crt`/`tls.key` in certs_dir, self-signed, made on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Connections to the API at once, at most.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
    /// Connections to the API from one source address (an IPv6 /64), at most.
    #[serde(default = "default_api_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Time for the TLS handshake, and for each request's head (also an idle connection's next one).
    #[serde(default = "default_api_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time to receive a request's whole body.
    #[serde(default = "default_api_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Time from a request's head to the end of its answer (a sign-in wait answers within half of it).
    #[serde(default = "default_api_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body; larger ones are refused with 413.
    #[serde(default = "default_api_max_body")]
    pub max_body: ByteSize,
    /// Sign-ins (`jit-gateway login`) in progress at once, at most.
    #[serde(default = "default_api_max_pending_sign_ins")]
    pub max_pending_sign_ins: usize,
    /// Sign-ins in progress from one source address, at most.
    #[serde(default = "default_api_max_pending_sign_ins_per_source")]
    pub max_pending_sign_ins_per_source: usize,
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_api_max_connections() -> usize {
    512
}
fn default_api_max_connections_per_source() -> usize {
    32
}
fn default_api_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_api_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_api_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_api_max_body() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_api_max_pending_sign_ins() -> usize {
    128
}
fn default_api_max_pending_sign_ins_per_source() -> usize {
    8
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket for `jit-gateway grant ...`; default `<state_dir>/admin.sock`.
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Address the gateway connects to (IP or DNS name, never chosen by a user).
    /// For an Azure VM (`azure_vm`) it may be left out: the NIC's private IP is used.
    #[serde(default)]
    pub address: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Pinned host key of the target (`ssh-ed25519 AAAA...`); takes precedence over TOFU.
    pub host_key: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// The Azure VM's resource ID (`/subscriptions/.../virtualMachines/<name>`).
    #[serde(default)]
    pub azure_vm: Option<String>,
    /// The target's RDP port. Without it the target is not reachable over RDP.
    #[serde(default)]
    pub rdp_port: Option<u16>,
    /// Pinned SHA-256 of the target's RDP TLS certificate (`sha256:<hex>`);
    /// without it the first certificate seen is recorded and required after.
    #[serde(default)]
    pub rdp_certificate: Option<String>,
    /// The account the gateway logs in with (NLA or the logon info), so users never see its password.
    #[serde(default)]
    pub rdp_credential: Option<RdpCredential>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            address: String::new(),
            ssh_port: default_ssh_port(),
            host_key: None,
            tags: Vec::new(),
            description: String::new(),
            azure_vm: None,
            rdp_port: None,
            rdp_certificate: None,
            rdp_credential: None,
        }
    }
}

/// A target's RDP account. The password comes from a file or an environment
/// variable, read when a session starts, and is never logged or recorded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdpCredential {
    pub username: String,
    #[serde(default)]
    pub domain: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
}

impl RdpCredential {
    pub fn password(&self) -> Result<crate::secret::Secret<String>, String> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(crate::secret::Secret::new(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(crate::secret::Secret::new)
                .map_err(|_| format!("environment variable {var} is not set"));
        }
        Err("no password_file or password_env".into())
    }
}

/// The RDP listener. Off when absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdpConfig {
    pub listen: SocketAddr,
    /// `host:port` written into `.rdp` files; default `<gateway.public_host>:<listen port>`.
    pub public_address: Option<String>,
    /// How long a ticket from `jit-gateway rdp` may wait to be used (single use).
    #[serde(default = "default_ticket_ttl", with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// Time allowed for the connection sequence up to the relay (ticket, TLS, target).
    #[serde(default = "default_rdp_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Keep client keyboard input in recordings (off: input PDUs are left out).
    #[serde(default)]
    pub record_keystrokes: bool,
    /// Certificate chain and key (PEM) shown to RDP clients; default the gateway's `tls.crt`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Connections in their handshake at once, at most (past it, sessions are limited by grants).
    #[serde(default = "default_rdp_max_handshakes")]
    pub max_handshakes: usize,
    /// Connections in their handshake from one source address (an IPv6 /64), at most.
    #[serde(default = "default_rdp_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
}

fn default_rdp_max_handshakes() -> usize {
    64
}
fn default_rdp_max_handshakes_per_source() -> usize {
    8
}

fn default_ticket_ttl() -> Duration {
    Duration::from_secs(120)
}

fn default_rdp_handshake_timeout() -> Duration {
    Duration::from_secs(20)
}

fn default_ssh_port() -> u16 {
    22
}

/// Key exchange methods `ssh.kex_algorithms` may name: the ones russh implements,
/// without SHA-1, the 1024-bit group and the NIST curves. Each is also a `russh::kex::Name`.
pub const OFFERABLE_KEX: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group14-sha256",
    "diffie-hellman-group15-sha512",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group17-sha512",
    "diffie-hellman-group18-sha512",
];

/// A size in bytes written as `64MiB`, `512 KiB`, `1GB` or a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a size"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => return Err(format!("unknown size unit `{other}` (use KiB, MiB, GiB)")),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (paths shown to people stay readable).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A target name as users type it after `ssh -J gateway user@<name>`.
pub fn is_valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && name.parse::<std::net::IpAddr>().is_err()
}

impl Config {
    /// Reads, parses and validates a configuration file. Relative paths in it
    /// are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_path_buf(), message },
            other => other,
        })
    }

    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        };
        resolve(&mut self.gateway.state_dir);
        resolve(&mut self.gateway.certs_dir);
        resolve(&mut self.recording.dir);
        if let Some(p) = self.admin.socket.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.oidc.client_secret_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.oidc.ca_file.as_mut() {
            resolve(p);
        }
        if let Some(api) = self.api.as_mut() {
            for p in [api.tls_cert.as_mut(), api.tls_key.as_mut()].into_iter().flatten() {
                resolve(p);
            }
        }
        if let Some(azure) = self.azure.as_mut() {
            for p in [azure.ca_file.as_mut(), azure.client_secret_file.as_mut()].into_iter().flatten() {
                resolve(p);
            }
        }
        if let Some(rdp) = self.rdp.as_mut() {
            for p in [rdp.tls_cert.as_mut(), rdp.tls_key.as_mut()].into_iter().flatten() {
                resolve(p);
            }
        }
        for target in self.targets.values_mut() {
            if let Some(p) = target.rdp_credential.as_mut().and_then(|c| c.password_file.as_mut()) {
                resolve(p);
            }
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gateway.name.is_empty() || self.gateway.name.contains(char::is_whitespace) {
            return Err(invalid("gateway.name", "must be a single word"));
        }
        if self.signin.revalidate.is_zero() || self.signin.revalidate > Duration::from_secs(24 * 3600) {
            return Err(invalid("signin.revalidate", "must be between 1s and 24h"));
        }
        if self.ssh.key_binding_ttl.is_zero() {
            return Err(invalid("ssh.key_binding_ttl", "must be longer than zero"));
        }
        if self.ssh.login_grace_time < Duration::from_secs(10) {
            return Err(invalid("ssh.login_grace_time", "must be at least 10s"));
        }
        if self.ssh.upstream_certificate_ttl < Duration::from_secs(30)
            || self.ssh.upstream_certificate_ttl > Duration::from_secs(3600)
        {
            return Err(invalid("ssh.upstream_certificate_ttl", "must be between 30s and 1h"));
        }
        if self.ssh.max_unauthenticated == 0 {
            return Err(invalid("ssh.max_unauthenticated", "must be at least 1"));
        }
        if self.ssh.max_pending_sign_ins == 0 {
            return Err(invalid("ssh.max_pending_sign_ins", "must be at least 1"));
        }
        self.validate_limits()?;
        if self.ssh.ciphers.is_empty() {
            return Err(invalid("ssh.ciphers", "offer at least one cipher"));
        }
        for (i, name) in self.ssh.ciphers.iter().enumerate() {
            if russh::cipher::Name::try_from(name.as_str()).is_err() || name == "none" || name == "clear" {
                return Err(invalid(
                    format!("ssh.ciphers[{i}]"),
                    format!(
                        "`{name}` is not a supported cipher (aes128-gcm@openssh.com, aes256-gcm@openssh.com, chacha20-poly1305@openssh.com, aes256-ctr, aes192-ctr, aes128-ctr)"
                    ),
                ));
            }
        }
        for (i, name) in self.ssh.allowed_env.iter().enumerate() {
            let stem = name.strip_suffix('*').unwrap_or(name);
            if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(invalid(format!("ssh.allowed_env[{i}]"), format!("`{name}` is not a variable name")));
            }
        }
        self.validate_oidc()?;
        if self.recording.flush_interval.is_zero() || self.recording.flush_interval > Duration::from_secs(1) {
            return Err(invalid("recording.flush_interval", "must be between 1ms and 1s"));
        }
        if self.recording.max_backlog.0 < 1 << 20 {
            return Err(invalid("recording.max_backlog", "must be at least 1MiB"));
        }
        for (name, target) in &self.targets {
            let key = |field: &str| format!("targets.{name}.{field}");
            if !is_valid_target_name(name) {
                return Err(invalid(
                    format!("targets.{name}"),
                    "a target name is lower-case letters, digits and '-', and not an IP address",
                ));
            }
            if target.address.trim().is_empty() && target.azure_vm.is_none() {
                return Err(invalid(key("address"), "give the target's address (or its azure_vm resource ID)"));
            }
            if let Some(id) = &target.azure_vm {
                if crate::azure::parse_id(id).is_none()
                    || !id.to_ascii_lowercase().contains("/providers/microsoft.compute/virtualmachines/")
                {
                    return Err(invalid(
                        key("azure_vm"),
                        "must be a VM resource ID: /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name>",
                    ));
                }
                if self.azure.is_none() {
                    return Err(invalid(key("azure_vm"), "needs an [azure] section"));
                }
            }
            if target.ssh_port == 0 {
                return Err(invalid(key("ssh_port"), "must not be 0"));
            }
            if target.rdp_port == Some(0) {
                return Err(invalid(key("rdp_port"), "must not be 0"));
            }
            if let Some(pin) = &target.rdp_certificate
                && crate::rdp::parse_certificate_pin(pin).is_none()
            {
                return Err(invalid(key("rdp_certificate"), "must be sha256:<64 hex digits>"));
            }
            if let Some(c) = &target.rdp_credential {
                if c.username.trim().is_empty() {
                    return Err(invalid(key("rdp_credential.username"), "must not be empty"));
                }
                if c.password_file.is_some() == c.password_env.is_some() {
                    return Err(invalid(key("rdp_credential"), "give exactly one of password_file or password_env"));
                }
            }
            if let Some(pin) = &target.host_key {
                russh::keys::PublicKey::from_openssh(pin.trim())
                    .map_err(|e| invalid(key("host_key"), format!("not an OpenSSH public key: {e}")))?;
            }
        }
        if let Some(api) = &self.api {
            if api.session_ttl < Duration::from_secs(60) || api.session_ttl > Duration::from_secs(7 * 86400) {
                return Err(invalid("api.session_ttl", "must be between 1m and 7d"));
            }
            if api.tls_cert.is_some() != api.tls_key.is_some() {
                return Err(invalid("api.tls_cert", "give both tls_cert and tls_key, or neither"));
            }
        }
        if let Some(rdp) = &self.rdp {
            if rdp.ticket_ttl < Duration::from_secs(10) || rdp.ticket_ttl > Duration::from_secs(600) {
                return Err(invalid("rdp.ticket_ttl", "must be between 10s and 10m"));
            }
            if rdp.tls_cert.is_some() != rdp.tls_key.is_some() {
                return Err(invalid("rdp.tls_cert", "give both tls_cert and tls_key, or neither"));
            }
        }
        if let Some((key, problem)) = self.azure.as_ref().and_then(|a| a.problems()) {
            return Err(invalid(key, problem));
        }
        if let Some(problem) = self.notify.as_ref().and_then(|n| n.problem()) {
            return Err(invalid("notify.webhook_url", problem));
        }
        if let Some((key, message)) = self.policy.problems(&self.targets).into_iter().next() {
            return Err(invalid(key, message));
        }
        Ok(())
    }

    /// The admission limits and timeouts (docs/security.md, "Limits").
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let ssh = &self.ssh;
        if ssh.preauth_timeout < Duration::from_secs(1) || ssh.preauth_timeout > Duration::from_secs(600) {
            return Err(invalid("ssh.preauth_timeout", "must be between 1s and 10m"));
        }
        if ssh.max_unauthenticated_per_source == 0 || ssh.max_unauthenticated_per_source > ssh.max_unauthenticated {
            return Err(invalid("ssh.max_unauthenticated_per_source", "must be between 1 and ssh.max_unauthenticated"));
        }
        if ssh.max_pending_sign_ins_per_source == 0 || ssh.max_pending_sign_ins_per_source > ssh.max_pending_sign_ins {
            return Err(invalid(
                "ssh.max_pending_sign_ins_per_source",
                "must be between 1 and ssh.max_pending_sign_ins",
            ));
        }
        if ssh.kex_algorithms.is_empty() {
            return Err(invalid("ssh.kex_algorithms", "offer at least one key exchange method"));
        }
        for (i, name) in ssh.kex_algorithms.iter().enumerate() {
            if !OFFERABLE_KEX.contains(&name.as_str()) {
                return Err(invalid(
                    format!("ssh.kex_algorithms[{i}]"),
                    format!("`{name}` is not offered (choose from {})", OFFERABLE_KEX.join(", ")),
                ));
            }
        }
        if self.gateway.refusal_audit_interval < Duration::from_secs(1)
            || self.gateway.refusal_audit_interval > Duration::from_secs(3600)
        {
            return Err(invalid("gateway.refusal_audit_interval", "must be between 1s and 1h"));
        }
        if let Some(api) = &self.api {
            if api.max_connections == 0 {
                return Err(invalid("api.max_connections", "must be at least 1"));
            }
            if api.max_connections_per_source == 0 || api.max_connections_per_source > api.max_connections {
                return Err(invalid("api.max_connections_per_source", "must be between 1 and api.max_connections"));
            }
            for (key, value) in [
                ("api.header_timeout", api.header_timeout),
                ("api.body_timeout", api.body_timeout),
                ("api.request_timeout", api.request_timeout),
            ] {
                if value < Duration::from_secs(1) || value > Duration::from_secs(600) {
                    return Err(invalid(key, "must be between 1s and 10m"));
                }
            }
            if api.body_timeout > api.request_timeout {
                return Err(invalid("api.body_timeout", "must not be longer than api.request_timeout"));
            }
            if api.max_body.0 < 1 << 10 || api.max_body.0 > 16 << 20 {
                return Err(invalid("api.max_body", "must be between 1KiB and 16MiB"));
            }
            if api.max_pending_sign_ins == 0 {
                return Err(invalid("api.max_pending_sign_ins", "must be at least 1"));
            }
            if api.max_pending_sign_ins_per_source == 0
                || api.max_pending_sign_ins_per_source > api.max_pending_sign_ins
            {
                return Err(invalid(
                    "api.max_pending_sign_ins_per_source",
                    "must be between 1 and api.max_pending_sign_ins",
                ));
            }
        }
        if let Some(rdp) = &self.rdp {
            if rdp.max_handshakes == 0 {
                return Err(invalid("rdp.max_handshakes", "must be at least 1"));
            }
            if rdp.max_handshakes_per_source == 0 || rdp.max_handshakes_per_source > rdp.max_handshakes {
                return Err(invalid("rdp.max_handshakes_per_source", "must be between 1 and rdp.max_handshakes"));
            }
        }
        Ok(())
    }

    fn validate_oidc(&self) -> Result<(), ConfigError> {
        let oidc = &self.oidc;
        let url = reqwest::Url::parse(&oidc.issuer).map_err(|e| invalid("oidc.issuer", format!("not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if !loopback || !oidc.allow_insecure_loopback_issuer {
                    return Err(invalid(
                        "oidc.issuer",
                        "must use https (plain http is accepted only on loopback with oidc.allow_insecure_loopback_issuer = true)",
                    ));
                }
            }
            other => return Err(invalid("oidc.issuer", format!("unsupported scheme `{other}`"))),
        }
        if oidc.client_id.is_empty() {
            return Err(invalid("oidc.client_id", "must not be empty"));
        }
        if oidc.client_secret_file.is_some() && oidc.client_secret_env.is_some() {
            return Err(invalid(
                "oidc.client_secret_file",
                "give either client_secret_file or client_secret_env, not both",
            ));
        }
        if !oidc.scopes.iter().any(|s| s == "openid") {
            return Err(invalid("oidc.scopes", "must include `openid`"));
        }
        Ok(())
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.admin.socket.clone().unwrap_or_else(|| self.gateway.state_dir.join("admin.sock"))
    }

    pub fn public_ssh_port(&self) -> u16 {
        self.ssh.public_port.unwrap_or(self.ssh.listen.port())
    }

    /// Where RDP clients reach the gateway (`host:port` for `.rdp` files).
    pub fn public_rdp_address(&self) -> Option<String> {
        let rdp = self.rdp.as_ref()?;
        Some(
            rdp.public_address.clone().unwrap_or_else(|| format!("{}:{}", self.gateway.public_host, rdp.listen.port())),
        )
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
