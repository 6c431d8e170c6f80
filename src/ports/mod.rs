//! Opening a target's port in the cloud firewall for the gateway, only while
//! a grant needs it.
//!
//! `PortOpener` is the small interface each backend implements: open a port
//! of a target for the gateway's own address until a time, close it, and
//! reconcile (remove what no lease explains). `Openings` decides *when*: a
//! port opens at a grant's first session, is shared by that grant's
//! sessions, and closes when the grant ends. The `none` backend is for
//! gateways that already reach their targets.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::TargetConfig;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{0}")]
    Backend(String),
}

/// What to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    pub lease_id: String,
    pub grant_id: String,
    pub target: String,
    pub port: u16,
    pub until_ms: i64,
}

/// What a backend opened (enough to close it again, even after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    pub lease_id: String,
    pub grant_id: String,
    pub target: String,
    pub port: u16,
    pub until_ms: i64,
    /// Backend-specific record (rule names, Azure request IDs).
    #[serde(default)]
    pub detail: serde_json::Value,
}

pub trait PortOpener: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn open<'a>(&'a self, target: &'a TargetConfig, request: &'a OpenRequest) -> BoxFuture<'a, Result<Opening, PortError>>;
    fn close<'a>(&'a self, opening: &'a Opening) -> BoxFuture<'a, Result<(), PortError>>;
}

/// The gateway reaches its targets without opening anything.
pub struct NoneOpener;

impl PortOpener for NoneOpener {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn open<'a>(&'a self, _target: &'a TargetConfig, request: &'a OpenRequest) -> BoxFuture<'a, Result<Opening, PortError>> {
        let opening = Opening {
            lease_id: request.lease_id.clone(),
            grant_id: request.grant_id.clone(),
            target: request.target.clone(),
            port: request.port,
            until_ms: request.until_ms,
            detail: serde_json::Value::Null,
        };
        Box::pin(async move { Ok(opening) })
    }

    fn close<'a>(&'a self, _opening: &'a Opening) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
}

/// When ports open and close: one opening per (grant, target), shared by the
/// grant's sessions, closed when the grant ends.
pub struct Openings {
    opener: Arc<dyn PortOpener>,
    open: Mutex<HashMap<String, Opening>>,
}

impl Openings {
    pub fn new(opener: Arc<dyn PortOpener>) -> Openings {
        Openings { opener, open: Mutex::new(HashMap::new()) }
    }

    pub fn kind(&self) -> &'static str {
        self.opener.kind()
    }

    /// Makes sure `target`'s SSH port is open for this grant; returns once it is.
    pub async fn ensure(&self, grant_id: &str, name: &str, target: &TargetConfig, until_ms: i64) -> Result<(), PortError> {
        let mut open = self.open.lock().await;
        if open.contains_key(grant_id) {
            return Ok(());
        }
        let request = OpenRequest {
            lease_id: crate::ids::new_id("p"),
            grant_id: grant_id.to_string(),
            target: name.to_string(),
            port: target.ssh_port,
            until_ms,
        };
        let opening = self.opener.open(target, &request).await?;
        open.insert(grant_id.to_string(), opening);
        Ok(())
    }

    /// Closes what a grant opened (it ended or was revoked).
    pub async fn release_grant(&self, grant_id: &str) -> Result<(), PortError> {
        let opening = self.open.lock().await.remove(grant_id);
        match opening {
            Some(o) => self.opener.close(&o).await,
            None => Ok(()),
        }
    }
}
