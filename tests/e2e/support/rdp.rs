//! RDP peers from Debian: Xvfb, xrdp (TLS, a local account), FreeRDP's
//! shadow server (NLA), xfreerdp as the client; and a fake RDP target that
//! answers the X.224 exchange and TLS, counting connections, for refusals.
//!
//! xrdp's session manager always listens on 3350 whatever its config says,
//! so tests that run xrdp are serialized (nextest group `xrdp`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::peers::free_port;

/// The Unix account xrdp logs in (made by the tests, password set each run).
pub const RDP_USER: &str = "jitgwrdp";

pub fn ensure_rdp_account(password: &str) {
    super::ensure_account(RDP_USER);
    // chpasswd locks /etc/shadow too: take turns with account creation in other test processes.
    super::with_setup_lock(|| {
        let mut child = Command::new("chpasswd").stdin(Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{RDP_USER}:{password}\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A virtual X display.
pub struct Xvfb {
    child: Child,
    pub display: String,
}

impl Xvfb {
    /// Xvfb picks a free display and writes its number on `-displayfd` once
    /// it accepts clients (its socket file appears earlier than that).
    /// `-noreset`: without it the server resets whenever its last client
    /// leaves, and a client connecting during the reset is refused.
    pub fn start() -> Xvfb {
        use std::io::BufRead;
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1280x1024x24", "-nolisten", "tcp", "-noreset"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        let mut line = String::new();
        let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        match line.trim().parse::<u32>() {
            Ok(n) => Xvfb { child, display: format!(":{n}") },
            Err(_) => {
                kill(&mut child);
                panic!("Xvfb did not start");
            }
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN={cn}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl req");
    (cert, key)
}

/// A child process killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

/// xrdp with its session manager; sessions run an xterm.
pub struct Xrdp {
    xrdp: Reaped,
    sesman: Reaped,
    pub port: u16,
    pub log: PathBuf,
    pub certificate_sha256: String,
    _tmp: tempfile::TempDir,
}

impl Xrdp {
    pub fn start() -> Xrdp {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (cert, key) = self_signed(dir, "vm2");
        let der = Command::new("openssl").args(["x509", "-outform", "der", "-in"]).arg(&cert).output().unwrap().stdout;
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        let certificate_sha256 = jit_gateway::rdp::format_certificate_pin(digest.as_ref());
        let startwm = dir.join("startwm.sh");
        std::fs::write(&startwm, "#!/bin/sh\nexec xterm -geometry 80x24+0+0 -fa Monospace -fs 16\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&startwm, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.join("xrdp.log");
        let port = free_port();
        let xrdp_ini = std::fs::read_to_string("/etc/xrdp/xrdp.ini").expect("xrdp is installed");
        let xrdp_ini: String = xrdp_ini
            .lines()
            .map(|l| match l.split('=').next().unwrap_or("") {
                "port" if l.starts_with("port=3389") => format!("port=tcp://127.0.0.1:{port}"),
                "certificate" => format!("certificate={}", cert.display()),
                "key_file" => format!("key_file={}", key.display()),
                "LogFile" => format!("LogFile={}", log.display()),
                "EnableSyslog" => "EnableSyslog=false".into(),
                "security_layer" => "security_layer=tls".into(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let sesman_ini = std::fs::read_to_string("/etc/xrdp/sesman.ini").unwrap();
        let sesman_log = dir.join("sesman.log");
        let sesman_ini: String = sesman_ini
            .lines()
            .map(|l| match l.split('=').next().unwrap_or("") {
                "DefaultWindowManager" | "UserWindowManager" => {
                    format!("{}={}", l.split('=').next().unwrap(), startwm.display())
                }
                "EnableUserWindowManager" => "EnableUserWindowManager=false".into(),
                "KillDisconnected" => "KillDisconnected=true".into(),
                "LogFile" => format!("LogFile={}", sesman_log.display()),
                "EnableSyslog" => "EnableSyslog=false".into(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("xrdp.ini"), xrdp_ini).unwrap();
        std::fs::write(dir.join("sesman.ini"), sesman_ini).unwrap();
        let _ = Command::new("pkill").args(["-u", RDP_USER]).status();
        let sesman = Reaped(
            Command::new("xrdp-sesman")
                .args(["--nodaemon", "-c"])
                .arg(dir.join("sesman.ini"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start xrdp-sesman"),
        );
        let mut xrdp = Reaped(
            Command::new("xrdp")
                .args(["--nodaemon", "-c"])
                .arg(dir.join("xrdp.ini"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start xrdp"),
        );
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::net::TcpStream::connect(("::1", 3350))
                    .or_else(|_| std::net::TcpStream::connect(("127.0.0.1", 3350)))
                    .is_ok()
            {
                return Xrdp { xrdp, sesman, port, log, certificate_sha256, _tmp: tmp };
            }
            if let Ok(Some(status)) = xrdp.0.try_wait() {
                panic!("xrdp exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "xrdp did not start (is another xrdp-sesman on 3350?): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Xrdp {
    fn drop(&mut self) {
        kill(&mut self.xrdp.0);
        kill(&mut self.sesman.0);
        // The session (Xorg, chansrv, xterm) runs as the account, in its own session.
        let _ = Command::new("pkill").args(["-KILL", "-u", RDP_USER]).status();
    }
}

/// Peers get 20 s to come up: the shadow server makes its RSA certificate
/// on first start, which is slow on a loaded 2-core machine.
///
/// FreeRDP's shadow server, requiring NLA with one account (a SAM file).
pub struct ShadowServer {
    child: Child,
    pub port: u16,
    _tmp: tempfile::TempDir,
}

impl ShadowServer {
    pub fn start(display: &str, user: &str, password: &str) -> ShadowServer {
        let tmp = tempfile::tempdir().unwrap();
        let sam = tmp.path().join("sam");
        let out =
            Command::new("winpr-hash").args(["-u", user, "-p", password, "-f", "sam"]).output().expect("winpr-hash");
        assert!(out.status.success());
        std::fs::write(&sam, &out.stdout).unwrap();
        let log = tmp.path().join("shadow.log");
        // A port picked here can be taken before the server binds it: retry.
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new("freerdp-shadow-cli")
                .args([
                    "/bind-address:127.0.0.1",
                    &format!("/port:{port}"),
                    "/sec:nla",
                    &format!("/sam-file:{}", sam.display()),
                    "+auth",
                ])
                .env("DISPLAY", display)
                .env("HOME", tmp.path())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start freerdp-shadow-cli");
            for _ in 0..400 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return ShadowServer { child, port, _tmp: tmp };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!(
                        "freerdp-shadow-cli exited ({status}), retrying: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill(&mut child);
        }
        panic!("freerdp-shadow-cli did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }
}

impl Drop for ShadowServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// xfreerdp on a display, with its output kept.
pub struct XFreeRdp {
    child: Child,
    pub out: PathBuf,
    _tmp: tempfile::TempDir,
}

impl XFreeRdp {
    pub fn start(display: &str, args: &[String]) -> XFreeRdp {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("xfreerdp.log");
        let log = std::fs::File::create(&out).unwrap();
        let child = Command::new("xfreerdp")
            .args(args)
            .env("DISPLAY", display)
            .env("HOME", tmp.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start xfreerdp");
        XFreeRdp { child, out, _tmp: tmp }
    }

    pub fn exited(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
            _ => None,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for XFreeRdp {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Accepts RDP connections like a target up to TLS (X.224 confirm selecting
/// TLS, then a TLS handshake with a self-signed certificate), then holds
/// them. Counts the connections it gets.
pub struct FakeTarget {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeTarget {
    pub async fn start() -> FakeTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["fake-target".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let count = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let confirm = jit_gateway::rdp::wire::encode_connection_confirm(
                        jit_gateway::rdp::wire::ConnectionConfirm::Selected {
                            protocol: jit_gateway::rdp::wire::PROTOCOL_SSL,
                            flags: 0,
                        },
                    );
                    if socket.write_all(&confirm).await.is_err() {
                        return;
                    }
                    if let Ok(mut tls) = acceptor.accept(socket).await {
                        let mut sink = [0u8; 4096];
                        while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                });
            }
        });
        FakeTarget { port, connections, task }
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}
