//! The records the gateway keeps: identities, key bindings, grants, sessions,
//! recordings and audit events. Plain data with serde; times are Unix
//! milliseconds from the injected clock. Status is derived from time, never
//! stored twice (a grant is "expired" because `now >= expires_at_ms`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Ssh,
    Rdp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Ssh => "ssh",
            Protocol::Rdp => "rdp",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ssh" => Ok(Protocol::Ssh),
            "rdp" => Ok(Protocol::Rdp),
            other => Err(format!("unknown protocol `{other}` (ssh or rdp)")),
        }
    }
}

/// A person as the identity provider vouched for them at their last sign-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable key: derived from issuer and subject.
    pub id: String,
    pub issuer: String,
    pub subject: String,
    /// Value of the configured user claim (email by default): how grants name people.
    pub user: String,
    /// Value of the login-name claim (`preferred_username`), if the provider sent one.
    pub login_name: Option<String>,
    pub display_name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub first_seen_ms: i64,
    pub last_sign_in_ms: i64,
}

impl Identity {
    pub fn id_for(issuer: &str, subject: &str) -> String {
        let digest = crate::secret::sha256_hex(format!("{issuer}\n{subject}").as_bytes());
        format!("oidc-{}", &digest[..24])
    }

    /// True when `name` is what this person may type as the SSH user at the gateway.
    pub fn answers_to(&self, name: &str) -> bool {
        self.user.eq_ignore_ascii_case(name) || self.login_name.as_deref().is_some_and(|l| l == name)
    }
}

/// The issuer of identities the local admin creates for automation keys; their
/// names are not pinned (the admin names them deliberately).
pub const LOCAL_ADMIN_ISSUER: &str = "local-admin";

/// What `Store::record_sign_in` did.
#[derive(Debug, Clone, PartialEq)]
pub enum SignInRecord {
    /// The identity as stored (first-seen time preserved).
    Recorded(Identity),
    /// The user name belongs to another identity (its ID); nothing was written.
    NameTaken { owner: String },
}

/// A client public key bound to an identity after a sign-in, for a limited time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyBinding {
    /// `SHA256:...` fingerprint of the client key.
    pub fingerprint: String,
    pub identity_id: String,
    pub user: String,
    pub algorithm: String,
    pub bound_at_ms: i64,
    pub expires_at_ms: i64,
    pub client_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    pub at_ms: i64,
    pub by: String,
    pub reason: String,
}

/// Permission for one user to reach one target over one protocol, as given
/// logins, inside a time window. Requests and approvals (a later workflow)
/// produce grants of this same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    /// The user, as the configured user claim names them (e.g. `alice@example.test`).
    pub user: String,
    pub target: String,
    pub protocol: Protocol,
    /// Login names on the target this grant allows.
    pub logins: Vec<String>,
    /// Whether `-L` forwards through the target are allowed.
    #[serde(default)]
    pub port_forwarding: bool,
    /// RDP redirections allowed (`clipboard`, `drives`); everything else is dropped.
    #[serde(default)]
    pub rdp_redirect: Vec<String>,
    pub not_before_ms: i64,
    pub expires_at_ms: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at_ms: i64,
    /// The access request this grant came from, when it came from one.
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub approved_by: Vec<String>,
    #[serde(default)]
    pub revocation: Option<Revocation>,
    /// When the gateway processed the grant's end (sessions closed, audit written).
    #[serde(default)]
    pub ended_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantStatus {
    /// Approved, but its window has not started.
    Scheduled,
    Live,
    Expired,
    Revoked,
}

impl std::fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GrantStatus::Scheduled => "scheduled",
            GrantStatus::Live => "live",
            GrantStatus::Expired => "expired",
            GrantStatus::Revoked => "revoked",
        })
    }
}

impl Grant {
    pub fn status(&self, now_ms: i64) -> GrantStatus {
        if self.revocation.is_some() {
            GrantStatus::Revoked
        } else if now_ms >= self.expires_at_ms {
            GrantStatus::Expired
        } else if now_ms < self.not_before_ms {
            GrantStatus::Scheduled
        } else {
            GrantStatus::Live
        }
    }

    /// When the grant stopped or stops being usable.
    pub fn end_ms(&self) -> i64 {
        self.revocation.as_ref().map_or(self.expires_at_ms, |r| r.at_ms.min(self.expires_at_ms))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at_ms: i64,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Cancelled,
    /// Nobody decided before `expires_ms`.
    Lapsed,
}

impl std::fmt::Display for RequestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Cancelled => "cancelled",
            RequestState::Lapsed => "lapsed",
        })
    }
}

/// Someone asking for access, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: String,
    pub requester: String,
    pub requester_roles: Vec<String>,
    pub target: String,
    pub protocol: Protocol,
    pub logins: Vec<String>,
    #[serde(default)]
    pub port_forwarding: bool,
    pub duration_secs: u64,
    #[serde(default)]
    pub starts_at_ms: Option<i64>,
    pub reason: String,
    pub created_ms: i64,
    /// A pending request lapses at this time.
    pub expires_ms: i64,
    /// The policy rule it was requested under, and what that rule asks for.
    pub rule: String,
    pub approver_roles: Vec<String>,
    pub approvals_needed: u32,
    #[serde(default)]
    pub approvals: Vec<Decision>,
    #[serde(default)]
    pub denial: Option<Decision>,
    #[serde(default)]
    pub cancelled: Option<Decision>,
    #[serde(default)]
    pub auto_approved: bool,
    /// The grant an approval produced.
    #[serde(default)]
    pub grant_id: Option<String>,
}

impl AccessRequest {
    pub fn state(&self, now_ms: i64) -> RequestState {
        if self.grant_id.is_some() {
            RequestState::Approved
        } else if self.denial.is_some() {
            RequestState::Denied
        } else if self.cancelled.is_some() {
            RequestState::Cancelled
        } else if now_ms >= self.expires_ms {
            RequestState::Lapsed
        } else {
            RequestState::Pending
        }
    }
}

/// A session at the HTTPS API, created by `jit-gateway login`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiSession {
    /// Random identifier carried in the token (the token itself is never stored).
    pub id: String,
    pub identity_id: String,
    pub user: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    #[serde(default)]
    pub revoked: bool,
}

/// When a person's sign-in was last confirmed with the identity provider, and
/// the provider's refresh token to confirm it again (`signin.revalidate`). The
/// token is a credential: it lives only here (the store is 0600) and never
/// reaches a log, the audit or an API answer.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityCheck {
    pub identity_id: String,
    pub checked_ms: i64,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for IdentityCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCheck")
            .field("identity_id", &self.identity_id)
            .field("checked_ms", &self.checked_ms)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A port opening in a cloud firewall, written before the cloud call so a
/// crash never leaves an opening nobody knows about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub grant_id: String,
    pub target: String,
    pub port: u16,
    /// `azure-nsg`, `azure-defender-jit`, ...
    pub backend: String,
    pub created_ms: i64,
    /// The opening never outlives this (the grant's end).
    pub until_ms: i64,
    /// When the last session using it ended; it closes after the linger.
    #[serde(default)]
    pub idle_since_ms: Option<i64>,
    /// Set once the backend confirmed the opening.
    #[serde(default)]
    pub opened_ms: Option<i64>,
    /// What the backend created (rule names, NSG IDs, request IDs).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// One inner SSH connection (one `ssh -J` hop) or one RDP connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub user: String,
    pub target: String,
    pub protocol: Protocol,
    pub login: String,
    pub grant_id: String,
    pub client_ip: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordingKind {
    /// A terminal session (asciicast v2).
    Pty,
    /// A command without a terminal: command line, exit status, compressed output.
    Exec,
    /// An sftp (or scp over sftp) session: file operations.
    Sftp,
    /// An RDP connection: the decrypted stream both ways, hash-chained.
    Rdp,
}

impl std::fmt::Display for RecordingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordingKind::Pty => "pty",
            RecordingKind::Exec => "exec",
            RecordingKind::Sftp => "sftp",
            RecordingKind::Rdp => "rdp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingRecord {
    pub id: String,
    pub session_id: String,
    pub kind: RecordingKind,
    pub user: String,
    pub target: String,
    pub login: String,
    /// File name inside the recordings directory.
    pub file: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// Size and SHA-256 of the sealed file.
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub command: Option<String>,
    pub exit_status: Option<u32>,
    /// Bytes from the client and from the target on this channel.
    pub bytes_from_client: u64,
    pub bytes_from_target: u64,
    /// Set when the recording could not keep everything (a write error, or data past a cap).
    pub note: Option<String>,
    /// Written with a per-flush hash chain (false for recordings made before chains existed).
    #[serde(default)]
    pub chained: bool,
}

/// One line of the audit log. `hash` covers everything else in the record,
/// including `prev_hash`, so the log is a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    #[serde(default)]
    pub target: Option<String>,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// What callers hand to the audit log; the store numbers and chains it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub kind: &'static str,
    pub actor: String,
    pub target: Option<String>,
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(kind: &'static str, actor: impl Into<String>, details: serde_json::Value) -> Self {
        AuditEvent { kind, actor: actor.into(), target: None, details }
    }

    pub fn on(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(nb: i64, exp: i64) -> Grant {
        Grant {
            id: "g-1".into(),
            user: "alice@example.test".into(),
            target: "vm1".into(),
            protocol: Protocol::Ssh,
            logins: vec!["admin".into()],
            port_forwarding: false,
            rdp_redirect: Vec::new(),
            not_before_ms: nb,
            expires_at_ms: exp,
            reason: "test".into(),
            created_by: "admin".into(),
            created_at_ms: 0,
            request_id: None,
            approved_by: vec![],
            revocation: None,
            ended_ms: None,
        }
    }

    #[test]
    fn status_follows_time_and_revocation() {
        let mut g = grant(100, 200);
        assert_eq!(g.status(50), GrantStatus::Scheduled);
        assert_eq!(g.status(100), GrantStatus::Live);
        assert_eq!(g.status(200), GrantStatus::Expired);
        g.revocation = Some(Revocation { at_ms: 150, by: "bob".into(), reason: "done".into() });
        assert_eq!(g.status(120), GrantStatus::Revoked);
        assert_eq!(g.end_ms(), 150);
    }

    #[test]
    fn identities_answer_to_their_names() {
        let id = Identity {
            id: Identity::id_for("https://idp", "u1"),
            issuer: "https://idp".into(),
            subject: "u1".into(),
            user: "alice@example.test".into(),
            login_name: Some("alice".into()),
            display_name: None,
            groups: vec![],
            first_seen_ms: 0,
            last_sign_in_ms: 0,
        };
        assert!(id.answers_to("alice"));
        assert!(id.answers_to("Alice@Example.test"));
        assert!(!id.answers_to("bob"));
        assert_ne!(Identity::id_for("https://idp", "u1"), Identity::id_for("https://other", "u1"));
    }
}
