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
