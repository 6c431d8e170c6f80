//! Sessions through `-J`: commands, terminals, forwards, multiplexing, and
//! sessions ending when their grant does.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::World;
use crate::support::{self, Client, LOGIN, eventually, text};

/// A terminal (tmux on a private socket) running one command.
///
/// The command's exit status is printed on the screen by the shell that runs
/// it: tmux 3.3 can close a pane before it has reaped its process, and then
/// never reports the status (the process stays a zombie).
pub struct Tmux {
    socket: String,
}

const EXITED: &str = "[command exited with status ";

impl Tmux {
    pub fn start(command: &str, cols: u16, rows: u16) -> Tmux {
        let socket = format!("jitgw-{}", jit_gateway::ids::new_id("t"));
        let ok = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
                &format!("{command}; echo \"{EXITED}$?]\""),
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        let _ = Command::new("tmux").args(["-L", &socket, "set-option", "-g", "remain-on-exit", "on"]).status();
        Tmux { socket }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-t", "0"])
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        self.tmux(&["resize-window", "-t", "0", "-x", &cols.to_string(), "-y", &rows.to_string()]);
    }

    /// Whether the command has ended.
    pub fn ended(&self) -> bool {
        self.tmux(&["display-message", "-p", "-t", "0", "#{pane_dead}"]).trim() == "1"
    }

    /// The exit status of the command, once it has ended.
    pub fn exit_status(&self) -> Option<i32> {
        let screen = self.screen();
        let at = screen.rfind(EXITED)? + EXITED.len();
        let end = screen[at..].find(']')? + at;
        screen[at..end].parse().ok()
    }

    pub async fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        eventually(limit, || self.screen().contains(needle)).await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

pub fn interactive(client: &Client) -> String {
    format!("ssh -F {} -J jit-gateway {LOGIN}@vm1", client.config.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_get_stdin_stdout_stderr_and_their_exit_status() {
    let Some(w) = World::new("").await else { return };
    let input = b"line one\nline two\n";
    let out = w.alice.exec("vm1", "cat; echo to-stderr >&2; whoami; exit 3", Some(input)).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("line one\nline two\n{LOGIN}\n"));
    assert!(text(&out.stderr).contains("to-stderr"));
    assert!(
        w.sshd.log().contains("Accepted certificate ID \"jit-gateway user=alice@example.test"),
        "certificate login on the VM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_session_resizes_interrupts_and_exits_with_its_status() {
    if !support::need("tmux") {
        return;
    }
    let Some(w) = World::new("").await else { return };
    let term = Tmux::start(&interactive(&w.alice), 100, 30);
    assert!(term.wait_for("$", Duration::from_secs(15)).await, "a prompt: {}", term.screen());
    term.send(&["stty size", "Enter"]);
    assert!(term.wait_for("30 100", Duration::from_secs(5)).await, "{}", term.screen());
    term.resize(120, 40);
    tokio::time::sleep(Duration::from_millis(300)).await;
    term.send(&["clear; stty size", "Enter"]);
    assert!(term.wait_for("40 120", Duration::from_secs(5)).await, "after resize: {}", term.screen());
    term.send(&["sleep 60", "Enter"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    term.send(&["C-c"]);
    term.send(&["echo interrupted-$?", "Enter"]);
    assert!(
        term.wait_for("interrupted-130", Duration::from_secs(5)).await,
        "Ctrl-C reaches the target: {}",
        term.screen()
    );
    term.send(&["exit 5", "Enter"]);
    assert!(
        eventually(Duration::from_secs(10), || term.exit_status().is_some()).await,
        "the session ends: {}",
        term.screen()
    );
    assert_eq!(term.exit_status(), Some(5), "{}", term.screen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_grant_ends_its_live_session_within_two_seconds_with_a_message() {
    if !support::need("tmux") {
        return;
    }
    let Some(w) = World::new("").await else { return };
    let term = Tmux::start(&interactive(&w.alice), 120, 30);
    assert!(term.wait_for("$", Duration::from_secs(15)).await, "{}", term.screen());
    let listed = w.gw.cli(&["sessions"]).await;
    assert!(text(&listed.stdout).contains(&w.grant), "{}", text(&listed.stdout));

    let revoke = w.gw.cli(&["grant", "revoke", &w.grant, "--reason", "incident closed"]).await;
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    let revoked_at = Instant::now();
    let ended = eventually(Duration::from_secs(2), || term.ended()).await;
    let took = revoked_at.elapsed();
    assert!(ended, "the session must end within 2 s of the revocation (screen: {})", term.screen());
    let screen = term.screen();
    assert!(screen.contains("Session ended: your grant") && screen.contains("was revoked by local:"), "{screen}");
    assert!(screen.contains("incident closed"), "{screen}");
    eprintln!("session ended {took:?} after the revocation");

    let again = w.alice.exec("vm1", "true", None).await;
    assert!(text(&again.stderr).contains("was revoked"), "{}", text(&again.stderr));
    assert!(w.gw.gateway.sessions.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_grant_ends_its_session() {
    if !support::need("tmux") {
        return;
    }
    let Some(w) = World::new("").await else { return };
    // Only the short grant should apply.
    let revoke = w.gw.cli(&["grant", "revoke", &w.grant, "--reason", "replaced"]).await;
    assert!(revoke.status.success());
    let short = w.gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(4)).await;
    let granted_at = Instant::now();
    let term = Tmux::start(&interactive(&w.alice), 120, 30);
    assert!(term.wait_for("$", Duration::from_secs(15)).await, "{}", term.screen());
    assert!(eventually(Duration::from_secs(10), || term.ended()).await, "{}", term.screen());
    let lived = granted_at.elapsed();
    assert!(term.screen().contains(&format!("your grant {short} for vm1 has expired")), "{}", term.screen());
    assert!(lived >= Duration::from_secs(4), "not before the grant's end");
    eprintln!("session ended {:?} after the grant's end", lived - Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_master_connections_multiplex_sessions() {
    let Some(w) = World::new("").await else { return };
    let control = w.alice.dir.join("cm-%C");
    let options = format!("  ControlMaster auto\n  ControlPath {}\n  ControlPersist 30\n", control.display());
    let shared = Client::new(&w.gw, "alice", &options);
    w.gw.bind_key(&shared.public_key, "alice@example.test", "alice").await;
    for i in 0..3 {
        let out = shared.exec("vm1", &format!("echo run-{i}"), None).await;
        assert_eq!(text(&out.stdout).trim(), format!("run-{i}"), "{}", text(&out.stderr));
    }
    let check = shared.ssh(&["-O", "check", "jit-gateway"], None).await;
    assert!(check.status.success(), "the master connection is up: {}", text(&check.stderr));

    // Multiplexing on the target side: several sessions over one inner connection.
    let target_options =
        format!("Host vm1\n  ControlMaster auto\n  ControlPath {}/vm1-%C\n  ControlPersist 30\n", shared.dir.display());
    let mut config = std::fs::read_to_string(&shared.config).unwrap();
    config = format!("{target_options}{config}");
    std::fs::write(&shared.config, config).unwrap();
    for i in 0..2 {
        let out = shared.exec("vm1", &format!("echo inner-{i}"), None).await;
        assert_eq!(text(&out.stdout).trim(), format!("inner-{i}"), "{}", text(&out.stderr));
    }
    let _ = shared.ssh(&["-O", "exit", "jit-gateway"], None).await;
    let _ = shared.ssh(&["-O", "exit", &format!("{LOGIN}@vm1")], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_through_the_target_need_a_grant_that_allows_them() {
    let Some(w) = World::new("").await else { return };
    let through = format!("127.0.0.1:{}", w.sshd.port);
    let destination = format!("{LOGIN}@vm1");
    let refused = w.alice.ssh(&["-o", "BatchMode=yes", "-J", "jit-gateway", "-W", &through, &destination], None).await;
    assert!(text(&refused.stderr).contains("does not allow port forwarding"), "{}", text(&refused.stderr));

    let revoke = w.gw.cli(&["grant", "revoke", &w.grant, "--reason", "replaced"]).await;
    assert!(revoke.status.success());
    w.gw.grant_with("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(600), true).await;
    // -W asks the target to connect onward: here, to its own sshd, whose banner comes back.
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.arg("-F").arg(&w.alice.config).args(["-o", "BatchMode=yes", "-J", "jit-gateway", "-W", &through, &destination]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = vec![0u8; 8];
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(Duration::from_secs(20), stdout.read_exact(&mut banner))
        .await
        .expect("banner in time")
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0-", "the forward reached the target's own sshd");
    let _ = child.kill().await;
}

/// Runs `command` on vm1 with `ssh -A` and a fresh agent holding the client's key.
async fn with_forwarded_agent(client: &Client, command: &str) -> std::process::Output {
    let agent_socket = client.dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent").arg("-D").arg("-a").arg(&agent_socket).spawn().unwrap();
    assert!(eventually(Duration::from_secs(5), || agent_socket.exists()).await);
    let added = Command::new("ssh-add").env("SSH_AUTH_SOCK", &agent_socket).arg(&client.key).output().unwrap();
    assert!(added.status.success(), "{}", text(&added.stderr));
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.env("SSH_AUTH_SOCK", &agent_socket).arg("-F").arg(&client.config).args([
        "-A",
        "-o",
        "BatchMode=yes",
        "-J",
        "jit-gateway",
        &format!("{LOGIN}@vm1"),
        command,
    ]);
    let out = support::run(&mut cmd, None, Duration::from_secs(30)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_forwarding_works_when_configured() {
    if !support::need("ssh-agent") || !support::need("ssh-add") || !support::need("/usr/sbin/sshd") {
        return;
    }
    let prepared = support::prepare();
    let sshd = support::Sshd::start(&prepared.target_ca);
    let options = support::GwOptions { sshd_port: Some(sshd.port), ..Default::default() }
        .with_ssh("allow_agent_forwarding = true");
    let gw = support::Gw::start(prepared, options).await;
    let alice = Client::new(&gw, "alice", "");
    gw.bind_key(&alice.public_key, "alice@example.test", "alice").await;
    gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(600)).await;
    let out = with_forwarded_agent(&alice, "ssh-add -l").await;
    let listed = text(&out.stdout);
    let fingerprint =
        jit_gateway::keys::fingerprint(&russh::keys::PublicKey::from_openssh(alice.public_key.trim()).unwrap());
    assert!(listed.contains(&fingerprint), "the client's agent answers on the target: {listed} {}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_forwarding_is_refused_unless_configured() {
    if !support::need("ssh-agent") {
        return;
    }
    let Some(w) = World::new("").await else { return };
    let out = with_forwarded_agent(&w.alice, "echo agent=[${SSH_AUTH_SOCK:-none}]").await;
    assert_eq!(text(&out.stdout).trim(), "agent=[none]", "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bound_by_the_local_admin_logs_in_until_it_is_unbound() {
    let Some(w) = World::new("").await else { return };
    let runner = Client::new(&w.gw, "ci-runner", "");
    let key_file = runner.key.with_extension("pub");
    let bound =
        w.gw.cli(&[
            "key",
            "bind",
            "--user",
            "ci-runner@example.test",
            "--login-name",
            "ci-runner",
            "--public-key",
            key_file.to_str().unwrap(),
            "--for",
            "1h",
        ])
        .await;
    assert!(bound.status.success(), "{}", text(&bound.stderr));
    w.gw.grant("ci-runner@example.test", "vm1", &[LOGIN], Duration::from_secs(600)).await;
    let out = runner.exec("vm1", "echo automation", None).await;
    assert_eq!(text(&out.stdout).trim(), "automation", "{}", text(&out.stderr));
    let unbound = w.gw.cli(&["key", "unbind", "--public-key", key_file.to_str().unwrap()]).await;
    assert!(text(&unbound.stdout).contains("removed 1 binding"), "{}", text(&unbound.stdout));
    let refused = runner.exec("vm1", "echo again", None).await;
    assert!(!refused.status.success(), "an unbound key needs a sign-in again (batch mode cannot)");
}
