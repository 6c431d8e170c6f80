//! Unit tests of `keys`.

use super::*;

#[test]
fn keys_are_generated_once_with_private_modes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let a = KeyMaterial::load_or_generate(&certs).unwrap();
    let b = KeyMaterial::load_or_generate(&certs).unwrap();
    assert_eq!(a.host_key.public_key(), b.host_key.public_key());
    assert_eq!(a.target_ca_public(), b.target_ca_public());
    assert_ne!(a.host_ca_public(), a.target_ca_public());
    for name in ["ssh_host_ed25519_key", "host_ca_ed25519_key", "target_ca_ed25519_key", "signing_ed25519_key"] {
        let mode = fs::metadata(certs.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        assert!(certs.join(format!("{name}.pub")).exists(), "{name}.pub");
    }
    assert_eq!(fs::metadata(&certs).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_world_readable_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    KeyMaterial::load_or_generate(dir.path()).unwrap();
    let key = dir.path().join("target_ca_ed25519_key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = KeyMaterial::load_or_generate(dir.path()).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn certificates_carry_what_was_asked() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(dir.path()).unwrap();
    let (_, host) = keys.mint_host_certificate("vm1", SystemTime::now() + Duration::from_secs(3600)).unwrap();
    assert_eq!(host.cert_type(), CertType::Host);
    assert_eq!(host.valid_principals(), ["vm1".to_string()]);
    assert!(host.signature_key() == keys.host_ca_public().key_data());

    let req = UserCertificateRequest {
        login: "admin",
        key_id: "jitgw alice grant g-1".into(),
        source_address: Some("10.1.2.3".parse().unwrap()),
        ttl: Duration::from_secs(300),
        permit_pty: true,
        ..Default::default()
    };
    let (key, user) = keys.mint_user_certificate(&req).unwrap();
    assert_eq!(user.public_key(), key.public_key().key_data());
    assert_eq!(user.valid_principals(), ["admin".to_string()]);
    assert_eq!(user.critical_options().get("source-address").map(String::as_str), Some("10.1.2.3"));
    assert!(user.extensions().contains_key("permit-pty"));
    assert!(!user.extensions().contains_key("permit-port-forwarding"));
    assert!(user.valid_before() - user.valid_after() <= 360);
}

#[test]
fn signatures_verify_and_detect_changes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(dir.path()).unwrap();
    let sig = keys.sign(b"recording digest").unwrap();
    verify_signature(keys.signing_public(), b"recording digest", &sig).unwrap();
    assert!(verify_signature(keys.signing_public(), b"recording digesT", &sig).is_err());
}

#[test]
fn a_loose_certs_folder_is_narrowed_and_loose_secret_and_tls_keys_refuse_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fs::create_dir(&certs).unwrap();
    fs::set_permissions(&certs, fs::Permissions::from_mode(0o755)).unwrap();
    let keys = KeyMaterial::load_or_generate(&certs).unwrap();
    keys.tls_identity(&["localhost".into()]).unwrap();
    assert_eq!(fs::metadata(&certs).unwrap().permissions().mode() & 0o777, 0o700, "narrowed");
    for name in ["api_token.key", "tls.key"] {
        let path = certs.join(name);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{name}");
        for loose in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(loose)).unwrap();
            let err = KeyMaterial::load_or_generate(&certs)
                .and_then(|k| k.tls_identity(&["localhost".into()]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{}: private key", path.display())), "{err}");
            assert!(err.contains(&format!("mode {loose:04o}")) && err.contains("chmod 600"), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        KeyMaterial::load_or_generate(&certs).unwrap().tls_identity(&["localhost".into()]).unwrap();
    }
}

#[test]
fn the_host_ca_line_names_the_targets_and_is_never_a_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyMaterial::load_or_generate(dir.path()).unwrap();
    let ca = openssh_line(keys.host_ca_public());
    let lines = keys.known_hosts_lines("jit-gateway", ["vm1", "vm2"]);
    assert!(lines.contains(&format!("\n@cert-authority vm1,vm2 {ca}\n")), "{lines}");
    let none = keys.known_hosts_lines("jit-gateway", []);
    assert!(none.starts_with(&format!("jit-gateway {}", openssh_line(keys.host_key.public_key()))), "{none}");
    let usable: Vec<&str> = none.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(usable.len(), 1, "only the gateway's own key: {none}");
    assert!(!none.contains("@cert-authority *"), "{none}");
    assert!(none.contains("No targets"), "{none}");
}
