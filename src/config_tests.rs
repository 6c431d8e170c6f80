//! Unit tests of `config`.

use super::*;

const MINIMAL: &str = r#"
    [oidc]
    issuer = "https://login.example.test/tenant/v2.0"
    client_id = "jit-gateway"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml(MINIMAL, Path::new("/etc/jit")).unwrap();
    assert_eq!(c.ssh.listen.port(), 2222);
    assert_eq!(c.ssh.key_binding_ttl, Duration::from_secs(43200));
    assert_eq!(c.recording.exec_output_cap, ByteSize(64 << 20));
    assert!(c.recording.fail_closed);
    assert!(!c.recording.record_input);
    assert_eq!(c.admin_socket(), PathBuf::from("/var/lib/jit-gateway/admin.sock"));
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\n[ssh]\nlisten_adress = \"0.0.0.0:22\"\n");
    let err = Config::from_toml(&text, Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("listen_adress"), "{err}");
}

#[test]
fn plain_http_issuer_needs_loopback_and_opt_in() {
    let text = MINIMAL.replace("https://login.example.test/tenant/v2.0", "http://127.0.0.1:9000");
    let err = Config::from_toml(&text, Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("oidc.issuer"), "{err}");
    let ok = format!("{}\nallow_insecure_loopback_issuer = true\n", text.trim_end());
    Config::from_toml(&ok, Path::new(".")).unwrap();
    let remote = ok.replace("127.0.0.1", "10.0.0.1");
    assert!(Config::from_toml(&remote, Path::new(".")).is_err());
}

#[test]
fn target_names_and_pins_are_checked() {
    let bad_name = format!("{MINIMAL}\n[targets.\"10.0.0.4\"]\naddress = \"10.0.0.4\"\n");
    let err = Config::from_toml(&bad_name, Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("targets.10.0.0.4"), "{err}");
    let bad_pin = format!("{MINIMAL}\n[targets.vm1]\naddress = \"10.0.0.4\"\nhost_key = \"ssh-ed25519 nope\"\n");
    let err = Config::from_toml(&bad_pin, Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("targets.vm1.host_key"), "{err}");
}

#[test]
fn relative_paths_follow_the_config_file() {
    let text = format!("{MINIMAL}\n[gateway]\nstate_dir = \"../demo/state\"\ncerts_dir = \"/abs/certs\"\n");
    let c = Config::from_toml(&text, Path::new("/srv/gw/config")).unwrap();
    assert_eq!(c.gateway.state_dir, PathBuf::from("/srv/gw/demo/state"));
    assert_eq!(c.gateway.certs_dir, PathBuf::from("/abs/certs"));
}

#[test]
fn rdp_targets_are_checked_and_their_secret_files_follow_the_config_file() {
    let rdp = format!(
        "{MINIMAL}\n[rdp]\nlisten = \"127.0.0.1:3389\"\n[targets.win1]\naddress = \"10.0.0.7\"\nrdp_port = 3389\n\
         [targets.win1.rdp_credential]\nusername = \"jit\"\npassword_file = \"secrets/win1\"\n"
    );
    let c = Config::from_toml(&rdp, Path::new("/srv/gw/config")).unwrap();
    let cred = c.targets["win1"].rdp_credential.as_ref().unwrap();
    assert_eq!(cred.password_file.as_deref(), Some(Path::new("/srv/gw/config/secrets/win1")));
    assert_eq!(c.public_rdp_address().as_deref(), Some("127.0.0.1:3389"));
    let both = rdp.replace("password_file = \"secrets/win1\"", "password_file = \"a\"\npassword_env = \"B\"");
    let err = Config::from_toml(&both, Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("targets.win1.rdp_credential"), "{err}");
    let pin = rdp.replace("rdp_port = 3389", "rdp_port = 3389\nrdp_certificate = \"md5:00\"");
    let err = Config::from_toml(&pin, Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("targets.win1.rdp_certificate"), "{err}");
}

#[test]
fn every_shipped_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "config/ holds the example and the demo");
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/gateway.toml");
    Config::load(&compose).unwrap_or_else(|e| panic!("{}: {e}", compose.display()));
}

#[test]
fn byte_sizes_parse() {
    assert_eq!(ByteSize::parse("64MiB").unwrap(), ByteSize(64 << 20));
    assert_eq!(ByteSize::parse("512 KiB").unwrap(), ByteSize(512 << 10));
    assert_eq!(ByteSize::parse("1000").unwrap(), ByteSize(1000));
    assert!(ByteSize::parse("12 parsecs").is_err());
    assert!(ByteSize::parse("99999999999999GiB").is_err());
}

#[test]
fn limits_have_safe_defaults_and_are_checked() {
    let c = Config::from_toml(MINIMAL, Path::new(".")).unwrap();
    assert_eq!(c.ssh.preauth_timeout, Duration::from_secs(30));
    assert_eq!(c.ssh.max_unauthenticated_per_source, 16);
    assert_eq!(c.ssh.max_pending_sign_ins_per_source, 4);
    assert_eq!(c.ssh.kex_algorithms, ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org"]);
    assert_eq!(c.gateway.refusal_audit_interval, Duration::from_secs(60));
    for name in OFFERABLE_KEX {
        assert!(russh::kex::Name::try_from(*name).is_ok(), "{name} is a russh key exchange");
    }
    let api = Config::from_toml(&format!("{MINIMAL}\n[api]\nlisten = \"127.0.0.1:8443\"\n"), Path::new(".")).unwrap();
    let api = api.api.unwrap();
    assert_eq!((api.max_connections, api.max_connections_per_source), (512, 32));
    assert_eq!((api.max_pending_sign_ins, api.max_pending_sign_ins_per_source), (128, 8));
    assert_eq!(api.max_body, ByteSize(64 << 10));
    assert_eq!(
        (api.header_timeout, api.body_timeout, api.request_timeout),
        (Duration::from_secs(10), Duration::from_secs(10), Duration::from_secs(60))
    );

    let bad = |section: &str, line: &str, key: &str| {
        let text = format!("{MINIMAL}\n[{section}]\n{line}\n");
        let err = Config::from_toml(&text, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains(key), "{line}: {err}");
    };
    bad("ssh", "kex_algorithms = [\"diffie-hellman-group14-sha1\"]", "ssh.kex_algorithms[0]");
    bad("ssh", "kex_algorithms = [\"curve25519-sha256\", \"none\"]", "ssh.kex_algorithms[1]");
    bad("ssh", "kex_algorithms = []", "ssh.kex_algorithms");
    bad("ssh", "preauth_timeout = \"0s\"", "ssh.preauth_timeout");
    bad("ssh", "preauth_timeout = \"20m\"", "ssh.preauth_timeout");
    let short_grace = format!("{MINIMAL}\n[ssh]\nlogin_grace_time = \"10s\"\n");
    Config::from_toml(&short_grace, Path::new(".")).expect("a grace time shorter than the pre-auth timeout");
    bad("ssh", "max_unauthenticated_per_source = 0", "ssh.max_unauthenticated_per_source");
    bad("ssh", "max_unauthenticated = 4\nmax_unauthenticated_per_source = 5", "ssh.max_unauthenticated_per_source");
    bad("ssh", "max_pending_sign_ins_per_source = 0", "ssh.max_pending_sign_ins_per_source");
    bad("gateway", "refusal_audit_interval = \"0s\"", "gateway.refusal_audit_interval");
    let api = "listen = \"127.0.0.1:8443\"";
    bad("api", &format!("{api}\nmax_body = \"100MiB\""), "api.max_body");
    bad("api", &format!("{api}\nbody_timeout = \"0s\""), "api.body_timeout");
    bad("api", &format!("{api}\nbody_timeout = \"2m\"\nrequest_timeout = \"1m\""), "api.body_timeout");
    bad("api", &format!("{api}\nmax_connections_per_source = 600"), "api.max_connections_per_source");
    bad("api", &format!("{api}\nmax_pending_sign_ins_per_source = 0"), "api.max_pending_sign_ins_per_source");
    bad("rdp", "listen = \"127.0.0.1:3389\"\nmax_handshakes_per_source = 0", "rdp.max_handshakes_per_source");

    let dh = format!("{MINIMAL}\n[ssh]\nkex_algorithms = [\"curve25519-sha256\", \"diffie-hellman-group16-sha512\"]\n");
    assert_eq!(Config::from_toml(&dh, Path::new(".")).unwrap().ssh.kex_algorithms.len(), 2, "DH when configured");
}
