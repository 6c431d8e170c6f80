//! What the gateway refuses, the reason users see, and that nothing leaves
//! the gateway for a refused request.

use std::time::Duration;

use jit_gateway::store::blocking;

use crate::support::{self, Client, Gw, GwOptions, LOGIN, Sshd, Tripwire, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_say_why_and_never_reach_a_target() {
    if !support::need("ssh") {
        return;
    }
    let vm2 = Tripwire::start().await;
    let vm3 = Tripwire::start().await;
    let raw = Tripwire::start().await;
    let extra = format!(
        "[targets.vm2]\naddress = \"127.0.0.1\"\nssh_port = {}\n\n[targets.vm3]\naddress = \"127.0.0.1\"\nssh_port = {}\n",
        vm2.port, vm3.port
    );
    let gw = Gw::start(support::prepare(), GwOptions { extra, ..Default::default() }).await;
    let alice = Client::new(&gw, "alice", "");
    gw.bind_key(&alice.public_key, "alice@example.test", "alice").await;
    // A grant for vm3 that is already over, one for vm2 as another login only.
    gw.grant("alice@example.test", "vm3", &[LOGIN], Duration::from_secs(1)).await;
    gw.grant("alice@example.test", "vm2", &["deploy"], Duration::from_secs(3600)).await;
    gw.grant("bob@example.test", "vm3", &[LOGIN], Duration::from_secs(3600)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The wrong-port refusal names the target's configured SSH port, not 22.
    let wrong_port = format!("vm3 is reached on port {} through this gateway, not 8080", vm3.port);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("{LOGIN}@vm3")], "expired"),
        (vec![format!("{LOGIN}@vm2")], "does not allow the login `admin`; it allows: deploy"),
        (vec![format!("{LOGIN}@vm9")], "`vm9` is not a target of this gateway"),
        (vec!["-p".into(), raw.port.to_string(), format!("{LOGIN}@127.0.0.1")], "`127.0.0.1` is not a target"),
        (vec!["-p".into(), "8080".into(), format!("{LOGIN}@vm3")], &wrong_port),
        (vec![format!("{LOGIN}@localhost")], "`localhost` is not a target"),
    ];
    for (destination, reason) in cases {
        let mut args = vec!["-o", "BatchMode=yes", "-J", "jit-gateway"];
        args.extend(destination.iter().map(String::as_str));
        args.push("true");
        let out = alice.ssh(&args, None).await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{destination:?} must be refused");
        assert!(stderr.contains(reason), "{destination:?}: expected `{reason}` in: {stderr}");
    }

    // bob's key-less colleague: no grant at all for vm2.
    let carol = Client::new(&gw, "carol", "");
    gw.bind_key(&carol.public_key, "carol@example.test", "carol").await;
    let out = carol.exec("vm2", "true", None).await;
    assert!(text(&out.stderr).contains("you (carol@example.test) have no grant for vm2"), "{}", text(&out.stderr));

    // With connection sharing (ControlPersist, as `jit-gateway ssh-config` sets up), OpenSSH's
    // mux client drops channel-open failure texts: the reason must still reach the user.
    let control = format!("  ControlMaster auto\n  ControlPath {}/cm-%C\n  ControlPersist 10\n", carol.dir.display());
    let shared = Client::new(&gw, "carol", &control);
    gw.bind_key(&shared.public_key, "carol@example.test", "carol").await;
    let out = shared.exec("vm2", "true", None).await;
    assert!(
        text(&out.stderr).contains("you (carol@example.test) have no grant for vm2"),
        "through a shared connection: {}",
        text(&out.stderr)
    );
    let _ = shared.ssh(&["-O", "exit", "jit-gateway"], None).await;

    assert_eq!(vm2.hits() + vm3.hits() + raw.hits(), 0, "no connection may leave the gateway for a refused request");
    let audit = blocking(&gw.gateway.store, |s| s.audit_records(1, 1000)).await.unwrap();
    assert!(audit.iter().filter(|r| r.kind == "access.denied").count() >= 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_refused_when_the_target_host_key_does_not_match() {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return;
    }
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let wrong = jit_gateway::keys::openssh_line(jit_gateway::keys::generate_ed25519("x").unwrap().public_key());
    let options = GwOptions { sshd_port: Some(sshd.port), vm1_host_key: Some(wrong), ..Default::default() };
    let gw = Gw::start(prepared, options).await;
    let alice = Client::new(&gw, "alice", "");
    gw.bind_key(&alice.public_key, "alice@example.test", "alice").await;
    gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(3600)).await;

    let out = alice.exec("vm1", "echo should-not-run", None).await;
    assert!(!out.status.success());
    assert!(text(&out.stdout).is_empty());
    assert!(text(&out.stderr).contains("the host key of vm1 does not match"), "{}", text(&out.stderr));
    assert!(!sshd.log().contains("Accepted certificate"), "no login happened on the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_recorded_on_first_use_must_not_change() {
    let Some(crate::World { gw, sshd, alice, .. }) = crate::World::new("").await else { return };
    let first = alice.exec("vm1", "echo first", None).await;
    assert_eq!(text(&first.stdout).trim(), "first", "{}", text(&first.stderr));
    let recorded =
        blocking(&gw.gateway.store, |s| s.pinned_host_key("vm1")).await.unwrap().expect("recorded on first use");
    let genuine =
        jit_gateway::keys::openssh_line(&russh::keys::PublicKey::from_openssh(sshd.host_key_public.trim()).unwrap());
    assert_eq!(recorded, genuine);

    // The target comes back on the same address with another key (someone in the middle).
    let port = sshd.port;
    drop(sshd);
    let impostor = Sshd::start_on(Some(port), &gw.target_ca_public());
    let out = alice.exec("vm1", "echo should-not-run", None).await;
    assert!(text(&out.stdout).is_empty());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("the host key of vm1 does not match the one on record (recorded on first use"), "{stderr}");
    assert!(!impostor.log().contains("Accepted certificate"), "the impostor saw no login");
    let audit = blocking(&gw.gateway.store, |s| s.audit_records(1, 1000)).await.unwrap();
    assert!(audit.iter().any(|r| r.kind == "hostkey.mismatch"));
}
