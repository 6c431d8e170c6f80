//! The command-line tools around the gateway. Output is a readable table by
//! default and JSON with `--json`; errors say what to do next.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use jit_gateway::admin::{self, protocol::GrantView, protocol::Request};
use jit_gateway::clock::{SystemClock, format_duration_ms, format_ms};
use jit_gateway::config::Config;
use jit_gateway::gateway::{self, Gateway, Listeners};
use jit_gateway::keys::{KeyMaterial, openssh_line};
use jit_gateway::replay::{self, ReplayOptions};
use jit_gateway::sessions::LiveSession;
use jit_gateway::store::{Protocol, RecordingRecord};
use tokio_util::sync::CancellationToken;

pub fn init_logging(serving: bool) {
    // Replay decodes recorded RDP with IronRDP, which warns about every update kind it skips: the summary counts them.
    let default =
        if serving { "info,russh=warn" } else { "warn,ironrdp_session=error,ironrdp_pdu=error,ironrdp_graphics=error" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A closed stderr (a log pipe that went away) must not turn every log line into a panic.
    // Field values are escaped: a newline in a name a client sent cannot forge a log line. Colours
    // only on a terminal, so a log file or journal holds no escape sequences at all.
    let _ = tracing_subscriber::fmt()
        .fmt_fields(jit_gateway::logging::EscapingFields)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false)
        .try_init();
}

pub(crate) fn load(config: &Path) -> Result<Config> {
    Config::load(config).map_err(|e| anyhow!("{e}\n(give the configuration with --config or JITGW_CONFIG)"))
}

/// Each session holds a few sockets; let the gateway use as many descriptors as the system allows.
fn raise_open_file_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-file limit");
            }
        }
    }
}

pub async fn serve(config_path: &Path) -> Result<()> {
    raise_open_file_limit();
    jit_gateway::memory::limit_arenas();
    let config = load(config_path)?;
    let listen = config.ssh.listen;
    let gateway = Gateway::open(config, Arc::new(SystemClock)).await?;
    let ssh = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (ssh.listen)"))?;
    let api = match gateway.config.api.as_ref().map(|a| a.listen) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (api.listen)"))?,
        ),
        None => None,
    };
    let rdp = match gateway.config.rdp.as_ref().map(|r| r.listen) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (rdp.listen)"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        stop.cancel();
        tracing::info!("stopping");
    });
    gateway::run(gateway, Listeners { ssh, api, rdp }, shutdown).await?;
    Ok(())
}

pub fn check_config(config_path: &Path) -> Result<()> {
    let config = load(config_path)?;
    println!("{}: valid", config_path.display());
    println!("  ssh listen     {}", config.ssh.listen);
    println!("  issuer         {}", config.oidc.issuer);
    println!("  state          {}", config.gateway.state_dir.display());
    println!("  certs          {}", config.gateway.certs_dir.display());
    println!("  recordings     {}", config.recording.dir.display());
    println!("  targets        {}", config.targets.keys().cloned().collect::<Vec<_>>().join(", "));
    Ok(())
}

#[derive(Args)]
pub struct SshConfigArgs {
    /// User name at the gateway (your identity provider user name or email).
    #[arg(long, default_value = "<you>")]
    user: String,
    /// Where the known_hosts lines are kept on the user's machine.
    #[arg(long, default_value = "~/.ssh/jit-gateway_known_hosts")]
    known_hosts: String,
    /// Also write the known_hosts lines to this file.
    #[arg(long)]
    write_known_hosts: Option<PathBuf>,
    /// Add `IdentityFile` (and `IdentitiesOnly yes`) to the gateway block.
    #[arg(long)]
    identity_file: Option<String>,
    /// Leave out connection sharing (ControlMaster).
    #[arg(long)]
    no_control_master: bool,
    /// Where ssh keeps the shared connection's socket.
    #[arg(long, default_value = "~/.ssh/jit-gateway-%C")]
    control_path: String,
}

pub fn ssh_config(config_path: &Path, args: SshConfigArgs) -> Result<()> {
    let config = load(config_path)?;
    let keys = KeyMaterial::load_or_generate(&config.gateway.certs_dir)?;
    let name = &config.gateway.name;
    let targets: Vec<&str> = config.targets.keys().map(String::as_str).collect();
    let known = keys.known_hosts_lines(name, targets.iter().copied());
    if let Some(path) = &args.write_known_hosts {
        std::fs::write(path, &known).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = format!(
        "# jit-gateway: put this near the top of ~/.ssh/config (ssh uses the first value it finds).\n\
         Host {name}\n    HostName {}\n    Port {}\n    User {}\n    HostKeyAlias {name}\n    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n",
        config.gateway.public_host,
        config.public_ssh_port(),
        args.user,
        args.known_hosts
    );
    if let Some(identity) = &args.identity_file {
        out.push_str(&format!("    IdentityFile {identity}\n    IdentitiesOnly yes\n"));
    }
    out.push_str("    # Sign-in instructions appear at LogLevel INFO (the default); ERROR and QUIET hide them.\n    LogLevel INFO\n    ServerAliveInterval 30\n");
    if !args.no_control_master {
        out.push_str(&format!(
            "    ControlMaster auto\n    ControlPath {}\n    ControlPersist 10m\n",
            args.control_path
        ));
    }
    if !targets.is_empty() {
        out.push_str(&format!(
            "\n# Targets reached through the gateway (`ssh -J {name} <login>@<target>` also works).\nHost {}\n    ProxyJump {name}\n    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n",
            targets.join(" "),
            args.known_hosts
        ));
    }
    out.push_str(&format!("\n# {} should contain:\n", args.known_hosts));
    for line in known.lines() {
        out.push_str(&format!("#   {line}\n"));
    }
    print!("{out}");
    Ok(())
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// The known_hosts lines users add (gateway host key and host CA).
    KnownHosts,
    /// What a VM needs to accept the gateway's user certificates.
    VmTrust,
}

pub fn ca(config_path: &Path, command: CaCommand) -> Result<()> {
    let config = load(config_path)?;
    let keys = KeyMaterial::load_or_generate(&config.gateway.certs_dir)?;
    match command {
        CaCommand::KnownHosts => {
            print!("{}", keys.known_hosts_lines(&config.gateway.name, config.targets.keys().map(String::as_str)))
        }
        CaCommand::VmTrust => print!(
            "# On each target VM, as root:\n\
             # 1. Save the gateway's target CA public key:\n\
             cat > /etc/ssh/jit-gateway-user-ca.pub <<'EOF'\n{} jit-gateway target CA\nEOF\n\
             # 2. Trust it in /etc/ssh/sshd_config:\n\
             TrustedUserCAKeys /etc/ssh/jit-gateway-user-ca.pub\n\
             # 3. Reload sshd:  systemctl reload ssh   (or sshd)\n\
             # The gateway's certificates name the login as principal, last {} and carry\n\
             # source-address = the gateway's own address, so they are useless anywhere else.\n",
            openssh_line(keys.target_ca_public()),
            format_duration_ms(config.ssh.upstream_certificate_ttl.as_millis() as i64)
        ),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Give a user time-limited access to a target.
    Add {
        #[arg(long)]
        user: String,
        #[arg(long)]
        target: String,
        /// Login names allowed on the target (repeat for several).
        #[arg(long = "login", required = true)]
        logins: Vec<String>,
        /// How long, e.g. 30m, 1h, 2h30m.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Start later, e.g. 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        starts_in: Option<Duration>,
        #[arg(long, default_value = "ssh")]
        protocol: Protocol,
        /// Allow `-L` forwards through the target.
        #[arg(long)]
        port_forwarding: bool,
        /// RDP: allow these redirections (clipboard, drives); others are dropped.
        #[arg(long = "allow-redirect", value_delimiter = ',')]
        rdp_redirect: Vec<String>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// List live and scheduled grants (`--all` includes ended ones).
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant; its live sessions end within seconds.
    Revoke {
        id: String,
        #[arg(long, default_value = "revoked by the administrator")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn call(config_path: &Path, request: Request) -> Result<serde_json::Value> {
    let config = load(config_path)?;
    admin::call(&config.admin_socket(), &request).await.map_err(|e| anyhow!(e))
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn grant_rows(grants: &[GrantView], now: i64) -> Vec<Vec<String>> {
    grants
        .iter()
        .map(|v| {
            let g = &v.grant;
            let when = match v.status {
                jit_gateway::store::GrantStatus::Live => {
                    format!("ends in {}", format_duration_ms(g.expires_at_ms - now))
                }
                jit_gateway::store::GrantStatus::Scheduled => {
                    format!("starts in {}", format_duration_ms(g.not_before_ms - now))
                }
                _ => format!("ended {}", format_ms(g.end_ms())),
            };
            vec![
                g.id.clone(),
                v.status.to_string(),
                g.user.clone(),
                g.target.clone(),
                g.protocol.to_string(),
                g.logins.join(","),
                when,
                g.reason.clone(),
            ]
        })
        .collect()
}

pub async fn grant(config_path: &Path, command: GrantCommand) -> Result<()> {
    let now = jit_gateway::clock::Clock::now_ms(&SystemClock);
    let headers = ["ID", "STATUS", "USER", "TARGET", "PROTO", "LOGINS", "WHEN", "REASON"];
    match command {
        GrantCommand::Add {
            user,
            target,
            logins,
            duration,
            starts_in,
            protocol,
            port_forwarding,
            rdp_redirect,
            reason,
            json,
        } => {
            let request = Request::GrantAdd {
                user,
                target,
                protocol,
                logins,
                duration_secs: duration.as_secs(),
                starts_in_secs: starts_in.map_or(0, |d| d.as_secs()),
                port_forwarding,
                rdp_redirect,
                reason,
            };
            let data = call(config_path, request).await?;
            if json {
                return print_json(&data);
            }
            let view: GrantView = serde_json::from_value(data)?;
            println!(
                "granted {} ({}): {} may reach {} as {} until {}",
                view.grant.id,
                view.status,
                view.grant.user,
                view.grant.target,
                view.grant.logins.join(", "),
                format_ms(view.grant.expires_at_ms)
            );
        }
        GrantCommand::List { user, target, all, json } => {
            let data = call(config_path, Request::GrantList { user, target, all }).await?;
            if json {
                return print_json(&data);
            }
            let grants: Vec<GrantView> = serde_json::from_value(data)?;
            if grants.is_empty() {
                println!("no {}grants", if all { "" } else { "live or scheduled " });
                return Ok(());
            }
            table(&headers, grant_rows(&grants, now));
        }
        GrantCommand::Revoke { id, reason, json } => {
            let data = call(config_path, Request::GrantRevoke { id, reason }).await?;
            if json {
                return print_json(&data);
            }
            let view: GrantView = serde_json::from_value(data)?;
            println!(
                "revoked {}: live sessions of {} on {} are being ended",
                view.grant.id, view.grant.user, view.grant.target
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Bind a client key to a person without a sign-in (automation runners, break-glass).
    Bind {
        #[arg(long)]
        user: String,
        /// The SSH user name the person types at the gateway (default: --user).
        #[arg(long)]
        login_name: Option<String>,
        /// The OpenSSH public key file.
        #[arg(long)]
        public_key: PathBuf,
        #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "12h")]
        duration: Duration,
    },
    /// Remove every binding of a key.
    Unbind {
        #[arg(long)]
        public_key: PathBuf,
    },
}

pub async fn key(config_path: &Path, command: KeyCommand) -> Result<()> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    match command {
        KeyCommand::Bind { user, login_name, public_key, duration } => {
            let data = call(
                config_path,
                Request::KeyBind {
                    user,
                    login_name,
                    public_key: read(&public_key)?,
                    duration_secs: duration.as_secs(),
                },
            )
            .await?;
            println!(
                "bound {} to {} until {}",
                data["fingerprint"].as_str().unwrap_or("?"),
                data["user"].as_str().unwrap_or("?"),
                format_ms(data["expires_ms"].as_i64().unwrap_or(0))
            );
        }
        KeyCommand::Unbind { public_key } => {
            let data = call(config_path, Request::KeyUnbind { public_key: read(&public_key)? }).await?;
            println!("removed {} binding(s)", data["removed"]);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct SessionsArgs {
    #[command(subcommand)]
    command: Option<SessionsCommand>,
    #[arg(long)]
    json: bool,
    /// Everyone's sessions (admins and auditors, through the API).
    #[arg(long)]
    all_users: bool,
    /// Use the local admin socket even when signed in to the API.
    #[arg(long)]
    local: bool,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// End a live session now.
    Kill {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn sessions(config_path: &Path, args: SessionsArgs) -> Result<()> {
    let via_api = !args.local && crate::cli_api::signed_in();
    if let Some(SessionsCommand::Kill { id, reason }) = args.command {
        if via_api {
            return crate::cli_api::kill(&id, &reason).await;
        }
        call(config_path, Request::SessionKill { id: id.clone(), reason }).await?;
        println!("ending session {id}");
        return Ok(());
    }
    let data = if via_api {
        crate::cli_api::sessions(args.all_users).await?
    } else {
        call(config_path, Request::Sessions).await?
    };
    if args.json {
        return print_json(&data);
    }
    let live: Vec<LiveSession> = serde_json::from_value(data)?;
    if live.is_empty() {
        println!("no live sessions");
        return Ok(());
    }
    let now = jit_gateway::clock::Clock::now_ms(&SystemClock);
    let rows = live
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.user.clone(),
                s.target.clone(),
                s.login.clone(),
                s.grant_id.clone(),
                s.client_ip.clone().unwrap_or_default(),
                format_duration_ms(now - s.started_ms),
            ]
        })
        .collect();
    table(&["SESSION", "USER", "TARGET", "LOGIN", "GRANT", "FROM", "FOR"], rows);
    Ok(())
}

#[derive(Args)]
pub struct RecordingsArgs {
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

fn size_text(bytes: Option<u64>) -> String {
    match bytes {
        None => "recording".into(),
        Some(b) if b < 10_000 => format!("{b} B"),
        Some(b) if b < 10_000_000 => format!("{} KiB", b / 1024),
        Some(b) => format!("{} MiB", b >> 20),
    }
}

pub async fn recordings(config_path: &Path, args: RecordingsArgs) -> Result<()> {
    let data = call(config_path, Request::Recordings { limit: args.limit }).await?;
    if args.json {
        return print_json(&data);
    }
    let list: Vec<RecordingRecord> = serde_json::from_value(data)?;
    if list.is_empty() {
        println!("no recordings yet");
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|r| {
            let duration = r.ended_ms.map(|e| format_duration_ms(e - r.started_ms)).unwrap_or_else(|| "live".into());
            let what = r.command.clone().or_else(|| r.note.clone()).unwrap_or_default();
            vec![
                r.id.clone(),
                r.kind.to_string(),
                r.user.clone(),
                r.target.clone(),
                r.login.clone(),
                format_ms(r.started_ms),
                duration,
                size_text(r.size),
                what.chars().take(60).collect(),
            ]
        })
        .collect();
    table(&["RECORDING", "KIND", "USER", "TARGET", "LOGIN", "STARTED", "DURATION", "SIZE", "COMMAND"], rows);
    Ok(())
}

#[derive(Args)]
pub struct ReplayArgs {
    /// Recording ID (from `jit-gateway recordings`) or file.
    recording: String,
    /// Playback speed (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Cut pauses longer than this, e.g. 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_idle: Option<Duration>,
    /// Print everything at once.
    #[arg(long)]
    instant: bool,
    /// RDP recordings: render the session to PNG frames in this folder.
    #[arg(long)]
    frames: Option<PathBuf>,
    /// RDP recordings: one frame per this much recorded time (with --frames or --video).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    every: Duration,
    /// RDP recordings: also make a video of the frames (needs ffmpeg).
    #[arg(long)]
    video: Option<PathBuf>,
}

/// The recordings directory, when a configuration is at hand.
pub(crate) fn recordings_dir(config_path: &Path) -> Option<PathBuf> {
    Config::load(config_path).ok().map(|c| c.recording.dir)
}

pub fn replay(config_path: &Path, args: ReplayArgs) -> Result<()> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    let path = replay::resolve(&args.recording, recordings_dir(config_path).as_deref())?;
    if path.extension().is_some_and(|e| e == "rdprec") {
        return replay_rdp(&path, &args);
    }
    if args.frames.is_some() || args.video.is_some() {
        bail!("--frames and --video are for RDP recordings; {} is a terminal recording", path.display());
    }
    let options = ReplayOptions { speed: args.speed, max_idle: args.max_idle, instant: args.instant };
    replay::replay(&path, &options, &mut std::io::stdout(), &mut std::io::stderr())?;
    Ok(())
}

fn replay_rdp(path: &Path, args: &ReplayArgs) -> Result<()> {
    if args.every < Duration::from_millis(10) {
        bail!("--every must be at least 10ms");
    }
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let scratch;
    let dir = match (&args.frames, &args.video) {
        (Some(d), _) => d.clone(),
        (None, Some(_)) => {
            scratch = tempfile_dir()?;
            scratch.clone()
        }
        (None, None) => {
            let parsed =
                jit_gateway::recording::rdp_format::read(&data).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let h = &parsed.header;
            println!(
                "RDP session {} of {} on {} as {}, started {}",
                h.session,
                h.user,
                h.target,
                h.login,
                format_ms(h.started_ms)
            );
            for r in parsed.records.iter().filter(|r| r.kind == jit_gateway::recording::rdp_format::EVENT) {
                println!("  +{:.3}s {}", r.at_us as f64 / 1e6, String::from_utf8_lossy(r.data));
            }
            println!("render it with --frames DIR (PNG) or --video out.mp4");
            return Ok(());
        }
    };
    let summary = jit_gateway::rdp::replay::render_frames(&data, &dir, args.every)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    println!(
        "{} frames ({}x{}) in {}: {} graphics updates decoded from {} PDUs ({} skipped), {:.1}s of session",
        summary.frames_written,
        summary.width,
        summary.height,
        dir.display(),
        summary.graphics_updates,
        summary.pdus,
        summary.pdus_skipped,
        summary.duration_ms as f64 / 1000.0
    );
    if summary.unverified_tail > 0 {
        println!(
            "warning: {} bytes at the end are past the last hash-chain link and were not rendered",
            summary.unverified_tail
        );
    }
    if let Some(video) = &args.video {
        jit_gateway::rdp::replay::frames_to_video(&dir, args.every, video).map_err(|e| anyhow!(e))?;
        println!("video: {}", video.display());
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(jit_gateway::ids::new_id("frames"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[derive(Subcommand)]
pub enum AzureCommand {
    /// What the gateway sees in Azure for each target: address, NSGs, and whether an opening matters.
    Check {
        #[arg(long)]
        json: bool,
    },
}

pub async fn azure(config_path: &Path, command: AzureCommand) -> Result<()> {
    let AzureCommand::Check { json } = command;
    let config = load(config_path)?;
    let az = config.azure.as_ref().ok_or_else(|| anyhow!("the configuration has no [azure] section"))?;
    let arm = jit_gateway::azure::Arm::new(az)?;
    let inventory = jit_gateway::azure::Inventory::new(config.targets.clone());
    let problems = inventory.refresh(&arm, &config.targets, &az.discover).await;
    let mut report = Vec::new();
    let mut warnings = Vec::new();
    for (name, target) in inventory.snapshot().iter() {
        let Some(vm) = &target.azure_vm else { continue };
        let Some(net) = inventory.network(name).await else {
            report.push(serde_json::json!({"target": name, "vm": vm, "error": "not resolved"}));
            continue;
        };
        let mut nsgs = Vec::new();
        for (role, nsg) in [("nic", &net.nic_nsg), ("subnet", &net.subnet_nsg)] {
            let Some(nsg) = nsg else { continue };
            match jit_gateway::azure::nsg_check(&arm, nsg, target.ssh_port, az.priority_range).await {
                Ok(check) => {
                    if check.deny_below.is_none() {
                        warnings.push(format!(
                            "{name}: the {role} NSG has no inbound Deny for port {} after the gateway's priorities ({}-{}): Azure's default AllowVnetInBound (65000) already lets the whole virtual network in, so opening the port changes nothing. Add a Deny rule for port {} at a priority above {}.",
                            target.ssh_port, az.priority_range[0], az.priority_range[1], target.ssh_port, az.priority_range[1]
                        ));
                    }
                    nsgs.push(serde_json::json!({"role": role, "nsg": nsg, "deny_below": check.deny_below, "gateway_rules": check.gateway_rules}));
                }
                Err(e) => nsgs.push(serde_json::json!({"role": role, "nsg": nsg, "error": e.to_string()})),
            }
        }
        if nsgs.is_empty() {
            warnings.push(format!(
                "{name}: neither its NIC nor its subnet has an NSG: nothing restricts port {}",
                target.ssh_port
            ));
        }
        report.push(serde_json::json!({"target": name, "vm": net.vm_id, "location": net.location, "private_ip": net.private_ip, "port": target.ssh_port, "nsgs": nsgs}));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"opener": az.opener, "gateway_ip": az.gateway_ip, "targets": report, "warnings": warnings, "problems": problems})
            )?
        );
        return Ok(());
    }
    println!("opener {:?}, gateway address {}", az.opener, az.gateway_ip);
    for t in &report {
        println!(
            "\n{}  {}:{}  {}",
            t["target"].as_str().unwrap_or("?"),
            t["private_ip"].as_str().unwrap_or("?"),
            t["port"],
            t["vm"].as_str().unwrap_or("?")
        );
        for n in t["nsgs"].as_array().into_iter().flatten() {
            let deny = n["deny_below"]
                .as_str()
                .map(|d| format!("deny underneath: {d}"))
                .unwrap_or_else(|| "NO deny rule underneath".into());
            println!(
                "  {:<7} {}  {}",
                n["role"].as_str().unwrap_or(""),
                n["nsg"].as_str().unwrap_or(""),
                n["error"].as_str().unwrap_or(&deny)
            );
        }
    }
    for w in warnings.iter().chain(problems.iter()) {
        println!("\nwarning: {w}");
    }
    Ok(())
}
