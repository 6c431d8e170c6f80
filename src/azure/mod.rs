//! Azure: opening a VM's management port only for the gateway, only while a
//! grant needs it.
//!
//! - `arm`: the Resource Manager client (azure_core/azure_identity 1.x).
//! - `nsg`: the `azure-nsg` backend: a rule `jitgw-<lease>` allowing only the
//!   gateway's address to the VM's private address and port, on the NIC's
//!   and the subnet's NSG, with a priority from the configured range.
//! - `defender`: the `azure-defender-jit` backend: Defender for Cloud JIT
//!   `initiate` with the gateway's address and the grant's end.
//!
//! This module also resolves targets named by resource ID (VM → NIC →
//! private IP and NSGs), discovers VMs by tag, and answers `azure check`.

pub mod arm;
mod defender;
mod nsg;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::RwLock;

pub use arm::{Arm, ArmError};
pub use defender::DefenderJit;
pub use nsg::{NsgRules, check_nsg as nsg_check};

use crate::config::TargetConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpenerKind {
    /// The gateway reaches its targets already.
    None,
    AzureNsg,
    AzureDefenderJit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discover {
    pub subscription: String,
    pub resource_group: Option<String>,
    /// `key=value`: VMs carrying this tag become targets, named after the VM.
    #[serde(default = "default_tag")]
    pub tag: String,
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
}

fn default_tag() -> String {
    "jit-gateway=enabled".into()
}
fn default_ssh_port() -> u16 {
    22
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    pub opener: OpenerKind,
    /// The gateway's own address as the VMs see it: an IP, or `imds` to read
    /// the private IP from the instance metadata service at start.
    pub gateway_ip: String,
    #[serde(default = "default_arm")]
    pub arm_endpoint: String,
    /// Token authority (default: Azure public cloud's).
    pub authority_host: Option<String>,
    /// Extra CA certificate (PEM) for the Resource Manager and the token authority.
    pub ca_file: Option<PathBuf>,
    /// A service principal: tenant and client ID, and a file with its secret.
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// Use the VM's managed identity (calls the instance metadata service).
    #[serde(default)]
    pub managed_identity: bool,
    /// Fall back to the Azure CLI's sign-in (`az login`).
    #[serde(default = "yes")]
    pub azure_cli: bool,
    /// Retries of throttled (429) and failed (5xx) calls, with backoff and Retry-After.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// NSG rule priorities the gateway may use, lowest first.
    #[serde(default = "default_priorities")]
    pub priority_range: [u16; 2],
    /// A port stays open this long after a grant's last session, for a quick reconnect.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// How often leftover `jitgw-*` rules are looked for and removed.
    #[serde(default = "default_reconcile", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Defender for Cloud JIT policy name on the VMs' resource groups.
    #[serde(default = "default_jit_policy")]
    pub jit_policy: String,
    #[serde(default)]
    pub discover: Vec<Discover>,
}

fn yes() -> bool {
    true
}
fn default_arm() -> String {
    "https://management.azure.com".into()
}
fn default_retries() -> u32 {
    4
}
fn default_priorities() -> [u16; 2] {
    [1000, 1099]
}
fn default_linger() -> Duration {
    Duration::from_secs(300)
}
fn default_reconcile() -> Duration {
    Duration::from_secs(300)
}
fn default_jit_policy() -> String {
    "default".into()
}

impl AzureConfig {
    pub fn problems(&self) -> Option<(&'static str, String)> {
        if self.gateway_ip != "imds" && self.gateway_ip.parse::<IpAddr>().is_err() {
            return Some(("azure.gateway_ip", "must be an IP address or `imds`".into()));
        }
        let [low, high] = self.priority_range;
        if !(100..=4096).contains(&low) || !(100..=4096).contains(&high) || low > high {
            return Some(("azure.priority_range", "must be [low, high] within 100..4096".into()));
        }
        if !self.arm_endpoint.starts_with("https://") {
            return Some(("azure.arm_endpoint", "must be https".into()));
        }
        if self.reconcile_interval < Duration::from_secs(1) {
            return Some(("azure.reconcile_interval", "must be at least 1s".into()));
        }
        for d in &self.discover {
            if d.tag.split_once('=').is_none() {
                return Some(("azure.discover.tag", format!("`{}` is not key=value", d.tag)));
            }
        }
        None
    }
}

/// A resource ID's parts: `/subscriptions/S/resourceGroups/R/providers/P/T/N[/...]`.
pub struct ResourceId<'a> {
    pub subscription: &'a str,
    pub resource_group: &'a str,
    pub name: &'a str,
}

pub fn parse_id(id: &str) -> Option<ResourceId<'_>> {
    let parts: Vec<&str> = id.trim_matches('/').split('/').collect();
    if parts.len() < 8
        || !parts[0].eq_ignore_ascii_case("subscriptions")
        || !parts[2].eq_ignore_ascii_case("resourceGroups")
    {
        return None;
    }
    Some(ResourceId { subscription: parts[1], resource_group: parts[3], name: parts[parts.len() - 1] })
}

/// A VM's network as Azure describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmNetwork {
    pub vm_id: String,
    pub location: String,
    pub private_ip: String,
    pub nic_id: String,
    pub nic_nsg: Option<String>,
    pub subnet_nsg: Option<String>,
}

impl VmNetwork {
    pub fn nsgs(&self) -> Vec<String> {
        let mut out: Vec<String> = self.nic_nsg.iter().chain(self.subnet_nsg.iter()).cloned().collect();
        out.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        out
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string).filter(|s| !s.is_empty())
}

/// VM → primary NIC → private IP, NIC NSG, subnet → subnet NSG.
pub async fn resolve_vm(arm: &Arm, vm_id: &str) -> Result<VmNetwork, ArmError> {
    let shape = |m: &str| ArmError::Shape { what: format!("GET {vm_id}"), message: m.into() };
    let vm = arm.get(vm_id, arm::COMPUTE_API).await?.ok_or_else(|| shape("the VM does not exist"))?;
    let nics = vm["properties"]["networkProfile"]["networkInterfaces"].as_array().cloned().unwrap_or_default();
    let nic_ref = nics
        .iter()
        .find(|n| n["properties"]["primary"].as_bool() == Some(true))
        .or(nics.first())
        .ok_or_else(|| shape("the VM has no network interface"))?;
    let nic_id = text(&nic_ref["id"]).ok_or_else(|| shape("network interface without an ID"))?;
    let nic =
        arm.get(&nic_id, arm::NETWORK_API).await?.ok_or_else(|| shape("the VM's network interface does not exist"))?;
    let configs = nic["properties"]["ipConfigurations"].as_array().cloned().unwrap_or_default();
    let ip_config = configs
        .iter()
        .find(|c| c["properties"]["primary"].as_bool() == Some(true))
        .or(configs.first())
        .ok_or_else(|| shape("the NIC has no IP configuration"))?;
    let ip = text(&ip_config["properties"]["privateIPAddress"]).ok_or_else(|| shape("the NIC has no private IP"))?;
    let private_ip = ip.split('/').next().unwrap_or(&ip).to_string();
    let subnet_nsg = match text(&ip_config["properties"]["subnet"]["id"]) {
        Some(subnet_id) => arm
            .get(&subnet_id, arm::NETWORK_API)
            .await?
            .and_then(|s| text(&s["properties"]["networkSecurityGroup"]["id"])),
        None => None,
    };
    Ok(VmNetwork {
        vm_id: text(&vm["id"]).unwrap_or_else(|| vm_id.to_string()),
        location: text(&vm["location"]).unwrap_or_default(),
        private_ip,
        nic_id,
        nic_nsg: text(&nic["properties"]["networkSecurityGroup"]["id"]),
        subnet_nsg,
    })
}

/// VMs carrying the tag, as (target name, VM ID).
pub async fn discover(arm: &Arm, d: &Discover) -> Result<Vec<(String, String)>, ArmError> {
    let path = match &d.resource_group {
        Some(rg) => {
            format!("/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines", d.subscription)
        }
        None => format!("/subscriptions/{}/providers/Microsoft.Compute/virtualMachines", d.subscription),
    };
    let (key, value) = d.tag.split_once('=').unwrap_or((&d.tag, ""));
    let vms = arm.list(&path, arm::COMPUTE_API).await?;
    Ok(vms
        .iter()
        .filter(|vm| vm["tags"][key].as_str().is_some_and(|v| v.eq_ignore_ascii_case(value)))
        .filter_map(|vm| Some((text(&vm["name"])?.to_ascii_lowercase(), text(&vm["id"])?)))
        .filter(|(name, _)| crate::config::is_valid_target_name(name))
        .collect())
}

/// The gateway's own private IP from the instance metadata service (only when configured).
pub async fn imds_private_ip() -> Result<String, String> {
    let client =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let url = "http://169.254.169.254/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress?api-version=2021-02-01&format=text";
    let ip = client
        .get(url)
        .header("Metadata", "true")
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    ip.trim()
        .parse::<IpAddr>()
        .map(|_| ip.trim().to_string())
        .map_err(|_| format!("the metadata service answered `{}`", ip.trim()))
}

/// Targets as the gateway currently knows them: the configuration, with
/// addresses resolved from Azure and discovered VMs added.
pub struct Inventory {
    targets: std::sync::RwLock<Arc<BTreeMap<String, TargetConfig>>>,
    networks: RwLock<BTreeMap<String, VmNetwork>>,
}

impl Inventory {
    pub fn new(configured: BTreeMap<String, TargetConfig>) -> Inventory {
        Inventory { targets: std::sync::RwLock::new(Arc::new(configured)), networks: RwLock::new(BTreeMap::new()) }
    }

    pub fn snapshot(&self) -> Arc<BTreeMap<String, TargetConfig>> {
        self.targets.read().map(|t| Arc::clone(&t)).unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Option<TargetConfig> {
        self.snapshot().get(name).cloned()
    }

    pub async fn network(&self, name: &str) -> Option<VmNetwork> {
        self.networks.read().await.get(name).cloned()
    }

    pub async fn networks(&self) -> BTreeMap<String, VmNetwork> {
        self.networks.read().await.clone()
    }

    /// Resolves every Azure target (and discovers tagged VMs). Targets whose
    /// resolution fails keep what was known before.
    pub async fn refresh(
        &self,
        arm: &Arm,
        configured: &BTreeMap<String, TargetConfig>,
        discover: &[Discover],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut wanted: BTreeMap<String, TargetConfig> = configured.clone();
        for d in discover {
            match self::discover(arm, d).await {
                Ok(found) => {
                    for (name, vm_id) in found {
                        wanted.entry(name).or_insert_with(|| TargetConfig {
                            address: String::new(),
                            ssh_port: d.ssh_port,
                            host_key: None,
                            tags: vec!["discovered".into()],
                            description: format!("discovered by tag {}", d.tag),
                            azure_vm: Some(vm_id),
                            ..TargetConfig::default()
                        });
                    }
                }
                Err(e) => problems.push(format!("discovery in {}: {e}", d.subscription)),
            }
        }
        let known = self.snapshot();
        let mut networks = self.networks.read().await.clone();
        for (name, target) in wanted.iter_mut() {
            let Some(vm_id) = target.azure_vm.clone() else { continue };
            match resolve_vm(arm, &vm_id).await {
                Ok(net) => {
                    if target.address.is_empty() {
                        target.address = net.private_ip.clone();
                    }
                    networks.insert(name.clone(), net);
                }
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    if target.address.is_empty()
                        && let Some(before) = known.get(name)
                    {
                        target.address = before.address.clone();
                    }
                }
            }
        }
        if let Ok(mut t) = self.targets.write() {
            *t = Arc::new(wanted);
        }
        *self.networks.write().await = networks;
        problems
    }
}
