//! The `azure-defender-jit` backend: Microsoft Defender for Cloud's
//! just-in-time VM access, `initiate` with the gateway's own address as the
//! allowed source and the grant's end as `endTimeUtc`. Defender closes the
//! port itself at that time; it has no way to close it earlier, so the
//! gateway cuts sessions itself when a grant ends sooner (it always does).

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;

use super::arm::{self, Arm};
use super::{Inventory, parse_id};
use crate::config::TargetConfig;
use crate::ports::{OpenRequest, Opening, PortError, PortOpener};

pub struct DefenderJit {
    arm: Arc<Arm>,
    inventory: Arc<Inventory>,
    gateway_ip: String,
    policy: String,
}

impl DefenderJit {
    pub fn new(arm: Arc<Arm>, inventory: Arc<Inventory>, gateway_ip: String, policy: String) -> DefenderJit {
        DefenderJit { arm, inventory, gateway_ip, policy }
    }
}

/// `2026-11-27T12:00:00.0000000Z`, the shape Defender's examples use.
fn end_time(ms: i64) -> String {
    crate::clock::format_ms(ms).replace('Z', ".0000000Z")
}

impl PortOpener for DefenderJit {
    fn kind(&self) -> &'static str {
        "azure-defender-jit"
    }

    fn open<'a>(
        &'a self,
        _target: &'a TargetConfig,
        request: &'a OpenRequest,
    ) -> BoxFuture<'a, Result<Opening, PortError>> {
        Box::pin(async move {
            let net = self.inventory.network(&request.target).await.ok_or_else(|| {
                PortError::Backend(format!("the gateway does not know {}'s Azure VM yet", request.target))
            })?;
            let id = parse_id(&net.vm_id)
                .ok_or_else(|| PortError::Backend(format!("not a VM resource ID: {}", net.vm_id)))?;
            // Defender's ascLocation is the short region name: "West US" -> "westus".
            let location: String =
                net.location.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
            let path = format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/{}/initiate",
                id.subscription, id.resource_group, self.policy
            );
            let body = json!({
                "virtualMachines": [{
                    "id": net.vm_id,
                    "ports": [{"number": request.port, "endTimeUtc": end_time(request.until_ms), "allowedSourceAddressPrefix": self.gateway_ip}],
                }],
                "justification": format!("jit-gateway grant {} (lease {})", request.grant_id, request.lease_id),
            });
            let answer =
                self.arm.post(&path, arm::SECURITY_API, &body).await.map_err(|e| PortError::Backend(e.to_string()))?;
            Ok(request.opened(json!({"initiate": path, "request_id": answer.request_id, "end_time_utc": end_time(request.until_ms), "source": self.gateway_ip})))
        })
    }

    fn close<'a>(&'a self, opening: &'a Opening) -> BoxFuture<'a, Result<Vec<String>, PortError>> {
        Box::pin(async move {
            tracing::info!(target = %opening.target, lease = %opening.lease_id, "Defender JIT closes the port by itself at its end time");
            Ok(Vec::new())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn end_times_look_like_defenders() {
        assert_eq!(super::end_time(0), "1970-01-01T00:00:00.0000000Z");
    }
}
