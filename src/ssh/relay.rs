//! Moving channels between the inner server (the user) and the upstream
//! client (the VM), in order, recording them as they pass.
//!
//! Each session channel gets one task with two loops: client → target
//! (data, EOF and requests, which start the recording) and target → client
//! (data, exit status, request answers). russh answers channel requests in
//! the inner server's callbacks; the target's real answer follows here: if it
//! refuses a shell, command or subsystem the user is told on stderr and the
//! channel closes, as OpenSSH itself would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf, Sig};

use super::upstream::Upstream;
use crate::config::SshConfig;
use crate::gateway::Gateway;
use crate::recording::{Recorder, RecordingMeta, Stream};
use crate::sessions::EndSignal;
use crate::store::{AuditEvent, RecordingKind};

/// What a channel task knows about its session.
#[derive(Clone)]
pub struct ChannelCtx {
    pub gateway: Arc<Gateway>,
    pub session_id: String,
    pub user: String,
    pub target: String,
    pub login: String,
    pub end: EndSignal,
    pub inner: russh::server::Handle,
}

pub fn env_allowed(ssh: &SshConfig, name: &str) -> bool {
    ssh.allowed_env.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    })
}

pub fn subsystem_allowed(ssh: &SshConfig, name: &str) -> bool {
    ssh.allowed_subsystems.iter().any(|s| s == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Pty,
    Shell,
    Exec,
    Subsystem,
}

#[derive(Default)]
struct Pty {
    term: String,
    cols: u32,
    rows: u32,
}

/// State the two directions share.
#[derive(Default)]
struct Shared {
    pty: Option<Pty>,
    recorder: Option<Arc<Recorder>>,
    /// Requests sent upstream with want_reply, oldest first.
    asked: VecDeque<Asked>,
}

type SharedState = Arc<Mutex<Shared>>;

fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A session channel for a user whose access was refused: say why and close.
pub async fn refuse_session(channel: Channel<russh::server::Msg>, message: String) {
    let text = format!("jit-gateway: {message}\r\n");
    let _ = channel.extended_data_bytes(1, Bytes::from(text)).await;
    let _ = channel.exit_status(255).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Opens the matching channel on the VM, then relays until either side closes
/// or the session is ended.
pub async fn session_channel(
    upstream: Arc<Upstream>,
    inner: Channel<russh::server::Msg>,
    reply: russh::server::ChannelOpenHandle,
    ctx: ChannelCtx,
) {
    let up = match upstream.handle.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("jit-gateway: {} did not open a session: {e}", ctx.target);
            reply.reject(russh::ChannelOpenFailure::Other { code: 2, reason }).await;
            return;
        }
    };
    reply.accept().await;
    let inner_id = inner.id();
    let (mut in_rx, in_tx) = inner.split();
    let (mut up_rx, up_tx) = up.split();
    let state: SharedState = Arc::default();

    let client_to_target = async {
        while let Some(msg) = in_rx.wait().await {
            if !client_message(msg, &up_tx, &state, &ctx).await {
                break;
            }
        }
    };
    let target_to_client = async {
        while let Some(msg) = up_rx.wait().await {
            if !target_message(msg, &in_tx, inner_id, &state, &ctx).await {
                break;
            }
        }
    };
    let recording_failed = async {
        loop {
            let recorder = lock(&state).recorder.clone();
            match recorder {
                Some(r) if r.fail_closed() => return r.failure().await,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    };
    tokio::pin!(client_to_target, target_to_client, recording_failed);
    tokio::select! {
        _ = &mut target_to_client => {}
        _ = &mut client_to_target => {
            // The client closed: close upstream and let the target's last words through.
            let _ = up_tx.close().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut target_to_client).await;
        }
        _ = ctx.end.ended() => {}
        failure = &mut recording_failed => ctx.end.end(recording_required(&failure)),
    }
    if ctx.end.is_ended() {
        tell_user(&in_tx, &state, &ctx.end.reason()).await;
    }
    let _ = up_tx.close().await;
    let _ = in_tx.eof().await;
    let _ = in_tx.close().await;
    // Dropping the last reference finishes the recording.
    lock(&state).recorder = None;
}

/// Writes why the session ends where the user will see it.
async fn tell_user(in_tx: &ChannelWriteHalf<russh::server::Msg>, state: &SharedState, reason: &str) {
    let pty = lock(state).pty.is_some();
    if pty {
        let text = format!("\r\n\r\n[jit-gateway] Session ended: {reason}.\r\n");
        let _ = in_tx.data_bytes(Bytes::from(text)).await;
    } else {
        let text = format!("jit-gateway: session ended: {reason}.\n");
        let _ = in_tx.extended_data_bytes(1, Bytes::from(text)).await;
    }
}

fn recording_required(failure: &crate::recording::RecordingFailed) -> String {
    format!("{failure}; the session was ended because recording is required")
}

/// Hands a chunk to the recorder; when the recording has failed (and is
/// required), ends the session and returns false.
async fn record(state: &SharedState, ctx: &ChannelCtx, stream: Stream, data: &Bytes) -> bool {
    let recorder = lock(state).recorder.clone();
    let Some(r) = recorder else { return true };
    match r.data(stream, data).await {
        Ok(()) => true,
        Err(failure) => {
            ctx.end.end(recording_required(&failure));
            false
        }
    }
}

/// Starts the channel's recording when it learns what the channel is.
async fn start_recording(state: &SharedState, ctx: &ChannelCtx, kind: RecordingKind, command: Option<String>) -> bool {
    if !ctx.gateway.config.recording.enabled {
        return true;
    }
    let (term, cols, rows) = match &lock(state).pty {
        Some(p) => (Some(p.term.clone()), p.cols, p.rows),
        None => (None, 80, 24),
    };
    let meta = RecordingMeta {
        session_id: ctx.session_id.clone(),
        user: ctx.user.clone(),
        target: ctx.target.clone(),
        login: ctx.login.clone(),
        kind,
        command,
        term,
        cols,
        rows,
        input_recorded: false,
    };
    match ctx.gateway.recordings.start(meta).await {
        Ok(r) => {
            lock(state).recorder = Some(Arc::new(r));
            true
        }
        Err(e) => {
            tracing::error!(session = %ctx.session_id, error = %e, "cannot start recording");
            if ctx.gateway.config.recording.fail_closed {
                ctx.end.end(
                    "the session recording could not be started; the session was ended because recording is required",
                );
                return false;
            }
            true
        }
    }
}

/// One message from the client. Returns false when the channel is done.
async fn client_message(
    msg: ChannelMsg,
    up: &ChannelWriteHalf<russh::client::Msg>,
    state: &SharedState,
    ctx: &ChannelCtx,
) -> bool {
    let ssh = &ctx.gateway.config.ssh;
    let sent = match msg {
        ChannelMsg::Data { data } => {
            if !record(state, ctx, Stream::Input, &data).await {
                return false;
            }
            up.data_bytes(data).await
        }
        ChannelMsg::ExtendedData { data, ext } => up.extended_data_bytes(ext, data).await,
        ChannelMsg::Eof => up.eof().await,
        ChannelMsg::Close => return false,
        ChannelMsg::RequestPty { term, col_width, row_height, pix_width, pix_height, terminal_modes, .. } => {
            {
                let mut s = lock(state);
                s.pty = Some(Pty { term: term.clone(), cols: col_width, rows: row_height });
                s.asked.push_back(Asked::Pty);
            }
            up.request_pty(true, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
        }
        ChannelMsg::RequestShell { .. } => {
            let kind = if lock(state).pty.is_some() { RecordingKind::Pty } else { RecordingKind::Exec };
            let command = (kind == RecordingKind::Exec).then(|| "(shell without a terminal)".to_string());
            if !start_recording(state, ctx, kind, command).await {
                return false;
            }
            lock(state).asked.push_back(Asked::Shell);
            up.request_shell(true).await
        }
        ChannelMsg::Exec { command, .. } => {
            let text = String::from_utf8_lossy(&command).into_owned();
            let kind = if lock(state).pty.is_some() { RecordingKind::Pty } else { RecordingKind::Exec };
            if !start_recording(state, ctx, kind, Some(text.clone())).await {
                return false;
            }
            ctx.gateway
                .audit(
                    AuditEvent::new(
                        "ssh.exec",
                        ctx.user.clone(),
                        serde_json::json!({"session": ctx.session_id, "login": ctx.login, "command": text}),
                    )
                    .on(ctx.target.clone()),
                )
                .await;
            lock(state).asked.push_back(Asked::Exec);
            up.exec(true, command).await
        }
        ChannelMsg::RequestSubsystem { name, .. } => {
            if !subsystem_allowed(ssh, &name) {
                return true; // already refused in the callback
            }
            let (kind, command) = if name == "sftp" {
                (RecordingKind::Sftp, None)
            } else {
                (RecordingKind::Exec, Some(format!("subsystem {name}")))
            };
            if !start_recording(state, ctx, kind, command).await {
                return false;
            }
            lock(state).asked.push_back(Asked::Subsystem);
            up.request_subsystem(true, &name).await
        }
        ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
            let recorder = {
                let mut s = lock(state);
                if let Some(p) = s.pty.as_mut() {
                    p.cols = col_width;
                    p.rows = row_height;
                }
                s.recorder.clone()
            };
            if let Some(r) = recorder {
                r.resize(col_width, row_height);
            }
            up.window_change(col_width, row_height, pix_width, pix_height).await
        }
        ChannelMsg::Signal { signal } => up.signal(signal).await,
        ChannelMsg::SetEnv { variable_name, variable_value, .. } if env_allowed(ssh, &variable_name) => {
            up.set_env(false, variable_name, variable_value).await
        }
        ChannelMsg::RequestX11 {
            single_connection,
            x11_authentication_protocol,
            x11_authentication_cookie,
            x11_screen_number,
            ..
        } if ssh.allow_x11_forwarding => {
            up.request_x11(
                false,
                single_connection,
                x11_authentication_protocol,
                x11_authentication_cookie,
                x11_screen_number,
            )
            .await
        }
        ChannelMsg::AgentForward { .. } if ssh.allow_agent_forwarding => up.agent_forward(false).await,
        _ => Ok(()),
    };
    sent.is_ok()
}

/// One message from the target. Returns false when the channel is done.
async fn target_message(
    msg: ChannelMsg,
    inner: &ChannelWriteHalf<russh::server::Msg>,
    inner_id: ChannelId,
    state: &SharedState,
    ctx: &ChannelCtx,
) -> bool {
    let sent = match msg {
        ChannelMsg::Data { data } => {
            if !record(state, ctx, Stream::Output, &data).await {
                return false;
            }
            inner.data_bytes(data).await
        }
        ChannelMsg::ExtendedData { data, ext } => {
            if ext == 1 && !record(state, ctx, Stream::Stderr, &data).await {
                return false;
            }
            inner.extended_data_bytes(ext, data).await
        }
        ChannelMsg::Eof => inner.eof().await,
        ChannelMsg::Close => return false,
        ChannelMsg::ExitStatus { exit_status } => {
            if let Some(r) = lock(state).recorder.as_ref() {
                r.exit_status(exit_status);
            }
            inner.exit_status(exit_status).await
        }
        ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
            if let Some(r) = lock(state).recorder.as_ref() {
                r.exit_signal(&signal_text(&signal_name));
            }
            let _ = ctx.inner.exit_signal_request(inner_id, signal_name, core_dumped, error_message, lang_tag).await;
            Ok(())
        }
        ChannelMsg::XonXoff { client_can_do } => {
            let _ = ctx.inner.xon_xoff_request(inner_id, client_can_do).await;
            Ok(())
        }
        ChannelMsg::Success => {
            lock(state).asked.pop_front();
            Ok(())
        }
        ChannelMsg::Failure => {
            let asked = lock(state).asked.pop_front();
            return refused_by_target(asked, inner, ctx).await;
        }
        _ => Ok(()),
    };
    sent.is_ok()
}

/// The target said no to something the gateway already said yes to.
async fn refused_by_target(
    asked: Option<Asked>,
    inner: &ChannelWriteHalf<russh::server::Msg>,
    ctx: &ChannelCtx,
) -> bool {
    let what = match asked {
        Some(Asked::Pty) => {
            let text = format!("jit-gateway: {} refused to allocate a terminal\r\n", ctx.target);
            let _ = inner.extended_data_bytes(1, Bytes::from(text)).await;
            return true;
        }
        Some(Asked::Shell) => "a shell",
        Some(Asked::Exec) => "the command",
        Some(Asked::Subsystem) => "the subsystem",
        None => return true,
    };
    let text = format!("jit-gateway: {} refused {what} for `{}`\r\n", ctx.target, ctx.login);
    let _ = inner.extended_data_bytes(1, Bytes::from(text)).await;
    let _ = inner.exit_status(255).await;
    false
}

fn signal_text(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// A `-L` forward through the target, if the grant allows it.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    upstream: Arc<Upstream>,
    inner: Channel<russh::server::Msg>,
    host: String,
    port: u32,
    originator: (String, u32),
    reply: russh::server::ChannelOpenHandle,
    ctx: ChannelCtx,
) {
    let up = match upstream.handle.channel_open_direct_tcpip(host.clone(), port, originator.0, originator.1).await {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("jit-gateway: {} could not open {host}:{port}: {e}", ctx.target);
            reply.reject(russh::ChannelOpenFailure::Other { code: 2, reason }).await;
            return;
        }
    };
    reply.accept().await;
    let destination = format!("{host}:{port}");
    ctx.gateway
        .audit(
            AuditEvent::new(
                "ssh.forward.opened",
                ctx.user.clone(),
                serde_json::json!({"session": ctx.session_id, "login": ctx.login, "destination": destination}),
            )
            .on(ctx.target.clone()),
        )
        .await;
    let (to_target, to_client) = tokio::select! {
        counts = pipe(inner, up) => counts,
        _ = ctx.end.ended() => (0, 0),
    };
    ctx.gateway
        .audit(
            AuditEvent::new(
                "ssh.forward.closed",
                ctx.user.clone(),
                serde_json::json!({"session": ctx.session_id, "destination": destination, "bytes_to_target": to_target, "bytes_to_client": to_client}),
            )
            .on(ctx.target.clone()),
        )
        .await;
}

/// Copies raw bytes both ways between two channels until both sides are
/// done. Returns the bytes moved from `a` to `b` and from `b` to `a`.
pub async fn pipe<A, B>(a: Channel<A>, b: Channel<B>) -> (u64, u64)
where
    A: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    B: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (mut a_rx, a_tx) = a.split();
    let (mut b_rx, b_tx) = b.split();
    async fn one_way<T>(rx: &mut russh::ChannelReadHalf, tx: &ChannelWriteHalf<T>) -> u64
    where
        T: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    {
        let mut moved = 0u64;
        while let Some(msg) = rx.wait().await {
            let ok = match msg {
                ChannelMsg::Data { data } => {
                    moved += data.len() as u64;
                    tx.data_bytes(data).await.is_ok()
                }
                ChannelMsg::Eof => tx.eof().await.is_ok(),
                ChannelMsg::Close => false,
                _ => true,
            };
            if !ok {
                break;
            }
        }
        let _ = tx.close().await;
        moved
    }
    tokio::join!(one_way(&mut a_rx, &b_tx), one_way(&mut b_rx, &a_tx))
}
