//! Requests and answers on the admin socket (JSON, one line each way).

use serde::{Deserialize, Serialize};

use crate::store::Protocol;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    GrantAdd {
        user: String,
        target: String,
        protocol: Protocol,
        logins: Vec<String>,
        /// How long the grant lasts from its start.
        duration_secs: u64,
        /// Start later than now.
        #[serde(default)]
        starts_in_secs: u64,
        #[serde(default)]
        port_forwarding: bool,
        /// RDP redirections allowed: `clipboard`, `drives`.
        #[serde(default)]
        rdp_redirect: Vec<String>,
        reason: String,
    },
    GrantList {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        target: Option<String>,
        /// Include ended grants.
        #[serde(default)]
        all: bool,
    },
    GrantRevoke {
        id: String,
        reason: String,
    },
    Sessions,
    SessionKill {
        id: String,
        reason: String,
    },
    Recordings {
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// What the index and the audit log say about one recording (or all): `jit-gateway verify`.
    RecordingEvidence {
        #[serde(default)]
        recording: Option<String>,
    },
    /// Binds a client key to a person without a sign-in (automation, break-glass).
    KeyBind {
        user: String,
        #[serde(default)]
        login_name: Option<String>,
        /// OpenSSH public key line.
        public_key: String,
        duration_secs: u64,
    },
    KeyUnbind {
        public_key: String,
    },
}

fn default_limit() -> usize {
    50
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Response { ok: true, error: None, data }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response { ok: false, error: Some(message.into()), data: serde_json::Value::Null }
    }
}

/// A grant as listed: the record and its status now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantView {
    #[serde(flatten)]
    pub grant: crate::store::Grant,
    pub status: crate::store::GrantStatus,
}
