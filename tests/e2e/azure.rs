//! Azure port opening against a fake Resource Manager that speaks the real
//! REST shapes, with a real sshd behind the "VM" (its NIC says 127.0.0.1).

use std::time::Duration;

use jit_gateway::store::blocking;

use crate::support::fake_arm::{self, FakeArm};
use crate::support::{self, Client, Gw, GwOptions, GwProcess, LOGIN, Sshd, eventually, text};

pub(crate) const GATEWAY_IP: &str = "10.1.0.4";

/// The `[azure]` section pointing at `fake`, with a client secret file beside its CA.
pub(crate) fn azure_section(fake: &FakeArm, opener: &str, linger: &str) -> String {
    let secret = fake.ca_file.with_file_name("client-secret");
    std::fs::write(&secret, "not-a-real-secret\n").unwrap();
    format!(
        "\n[azure]\nopener = \"{opener}\"\ngateway_ip = \"{GATEWAY_IP}\"\narm_endpoint = \"{url}\"\nauthority_host = \"{url}\"\n\
         ca_file = \"{ca}\"\ntenant_id = \"tenant-1\"\nclient_id = \"client-1\"\nclient_secret_file = \"{secret}\"\nazure_cli = false\n\
         retries = 3\npriority_range = [1000, 1009]\nlinger = \"{linger}\"\nreconcile_interval = \"2s\"\n",
        url = fake.url,
        ca = fake.ca_file.display(),
        secret = secret.display()
    )
}

pub struct AzWorld {
    pub fake: FakeArm,
    pub gw: Gw,
    pub sshd: Sshd,
    pub alice: Client,
}

/// vm1 is the fake's VM; its address comes from the fake NIC (127.0.0.1), its port is the real sshd's.
async fn az_world(opener: &str, linger: &str, deny_port: bool) -> Option<AzWorld> {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return None;
    }
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let fake = FakeArm::start("127.0.0.1", deny_port.then_some(sshd.port)).await;
    let extra = format!(
        "{}\n[targets.vm1]\nazure_vm = \"{}\"\nssh_port = {}\n",
        azure_section(&fake, opener, linger),
        fake_arm::VM,
        sshd.port
    );
    let gw = Gw::start(prepared, GwOptions { extra, ..Default::default() }).await;
    let resolved = eventually(Duration::from_secs(15), || {
        gw.gateway.inventory.get("vm1").is_some_and(|t| t.address == "127.0.0.1")
    })
    .await;
    assert!(resolved, "vm1's address comes from its NIC in Azure");
    let alice = Client::new(&gw, "alice", "");
    gw.bind_key(&alice.public_key, "alice@example.test", "alice").await;
    Some(AzWorld { fake, gw, sshd, alice })
}

fn rule_count(fake: &FakeArm) -> usize {
    fake.gateway_rules(fake_arm::NSG_NIC).len() + fake.gateway_rules(fake_arm::NSG_SUBNET).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsg_rule_admits_only_the_gateway_during_the_session_and_goes_after_the_linger() {
    let Some(w) = az_world("azure-nsg", "2s", true).await else { return };
    w.gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(600)).await;
    let session = {
        let client = w.alice.clone();
        tokio::spawn(async move { client.exec("vm1", "sleep 3; echo through-azure", None).await })
    };
    assert!(
        eventually(Duration::from_secs(15), || rule_count(&w.fake) == 2).await,
        "a rule on the NIC's NSG and on the subnet's"
    );
    for nsg in [fake_arm::NSG_NIC, fake_arm::NSG_SUBNET] {
        let rules = w.fake.gateway_rules(nsg);
        let (name, p) = &rules[0];
        assert!(name.starts_with("jitgw-p-"), "{name}");
        assert_eq!(p["sourceAddressPrefix"], GATEWAY_IP, "only the gateway's own address");
        assert_eq!(p["destinationAddressPrefix"], "127.0.0.1", "the VM's private IP from its NIC");
        assert_eq!(p["destinationPortRange"], w.sshd.port.to_string());
        assert_eq!(
            (p["access"].as_str(), p["direction"].as_str(), p["protocol"].as_str()),
            (Some("Allow"), Some("Inbound"), Some("Tcp"))
        );
        let priority = p["priority"].as_u64().unwrap();
        assert!((1000..=1009).contains(&priority), "priority {priority} from the configured range");
    }
    let out = session.await.unwrap();
    assert_eq!(text(&out.stdout).trim(), "through-azure", "{}", text(&out.stderr));
    // Every call carried the token from the (fake) authority; the PUTs used the official api-version.
    let calls = w.fake.calls();
    assert!(calls.iter().any(|c| c.path == "/tenant-1/oauth2/v2.0/token" && c.method == "POST"));
    for c in calls.iter().filter(|c| !c.path.ends_with("/token")) {
        assert_eq!(c.authorization.as_deref(), Some("Bearer fake-token-for-jit-gateway"), "{} {}", c.method, c.path);
    }
    assert!(calls.iter().any(|c| c.method == "PUT" && c.query.contains("api-version=2024-07-01")));
    assert_eq!(rule_count(&w.fake), 2, "the opening lingers after the session for a quick reconnect");
    assert!(eventually(Duration::from_secs(10), || rule_count(&w.fake) == 0).await, "and closes after the linger");
    let store = std::sync::Arc::clone(&w.gw.gateway.store);
    let recorded = eventually(Duration::from_secs(5), || {
        let store = std::sync::Arc::clone(&store);
        std::thread::spawn(move || store.audit_records(1, 10_000).unwrap().iter().any(|r| r.kind == "port.closed"))
            .join()
            .unwrap()
    })
    .await;
    assert!(recorded, "the closing is audited");
    let audit = blocking(&w.gw.gateway.store, |s| s.audit_records(1, 10_000)).await.unwrap();
    let opened = audit.iter().find(|r| r.kind == "port.opened").expect("audited");
    let rules = opened.details["detail"]["rules"].as_array().unwrap();
    assert!(
        rules.iter().all(|r| r["request_id"].as_str().is_some_and(|id| id.starts_with("req-"))),
        "Azure request IDs are audited: {rules:?}"
    );
    assert!(blocking(&w.gw.gateway.store, |s| s.leases()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_grants_on_one_vm_get_distinct_priorities_and_close_separately() {
    let Some(w) = az_world("azure-nsg", "60s", false).await else { return };
    let bob = Client::new(&w.gw, "bob", "");
    w.gw.bind_key(&bob.public_key, "bob@example.test", "bob").await;
    w.gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(600)).await;
    let bobs = w.gw.grant("bob@example.test", "vm1", &[LOGIN], Duration::from_secs(600)).await;
    let (a, b) = (w.alice.clone(), bob.clone());
    let ta = tokio::spawn(async move { a.exec("vm1", "sleep 4; echo a", None).await });
    let tb = tokio::spawn(async move { b.exec("vm1", "sleep 4; echo b", None).await });
    assert!(eventually(Duration::from_secs(20), || w.fake.gateway_rules(fake_arm::NSG_NIC).len() == 2).await);
    let rules = w.fake.gateway_rules(fake_arm::NSG_NIC);
    assert_ne!(rules[0].1["priority"], rules[1].1["priority"], "two openings at once never share a priority");
    assert_ne!(rules[0].0, rules[1].0);
    assert_eq!(text(&ta.await.unwrap().stdout).trim(), "a");
    assert_eq!(text(&tb.await.unwrap().stdout).trim(), "b");
    let revoked = w.gw.cli(&["grant", "revoke", &bobs, "--reason", "done"]).await;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert!(
        eventually(Duration::from_secs(10), || w.fake.gateway_rules(fake_arm::NSG_NIC).len() == 1).await,
        "bob's opening closes with his grant"
    );
    assert_eq!(w.fake.gateway_rules(fake_arm::NSG_SUBNET).len(), 1, "alice's stays (its linger is 60 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_a_persistent_failure_refuses_the_session_leaving_nothing_open() {
    let Some(w) = az_world("azure-nsg", "1s", false).await else { return };
    w.gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(600)).await;
    w.fake.fail("PUT", "/securityRules/", 429, Some(1), Some(1));
    let out = w.alice.exec("vm1", "echo after-a-429", None).await;
    assert_eq!(text(&out.stdout).trim(), "after-a-429", "{}", text(&out.stderr));
    let puts = w.fake.calls().iter().filter(|c| c.method == "PUT").count();
    assert_eq!(puts, 3, "the throttled PUT was retried (one per NSG, plus one retry)");
    assert!(eventually(Duration::from_secs(10), || rule_count(&w.fake) == 0).await);

    w.fake.fail("PUT", "/securityRules/", 500, None, None);
    let refused = w.alice.exec("vm1", "echo should-not-run", None).await;
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("could not open vm1's port") && stderr.contains("500"),
        "the user is told which target and why: {stderr}"
    );
    assert!(!w.sshd.log().contains("should-not-run"));
    assert_eq!(rule_count(&w.fake), 0, "nothing stays open");
    assert!(
        eventually(Duration::from_secs(5), || {
            let store = std::sync::Arc::clone(&w.gw.gateway.store);
            std::thread::spawn(move || store.leases().unwrap().is_empty()).join().unwrap()
        })
        .await,
        "no lease is left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defender_jit_is_initiated_for_the_gateway_until_the_grant_ends() {
    let Some(w) = az_world("azure-defender-jit", "1s", false).await else { return };
    let grant = w.gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(900)).await;
    let out = w.alice.exec("vm1", "echo via-defender", None).await;
    assert_eq!(text(&out.stdout).trim(), "via-defender", "{}", text(&out.stderr));
    let calls = w.fake.calls();
    let initiate = calls.iter().find(|c| c.method == "POST" && c.path.ends_with("/initiate")).expect("initiate called");
    assert_eq!(
        initiate.path,
        "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Security/locations/westus/jitNetworkAccessPolicies/default/initiate"
    );
    assert!(initiate.query.contains("api-version=2020-01-01"));
    assert_eq!(initiate.authorization.as_deref(), Some("Bearer fake-token-for-jit-gateway"));
    let vm = &initiate.body["virtualMachines"][0];
    assert_eq!(vm["id"], fake_arm::VM);
    let port = &vm["ports"][0];
    assert_eq!(port["number"], w.sshd.port);
    assert_eq!(port["allowedSourceAddressPrefix"], GATEWAY_IP);
    let g = blocking(&w.gw.gateway.store, move |s| s.grant(&grant)).await.unwrap().unwrap();
    let expected_end = jit_gateway::clock::format_ms(g.expires_at_ms).replace('Z', ".0000000Z");
    assert_eq!(port["endTimeUtc"], expected_end.as_str(), "Defender closes it when the grant ends");
    assert!(initiate.body["justification"].as_str().unwrap().contains(&g.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_check_shows_addresses_nsgs_and_a_missing_deny_rule() {
    let Some(w) = az_world("azure-nsg", "1s", true).await else { return };
    let out = w.gw.cli(&["azure", "check", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &report["targets"][0];
    assert_eq!(t["target"], "vm1");
    assert_eq!(t["private_ip"], "127.0.0.1");
    let nsgs = t["nsgs"].as_array().unwrap();
    let nic = nsgs.iter().find(|n| n["role"] == "nic").unwrap();
    let subnet = nsgs.iter().find(|n| n["role"] == "subnet").unwrap();
    assert!(nic["deny_below"].is_null(), "the NIC NSG has no deny rule for the port");
    assert_eq!(subnet["deny_below"], "deny-ssh (priority 4000)");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("AllowVnetInBound") && warnings.contains("vm1: the nic NSG"), "{warnings}");
    let human = w.gw.cli(&["azure", "check"]).await;
    assert!(text(&human.stdout).contains("NO deny rule underneath"), "{}", text(&human.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_tagged_for_the_gateway_are_discovered_as_targets() {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return;
    }
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let fake = FakeArm::start("127.0.0.1", None).await;
    let extra = format!(
        "{}\n[[azure.discover]]\nsubscription = \"subid\"\nresource_group = \"rg1\"\ntag = \"jit-gateway=enabled\"\nssh_port = {}\n",
        azure_section(&fake, "none", "1s"),
        sshd.port
    );
    let gw = Gw::start(prepared, GwOptions { extra, ..Default::default() }).await;
    assert!(
        eventually(Duration::from_secs(15), || gw
            .gateway
            .inventory
            .get("myvm")
            .is_some_and(|t| t.address == "127.0.0.1"))
        .await,
        "the tagged VM is a target named after it"
    );
    let alice = Client::new(&gw, "alice", "");
    gw.bind_key(&alice.public_key, "alice@example.test", "alice").await;
    gw.grant("alice@example.test", "myvm", &[LOGIN], Duration::from_secs(600)).await;
    // Its name is not in the client's known_hosts (made before discovery): trust the host CA for it.
    // (With an empty inventory the gateway prints no CA line at all, never `@cert-authority *`.)
    let known = std::fs::read_to_string(alice.dir.join("known_hosts")).unwrap();
    assert!(!known.contains("@cert-authority *"), "{known}");
    let ca = jit_gateway::keys::openssh_line(gw.gateway.keys.host_ca_public());
    std::fs::write(alice.dir.join("known_hosts"), format!("{known}@cert-authority myvm {ca}\n")).unwrap();
    let out = alice.exec("myvm", "echo discovered", None).await;
    assert_eq!(text(&out.stdout).trim(), "discovered", "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_after_the_lease_or_after_the_rule_leaves_no_rule_behind_once_restarted() {
    if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
        return;
    }
    let prepared = support::prepare();
    let sshd = Sshd::start(&prepared.target_ca);
    let fake = FakeArm::start("127.0.0.1", None).await;
    let port = support::peers::free_port();
    let extra = format!(
        "{}\n[targets.vm1]\nazure_vm = \"{}\"\nssh_port = {}\n",
        azure_section(&fake, "azure-nsg", "1s"),
        fake_arm::VM,
        sshd.port
    );
    let (dir, config) = support::write_config(prepared, &GwOptions { extra, ssh_port: port, ..Default::default() });
    let gateway = GwProcess::start(&config, port).await;
    // Any client works for the key; the gateway's known_hosts lines come from its certs folder.
    let alice = support::Client::for_process(dir.path(), port, "alice");
    assert!(
        gateway
            .cli(&[
                "key",
                "bind",
                "--user",
                "alice@example.test",
                "--login-name",
                "alice",
                "--public-key",
                alice.key.with_extension("pub").to_str().unwrap()
            ])
            .await
            .status
            .success()
    );
    assert!(
        gateway
            .cli(&[
                "grant",
                "add",
                "--user",
                "alice@example.test",
                "--target",
                "vm1",
                "--login",
                LOGIN,
                "--for",
                "1h",
                "--reason",
                "crash test"
            ])
            .await
            .status
            .success()
    );

    let mut gateway = Some(gateway);
    let db = dir.path().join("state/gateway.redb");
    // 1: killed with the PUT in flight (lease written, rule maybe not yet);
    // 2: killed while polling the PUT's operation (the rule exists).
    for (method, what, rule_exists) in [("PUT", "/securityRules/jitgw-", false), ("GET", "/operations/", true)] {
        let (arrived, release) = fake.hold(method, what);
        let client = alice.clone();
        let attempt = tokio::spawn(async move { client.exec("vm1", "true", None).await });
        tokio::time::timeout(Duration::from_secs(20), arrived.notified())
            .await
            .unwrap_or_else(|_| panic!("the gateway reached {method} {what}"));
        gateway.take().unwrap().kill9().await;
        release.notify_one();
        let _ = attempt.await;
        let leases = {
            let store = jit_gateway::store::RedbStore::open(&db).expect("the store opens after a kill -9");
            jit_gateway::store::Store::leases(&store).unwrap()
        };
        assert_eq!(leases.len(), 1, "the lease was written before the cloud call");
        assert_eq!(rule_count(&fake) >= 1, rule_exists, "rules present when the gateway died at {method} {what}");
        let restarted = GwProcess::start(&config, port).await;
        assert!(
            eventually(Duration::from_secs(20), || rule_count(&fake) == 0).await,
            "after {method} {what}: the restarted gateway removed the rule nobody uses: {:?}",
            fake.gateway_rules(fake_arm::NSG_NIC)
        );
        gateway = Some(restarted);
    }
    let deletes = fake.calls().iter().filter(|c| c.method == "DELETE").count();
    assert!(deletes >= 1, "the orphan was deleted in Azure");
    gateway.take().unwrap().kill9().await;
}
