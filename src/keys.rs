//! Key material in `certs/` and everything minted from it: the gateway's own
//! host key, per-connection host certificates for target names (host CA),
//! short-lived user certificates toward VMs (target CA), and SSHSIG
//! signatures over recordings and the audit head (signing key).
//!
//! Missing keys are generated on first start with mode 0600 in a 0700
//! folder (a folder readable by others is narrowed to 0700). Like OpenSSH, a
//! private key that its group or others may read refuses the start, naming
//! the file (`read_private`). Private keys never leave this module except as `russh` needs them;
//! nothing here logs key bytes, only fingerprints.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding, SshSig};
use russh::keys::{Certificate, PrivateKey, PublicKey};

use crate::ids::random_bytes;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a usable OpenSSH private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("{path}: private key is accessible by others (mode {mode:04o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot mint certificate: {0}")]
    Mint(String),
    #[error("signature: {0}")]
    Signature(String),
}

/// The namespace of recording and audit signatures (`ssh-keygen -Y verify -n`).
pub const SIGNATURE_NAMESPACE: &str = "jit-gateway@audit";

pub struct KeyMaterial {
    dir: PathBuf,
    pub host_key: PrivateKey,
    host_ca: PrivateKey,
    target_ca: PrivateKey,
    signing_key: PrivateKey,
    /// Key behind the per-connection host certificates. It lives only as long
    /// as the process: the certificate, not the key, is what clients trust.
    inner_host_key: PrivateKey,
    /// HMAC key for the HTTPS API's session tokens.
    token_key: crate::secret::Secret<Vec<u8>>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What a certificate toward a VM allows, beyond the login itself.
#[derive(Debug, Clone, Default)]
pub struct UserCertificateRequest<'a> {
    pub login: &'a str,
    /// Shown in the VM's sshd log: `Accepted certificate ID "..."`.
    pub key_id: String,
    /// The gateway's own address on the connection to the VM (`source-address`).
    pub source_address: Option<std::net::IpAddr>,
    pub ttl: Duration,
    pub permit_pty: bool,
    pub permit_port_forwarding: bool,
    pub permit_agent_forwarding: bool,
    pub permit_x11_forwarding: bool,
}

impl KeyMaterial {
    /// Loads the keys in `dir`, generating the missing ones.
    pub fn load_or_generate(dir: &Path) -> Result<KeyMaterial, KeyError> {
        ensure_private_dir(dir)?;
        Ok(KeyMaterial {
            dir: dir.to_path_buf(),
            host_key: load_or_generate_key(&dir.join("ssh_host_ed25519_key"), "jit-gateway host key")?,
            host_ca: load_or_generate_key(&dir.join("host_ca_ed25519_key"), "jit-gateway host CA")?,
            target_ca: load_or_generate_key(&dir.join("target_ca_ed25519_key"), "jit-gateway target CA")?,
            signing_key: load_or_generate_key(&dir.join("signing_ed25519_key"), "jit-gateway signing key")?,
            inner_host_key: generate_ed25519("jit-gateway inner host key")?,
            token_key: crate::secret::Secret::new(load_or_generate_secret(&dir.join("api_token.key"))?),
        })
    }

    pub fn token_key(&self) -> &[u8] {
        self.token_key.expose()
    }

    /// The HTTPS certificate chain and key (PEM) in the certs folder: a
    /// self-signed certificate for `hosts`, made on first use.
    pub fn tls_identity(&self, hosts: &[String]) -> Result<(String, crate::secret::Secret<String>), KeyError> {
        let (cert_path, key_path) = (self.dir.join("tls.crt"), self.dir.join("tls.key"));
        if !cert_path.exists() || !key_path.exists() {
            let mint = |e: rcgen::Error| KeyError::Mint(format!("TLS certificate: {e}"));
            let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(mint)?;
            params.distinguished_name.push(rcgen::DnType::CommonName, "jit-gateway");
            let key = rcgen::KeyPair::generate().map_err(mint)?;
            let cert = params.self_signed(&key).map_err(mint)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem())
                .map_err(|source| KeyError::Io { path: cert_path.clone(), source })?;
            tracing::info!(path = %cert_path.display(), names = ?hosts, "generated a self-signed TLS certificate");
        }
        let cert = std::fs::read_to_string(&cert_path).map_err(|source| KeyError::Io { path: cert_path, source })?;
        Ok((cert, read_private(&key_path)?))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn host_ca_public(&self) -> &PublicKey {
        self.host_ca.public_key()
    }

    pub fn target_ca_public(&self) -> &PublicKey {
        self.target_ca.public_key()
    }

    pub fn signing_public(&self) -> &PublicKey {
        self.signing_key.public_key()
    }

    /// A host certificate for `target`, valid from a minute ago until `until`
    /// (capped at one day), presented on one inner connection.
    pub fn mint_host_certificate(
        &self,
        target: &str,
        until: SystemTime,
    ) -> Result<(PrivateKey, Certificate), KeyError> {
        let now = SystemTime::now();
        let until = until.min(now + Duration::from_secs(86400)).max(now + Duration::from_secs(60));
        let mut builder = certificate_builder(self.inner_host_key.public_key(), now - Duration::from_secs(60), until)?;
        builder
            .cert_type(CertType::Host)
            .and_then(|b| b.key_id(format!("jit-gateway host certificate for {target}")))
            .and_then(|b| b.valid_principal(target))
            .map_err(|e| KeyError::Mint(e.to_string()))?;
        let cert = builder.sign(&self.host_ca).map_err(|e| KeyError::Mint(e.to_string()))?;
        Ok((self.inner_host_key.clone(), cert))
    }

    /// A fresh key pair and a user certificate for it, signed by the target CA.
    pub fn mint_user_certificate(
        &self,
        req: &UserCertificateRequest<'_>,
    ) -> Result<(Arc<PrivateKey>, Certificate), KeyError> {
        let key = generate_ed25519("jit-gateway session key")?;
        let now = SystemTime::now();
        let mut builder = certificate_builder(key.public_key(), now - Duration::from_secs(60), now + req.ttl)?;
        let mint = |e: russh::keys::ssh_key::Error| KeyError::Mint(e.to_string());
        builder.cert_type(CertType::User).map_err(mint)?;
        builder.key_id(req.key_id.clone()).map_err(mint)?;
        builder.valid_principal(req.login).map_err(mint)?;
        if let Some(ip) = req.source_address {
            builder.critical_option("source-address", ip.to_string()).map_err(mint)?;
        }
        let extensions = [
            ("permit-pty", req.permit_pty),
            ("permit-port-forwarding", req.permit_port_forwarding),
            ("permit-agent-forwarding", req.permit_agent_forwarding),
            ("permit-X11-forwarding", req.permit_x11_forwarding),
        ];
        for (name, on) in extensions {
            if on {
                builder.extension(name, "").map_err(mint)?;
            }
        }
        let cert = builder.sign(&self.target_ca).map_err(mint)?;
        Ok((Arc::new(key), cert))
    }

    /// `ssh-keygen -Y sign` compatible signature (armored PEM) over `data`.
    pub fn sign(&self, data: &[u8]) -> Result<String, KeyError> {
        let sig = self
            .signing_key
            .sign(SIGNATURE_NAMESPACE, HashAlg::Sha512, data)
            .map_err(|e| KeyError::Signature(e.to_string()))?;
        sig.to_pem(LineEnding::LF).map_err(|e| KeyError::Signature(e.to_string()))
    }

    /// The `known_hosts` lines a user needs: the gateway's own key under its
    /// alias, and the host CA scoped to the inventory's names. With no names
    /// there is no CA line (a `*` would trust the host CA for every host),
    /// only a comment saying how to write one.
    pub fn known_hosts_lines<'a>(&self, gateway_name: &str, targets: impl IntoIterator<Item = &'a str>) -> String {
        let names: Vec<&str> = targets.into_iter().collect();
        let gateway = format!("{gateway_name} {}\n", openssh_line(self.host_key.public_key()));
        let ca = openssh_line(self.host_ca.public_key());
        if names.is_empty() {
            return format!(
                "{gateway}# No targets in the gateway's inventory yet, so no @cert-authority line: it must name the\n\
                 # targets, never `*` (that would trust the gateway's host CA for every host). Once you know them:\n\
                 # @cert-authority <target>[,<target>...] {ca}\n"
            );
        }
        format!("{gateway}@cert-authority {} {ca}\n", names.join(","))
    }
}

/// Verifies an armored SSHSIG over `data` made by `signer`.
pub fn verify_signature(signer: &PublicKey, data: &[u8], armored: &str) -> Result<(), KeyError> {
    let sig = SshSig::from_pem(armored).map_err(|e| KeyError::Signature(e.to_string()))?;
    signer.verify(SIGNATURE_NAMESPACE, data, &sig).map_err(|e| KeyError::Signature(format!("does not verify: {e}")))
}

/// `ssh-ed25519 AAAA...` without the comment.
pub fn openssh_line(key: &PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh().map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn certificate_builder(key: &PublicKey, from: SystemTime, until: SystemTime) -> Result<Builder, KeyError> {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut nonce = [0u8; 32];
    random_bytes(&mut nonce);
    let mut builder = Builder::new(nonce.to_vec(), key.key_data().clone(), secs(from), secs(until))
        .map_err(|e| KeyError::Mint(e.to_string()))?;
    let mut serial = [0u8; 8];
    random_bytes(&mut serial);
    builder.serial(u64::from_be_bytes(serial)).map_err(|e| KeyError::Mint(e.to_string()))?;
    Ok(builder)
}

pub fn generate_ed25519(comment: &str) -> Result<PrivateKey, KeyError> {
    let mut seed = [0u8; 32];
    random_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    Ok(key)
}

/// Creates `dir` (0700) or narrows an existing one to 0700: the keys in it
/// are 0600 anyway, but their names and count are nobody else's business.
pub fn ensure_private_dir(dir: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: dir.to_path_buf(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let mode = fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        tracing::warn!(path = %dir.display(), mode = format!("{mode:04o}"), "narrowed a private folder to mode 0700");
    }
    Ok(())
}

/// Reads a private key file (PEM, OpenSSH or hex), refusing one that its
/// group or others may access, as OpenSSH does. The mode is read from the
/// open file, so a swap between check and read cannot slip through.
pub fn read_private(path: &Path) -> Result<crate::secret::Secret<String>, KeyError> {
    use std::io::Read;
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    let mut file = fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen { path: path.to_path_buf(), mode });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    Ok(crate::secret::Secret::new(text))
}

fn load_or_generate_key(path: &Path, comment: &str) -> Result<PrivateKey, KeyError> {
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    match read_private(path) {
        Ok(text) => PrivateKey::from_openssh(text.expose().trim())
            .map_err(|e| KeyError::BadKey { path: path.to_path_buf(), message: e.to_string() }),
        Err(KeyError::Io { source: e, .. }) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_ed25519(comment)?;
            let pem = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| KeyError::BadKey { path: path.to_path_buf(), message: e.to_string() })?;
            // create_new: two processes starting at once must not overwrite each other's key.
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                Ok(mut f) => {
                    f.write_all(pem.as_bytes()).and_then(|_| f.sync_all()).map_err(io)?;
                    let public = format!("{}\n", openssh_line(key.public_key()) + " " + comment);
                    write_public(&PathBuf::from(format!("{}.pub", path.display())), &public).map_err(io)?;
                    tracing::info!(path = %path.display(), fingerprint = %fingerprint(key.public_key()), "generated key");
                    Ok(key)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_generate_key(path, comment),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)
}

/// 32 random bytes kept hex-encoded in a 0600 file.
fn load_or_generate_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    match read_private(path) {
        Ok(text) => data_encoding::HEXLOWER
            .decode(text.expose().trim().as_bytes())
            .map_err(|e| KeyError::BadKey { path: path.to_path_buf(), message: e.to_string() }),
        Err(KeyError::Io { source: e, .. }) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            random_bytes(&mut key);
            match write_private(path, data_encoding::HEXLOWER.encode(&key).as_bytes()) {
                Ok(()) => Ok(key),
                Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_generate_secret(path)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn write_public(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
