//! Giving memory back after load. With glibc, freed memory stays in malloc's
//! per-thread arenas; after hundreds of sessions close, the gateway would keep
//! tens of MiB it no longer uses. Arenas are bounded at start, and when the
//! number of live sessions has dropped, free memory is returned to the system.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::sessions::SessionRegistry;

/// At most this many malloc arenas (glibc's default is 8 per core).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    // SAFETY: mallopt only changes allocator tuning; called before the runtime's threads allocate much.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Every 30 s, if fewer sessions are live than at the last look, returns free memory.
pub async fn housekeeping(sessions: Arc<SessionRegistry>, shutdown: CancellationToken) {
    let mut last = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = sessions.list().len();
        if now < last {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
        last = now;
    }
}
