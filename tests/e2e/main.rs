//! End-to-end tests: the stock OpenSSH client through the gateway to a real
//! sshd, signing in at a real OpenID provider. One test binary (one link) for
//! all of them; each test starts its own peers on loopback.

mod support;

mod azure;
mod hardening;
mod limits;

mod enforcement;
mod rdp;
mod recordings;
mod refusals;
mod robustness;
mod sessions;
mod signin;
mod transfers;
mod workflow;

use std::time::Duration;

use support::{Client, Gw, GwOptions, LOGIN, Sshd};

/// A gateway with `vm1` in front of a real sshd, and alice's key bound with a
/// one-hour grant as `admin`: the state after a successful first sign-in.
pub struct World {
    pub gw: Gw,
    pub sshd: Sshd,
    pub alice: Client,
    pub grant: String,
}

impl World {
    pub async fn new(extra_config: &str) -> Option<World> {
        if !support::need("ssh") || !support::need("/usr/sbin/sshd") {
            return None;
        }
        let prepared = support::prepare();
        let sshd = Sshd::start(&prepared.target_ca);
        let gw = Gw::start(
            prepared,
            GwOptions { sshd_port: Some(sshd.port), extra: extra_config.into(), ..Default::default() },
        )
        .await;
        let alice = Client::new(&gw, "alice", "");
        gw.bind_key(&alice.public_key, "alice@example.test", "alice").await;
        let grant = gw.grant("alice@example.test", "vm1", &[LOGIN], Duration::from_secs(3600)).await;
        Some(World { gw, sshd, alice, grant })
    }
}
