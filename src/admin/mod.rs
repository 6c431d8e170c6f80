//! The local admin socket: break-glass grant management and live sessions
//! for whoever holds the gateway's own account (or root) on its host.
//!
//! A Unix socket, mode 0600 in the 0700 state directory; each connection is
//! also checked by peer credentials. One JSON request per connection, one
//! JSON answer. Every change is an audit record naming the local account.

mod ops;
pub mod protocol;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use protocol::{Request, Response};

/// Largest request accepted (a grant with a long reason fits easily).
const MAX_REQUEST: usize = 64 << 10;

/// Binds the socket, replacing a stale one left by a crash.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        // A folder made here is the gateway's own (0700); an existing one (/run/...) keeps its mode:
        // the socket is 0600 and every peer is checked by its credentials anyway.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another gateway is running on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(gateway: Arc<Gateway>, listener: UnixListener, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(Arc::clone(&gateway), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The local account on the other end, if it may administer the gateway.
fn admin_account(stream: &UnixStream) -> Result<String, String> {
    let cred = stream.peer_cred().map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(u32::MAX);
    let uid = cred.uid();
    if uid != 0 && uid != me {
        return Err(format!("uid {uid} may not administer this gateway"));
    }
    Ok(format!("local:{}", user_name(uid).unwrap_or_else(|| format!("uid{uid}"))))
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

async fn handle(gateway: Arc<Gateway>, stream: UnixStream) {
    let response = match admin_account(&stream) {
        Ok(account) => {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
            let response = match reader.read_to_string(&mut line).await {
                Ok(_) if line.len() >= MAX_REQUEST => Response::error("request too large"),
                Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
                    Ok(request) => ops::execute(&gateway, &account, request).await,
                    Err(e) => Response::error(format!("malformed request: {e}")),
                },
                Err(e) => Response::error(format!("cannot read request: {e}")),
            };
            let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{\"ok\":false}".into());
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
            return;
        }
        Err(e) => {
            tracing::warn!(reason = %e, "admin socket connection refused");
            Response::error(e)
        }
    };
    let mut stream = stream;
    let _ = stream.write_all(serde_json::to_string(&response).unwrap_or_default().as_bytes()).await;
}

/// Sends one request to a running gateway.
pub async fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, String> {
    let mut stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("the gateway is not running (no admin socket at {})", socket.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("permission denied on {}: run this as the gateway's account or root", socket.display())
        }
        _ => format!("{}: {e}", socket.display()),
    })?;
    let text = serde_json::to_string(request).map_err(|e| e.to_string())?;
    stream.write_all(text.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.shutdown().await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(stream).lines();
    let line = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the gateway closed the connection without answering")?;
    let response: Response = serde_json::from_str(&line).map_err(|e| format!("unreadable answer: {e}"))?;
    if response.ok { Ok(response.data) } else { Err(response.error.unwrap_or_else(|| "request failed".into())) }
}
