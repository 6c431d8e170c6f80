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
