//! The `azure-nsg` backend: a security rule `jitgw-<lease>` that allows only
//! the gateway's address to the VM's private address and port, on the NIC's
//! NSG and on the subnet's NSG (where each exists). Priorities come from the
//! configured range, lowest free first, one NSG at a time so two openings
//! never pick the same one. Reconcile deletes every `jitgw-*` rule no live
//! lease explains and re-creates the rules of live leases that went missing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::arm::{self, Arm, ArmError};
use super::{Inventory, VmNetwork};
use crate::config::TargetConfig;
use crate::ports::{OpenRequest, Opening, PortError, PortOpener};
use crate::store::Lease;

pub const RULE_PREFIX: &str = "jitgw-";

pub struct NsgRules {
    arm: Arc<Arm>,
    inventory: Arc<Inventory>,
    gateway_ip: String,
    priorities: [u16; 2],
    /// One opening or reconcile per NSG at a time (priority choice, rule listing).
    locks: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
}

fn err(e: ArmError) -> PortError {
    PortError::Backend(e.to_string())
}

fn rule_id(nsg: &str, name: &str) -> String {
    format!("{nsg}/securityRules/{name}")
}

impl NsgRules {
    pub fn new(arm: Arc<Arm>, inventory: Arc<Inventory>, gateway_ip: String, priorities: [u16; 2]) -> NsgRules {
        NsgRules { arm, inventory, gateway_ip, priorities, locks: Mutex::new(BTreeMap::new()) }
    }

    async fn lock(&self, nsg: &str) -> Arc<Mutex<()>> {
        Arc::clone(self.locks.lock().await.entry(nsg.to_ascii_lowercase()).or_default())
    }

    async fn network(&self, target: &str) -> Result<VmNetwork, PortError> {
        self.inventory
            .network(target)
            .await
            .ok_or_else(|| PortError::Backend(format!("the gateway does not know {target}'s Azure network yet (is it an Azure target, and is Azure reachable?)")))
    }

    async fn rules(&self, nsg: &str) -> Result<Vec<Value>, PortError> {
        let nsg_body = self.arm.get(nsg, arm::NETWORK_API).await.map_err(err)?;
        let nsg_body = nsg_body.ok_or_else(|| PortError::Backend(format!("the NSG {nsg} does not exist")))?;
        Ok(nsg_body["properties"]["securityRules"].as_array().cloned().unwrap_or_default())
    }

    /// Puts one rule on one NSG with the lowest free priority.
    async fn put_rule(
        &self,
        nsg: &str,
        name: &str,
        net: &VmNetwork,
        port: u16,
        until: &str,
    ) -> Result<Value, PortError> {
        let lock = self.lock(nsg).await;
        let _held = lock.lock().await;
        let used: HashSet<u64> =
            self.rules(nsg).await?.iter().filter_map(|r| r["properties"]["priority"].as_u64()).collect();
        let [low, high] = self.priorities;
        let priority = (low..=high).find(|p| !used.contains(&u64::from(*p))).ok_or_else(|| {
            PortError::Backend(format!("no free priority in {low}..{high} on {nsg} (azure.priority_range)"))
        })?;
        let body = json!({"properties": {
            "description": format!("jit-gateway opening until {until}"),
            "protocol": "Tcp",
            "sourceAddressPrefix": self.gateway_ip,
            "sourcePortRange": "*",
            "destinationAddressPrefix": net.private_ip,
            "destinationPortRange": port.to_string(),
            "access": "Allow",
            "priority": priority,
            "direction": "Inbound",
        }});
        let answer = self.arm.put(&rule_id(nsg, name), arm::NETWORK_API, &body).await.map_err(err)?;
        Ok(json!({"nsg": nsg, "name": name, "priority": priority, "request_id": answer.request_id}))
    }
}

impl PortOpener for NsgRules {
    fn kind(&self) -> &'static str {
        "azure-nsg"
    }

    fn open<'a>(
        &'a self,
        _target: &'a TargetConfig,
        request: &'a OpenRequest,
    ) -> BoxFuture<'a, Result<Opening, PortError>> {
        Box::pin(async move {
            let net = self.network(&request.target).await?;
            let nsgs = net.nsgs();
            let name = format!("{RULE_PREFIX}{}", request.lease_id);
            let until = crate::clock::format_ms(request.until_ms);
            let mut rules = Vec::new();
            for nsg in &nsgs {
                match self.put_rule(nsg, &name, &net, request.port, &until).await {
                    Ok(rule) => rules.push(rule),
                    Err(e) => {
                        // Leave nothing half-open: take back what this opening created.
                        for r in &rules {
                            if let Some(n) = r["nsg"].as_str() {
                                let _ = self.arm.delete(&rule_id(n, &name), arm::NETWORK_API).await;
                            }
                        }
                        return Err(e);
                    }
                }
            }
            if nsgs.is_empty() {
                tracing::warn!(target = %request.target, "the VM has no NSG on its NIC or subnet: nothing to open (and nothing protects the port)");
            }
            Ok(request.opened(json!({"rules": rules, "source": self.gateway_ip, "destination": net.private_ip})))
        })
    }

    fn close<'a>(&'a self, opening: &'a Opening) -> BoxFuture<'a, Result<Vec<String>, PortError>> {
        Box::pin(async move {
            let mut ids = Vec::new();
            let name = format!("{RULE_PREFIX}{}", opening.lease_id);
            // The rules recorded, and any the NSGs of the target carry under this name (a crash mid-open).
            let mut nsgs: Vec<String> = opening.detail["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["nsg"].as_str().map(str::to_string))
                .collect();
            if let Some(net) = self.inventory.network(&opening.target).await {
                nsgs.extend(net.nsgs());
            }
            nsgs.sort_by_key(|n| n.to_ascii_lowercase());
            nsgs.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
            for nsg in nsgs {
                let answer = self.arm.delete(&rule_id(&nsg, &name), arm::NETWORK_API).await.map_err(err)?;
                ids.push(answer.request_id);
            }
            Ok(ids)
        })
    }

    fn reconcile<'a>(&'a self, live: &'a [Lease]) -> BoxFuture<'a, Result<Vec<String>, PortError>> {
        Box::pin(async move {
            let mut actions = Vec::new();
            let live_ids: HashSet<String> = live.iter().map(|l| format!("{RULE_PREFIX}{}", l.id)).collect();
            let networks = self.inventory.networks().await;
            let mut all_nsgs: Vec<String> = networks.values().flat_map(|n| n.nsgs()).collect();
            all_nsgs.sort_by_key(|n| n.to_ascii_lowercase());
            all_nsgs.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
            let mut present: HashSet<(String, String)> = HashSet::new();
            for nsg in &all_nsgs {
                let rules = match self.rules(nsg).await {
                    Ok(r) => r,
                    Err(e) => {
                        actions.push(format!("could not read {nsg}: {e}"));
                        continue;
                    }
                };
                for rule in rules {
                    let Some(name) = rule["name"].as_str() else { continue };
                    if !name.starts_with(RULE_PREFIX) {
                        continue;
                    }
                    if live_ids.contains(name) {
                        present.insert((nsg.to_ascii_lowercase(), name.to_string()));
                        continue;
                    }
                    let lock = self.lock(nsg).await;
                    let _held = lock.lock().await;
                    match self.arm.delete(&rule_id(nsg, name), arm::NETWORK_API).await {
                        Ok(a) => {
                            actions.push(format!("removed orphan rule {name} from {nsg} (request {})", a.request_id))
                        }
                        Err(e) => actions.push(format!("could not remove orphan rule {name} from {nsg}: {e}")),
                    }
                }
            }
            for lease in live {
                let Some(net) = networks.get(&lease.target) else { continue };
                let name = format!("{RULE_PREFIX}{}", lease.id);
                for nsg in net.nsgs() {
                    if present.contains(&(nsg.to_ascii_lowercase(), name.clone())) {
                        continue;
                    }
                    let until = crate::clock::format_ms(lease.until_ms);
                    match self.put_rule(&nsg, &name, net, lease.port, &until).await {
                        Ok(r) => actions.push(format!(
                            "re-created missing rule {name} on {nsg} (request {})",
                            r["request_id"].as_str().unwrap_or("")
                        )),
                        Err(e) => actions.push(format!("could not re-create rule {name} on {nsg}: {e}")),
                    }
                }
            }
            Ok(actions)
        })
    }
}

/// What `azure check` reports about one NSG for a port.
#[derive(Debug, serde::Serialize)]
pub struct NsgCheck {
    pub nsg: String,
    /// An inbound Deny rule for the port that our allow rules take precedence over.
    pub deny_below: Option<String>,
    pub gateway_rules: Vec<String>,
}

fn covers_port(range: &str, port: u16) -> bool {
    range.split(',').any(|r| match r.trim() {
        "*" => true,
        r => match r.split_once('-') {
            Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= port) && b.parse::<u16>().is_ok_and(|b| port <= b),
            None => r.parse::<u16>() == Ok(port),
        },
    })
}

/// Is there an inbound Deny for `port` evaluated after the gateway's rules?
pub async fn check_nsg(arm: &Arm, nsg: &str, port: u16, priorities: [u16; 2]) -> Result<NsgCheck, ArmError> {
    let body = arm.get(nsg, arm::NETWORK_API).await?.unwrap_or(Value::Null);
    let rules = body["properties"]["securityRules"].as_array().cloned().unwrap_or_default();
    let mut deny_below = None;
    let mut gateway_rules = Vec::new();
    for r in &rules {
        let p = &r["properties"];
        let name = r["name"].as_str().unwrap_or("");
        if name.starts_with(RULE_PREFIX) {
            gateway_rules.push(name.to_string());
            continue;
        }
        let ranges: Vec<String> = match p["destinationPortRanges"].as_array() {
            Some(a) if !a.is_empty() => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => vec![p["destinationPortRange"].as_str().unwrap_or("").to_string()],
        };
        let priority = p["priority"].as_u64().unwrap_or(0);
        if p["direction"] == "Inbound"
            && p["access"] == "Deny"
            && priority > u64::from(priorities[1])
            && ranges.iter().any(|r| covers_port(r, port))
        {
            deny_below.get_or_insert_with(|| format!("{name} (priority {priority})"));
        }
    }
    Ok(NsgCheck { nsg: nsg.to_string(), deny_below, gateway_rules })
}

#[cfg(test)]
mod tests {
    use super::covers_port;

    #[test]
    fn port_ranges_cover_ports() {
        assert!(covers_port("*", 22));
        assert!(covers_port("22", 22));
        assert!(covers_port("20-30", 22));
        assert!(covers_port("80,22", 22));
        assert!(!covers_port("3389", 22));
        assert!(!covers_port("23-30", 22));
    }
}
