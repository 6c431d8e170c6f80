//! A fake Azure Resource Manager and token endpoint over HTTPS (a test CA:
//! azure_core refuses plain http), serving the shapes of the official
//! examples in tests/fixtures/azure, recording every call, and able to
//! inject 429/5xx answers, slow long-running operations, and to hold a
//! request until the test lets it go (to crash the gateway at that moment).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const SUB: &str = "subid";
pub const RG: &str = "rg1";
pub const VM: &str = "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/myVM";
pub const NIC: &str = "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/networkInterfaces/myNIC";
pub const SUBNET: &str =
    "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/vnet1/subnets/default";
pub const NSG_NIC: &str =
    "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/networkSecurityGroups/nsg-nic";
pub const NSG_SUBNET: &str =
    "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/networkSecurityGroups/nsg-subnet";

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub authorization: Option<String>,
}

struct Fault {
    method: String,
    contains: String,
    status: u16,
    retry_after: Option<u64>,
    remaining: Option<u32>,
}

pub struct Hold {
    method: String,
    contains: String,
    pub arrived: Arc<Notify>,
    pub release: Arc<Notify>,
    armed: bool,
}

#[derive(Default)]
struct State {
    resources: BTreeMap<String, Value>,
    calls: Vec<Call>,
    faults: Vec<Fault>,
    holds: Vec<Hold>,
    /// operation id → (polls left before it succeeds, what to do then)
    ops: BTreeMap<String, (u32, Option<(String, String)>)>,
    op_polls: u32,
    counter: u64,
}

pub struct FakeArm {
    pub url: String,
    pub ca_file: PathBuf,
    state: Arc<Mutex<State>>,
    _dir: tempfile::TempDir,
}

fn fixture(path: &str) -> Value {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/azure").join(path);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    v["responses"]["200"]["body"].clone()
}

fn key(path: &str) -> String {
    path.trim_end_matches('/').to_ascii_lowercase()
}

impl FakeArm {
    /// Starts the fake with one VM (`VM`, tagged `jit-gateway=enabled`) whose
    /// NIC has `private_ip`, an NSG on the NIC and one on its subnet. The
    /// subnet NSG has an inbound Deny for `deny_port` when given.
    pub async fn start(private_ip: &str, deny_port: Option<u16>) -> FakeArm {
        let dir = tempfile::tempdir().unwrap();
        // A CA and a server certificate for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "fake Azure test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let ca_file = dir.path().join("fake-azure-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let mut state = State { op_polls: 1, ..Default::default() };
        let mut vm = fixture("compute-2024-07-01/VirtualMachine_Get.json");
        vm["id"] = VM.into();
        vm["tags"] = json!({"jit-gateway": "enabled"});
        vm["properties"]["networkProfile"]["networkInterfaces"] = json!([{"id": NIC, "properties": {"primary": true}}]);
        let mut nic = fixture("network-2024-07-01/NetworkInterfaceGet.json");
        nic["id"] = NIC.into();
        nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] = private_ip.into();
        nic["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"] = SUBNET.into();
        nic["properties"]["networkSecurityGroup"] = json!({"id": NSG_NIC});
        let subnet = json!({"id": SUBNET, "name": "default", "properties": {"addressPrefix": "10.0.0.0/24", "networkSecurityGroup": {"id": NSG_SUBNET}}});
        let nsg_template = fixture("network-2024-07-01/NetworkSecurityGroupGet.json");
        for (id, deny) in [(NSG_NIC, None), (NSG_SUBNET, deny_port)] {
            let mut nsg = nsg_template.clone();
            nsg["id"] = id.into();
            nsg["name"] = id.rsplit('/').next().unwrap().into();
            let mut rules = nsg["properties"]["securityRules"].as_array().cloned().unwrap_or_default();
            if let Some(port) = deny {
                rules.push(json!({"name": "deny-ssh", "id": format!("{id}/securityRules/deny-ssh"), "properties": {
                    "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": port.to_string(), "sourceAddressPrefix": "*",
                    "destinationAddressPrefix": "*", "access": "Deny", "priority": 4000, "direction": "Inbound", "provisioningState": "Succeeded"}}));
            }
            nsg["properties"]["securityRules"] = Value::Array(rules);
            state.resources.insert(key(id), nsg);
        }
        state.resources.insert(key(VM), vm);
        state.resources.insert(key(NIC), nic);
        state.resources.insert(key(SUBNET), subnet);

        let state = Arc::new(Mutex::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("https://127.0.0.1:{port}");
        let chain = vec![rustls::pki_types::CertificateDer::from(leaf.der().to_vec())];
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let shared = Arc::clone(&state);
        let base = url.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, shared, base) = (acceptor.clone(), Arc::clone(&shared), base.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (shared, base) = (Arc::clone(&shared), base.clone());
                        async move { Ok::<_, std::convert::Infallible>(handle(shared, base, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeArm { url, ca_file, state, _dir: dir }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The rules named `jitgw-*` on an NSG: (name, properties).
    pub fn gateway_rules(&self, nsg: &str) -> Vec<(String, Value)> {
        let s = self.state.lock().unwrap();
        let rules = s.resources.get(&key(nsg)).map(|n| n["properties"]["securityRules"].clone()).unwrap_or(Value::Null);
        rules
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let name = r["name"].as_str()?;
                name.starts_with("jitgw-").then(|| (name.to_string(), r["properties"].clone()))
            })
            .collect()
    }

    /// Answers the next `count` (None: every) matching call with `status`.
    pub fn fail(&self, method: &str, contains: &str, status: u16, retry_after: Option<u64>, count: Option<u32>) {
        self.state.lock().unwrap().faults.push(Fault {
            method: method.into(),
            contains: contains.into(),
            status,
            retry_after,
            remaining: count,
        });
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Holds the next matching call until `release` is notified; `arrived` fires when it comes.
    pub fn hold(&self, method: &str, contains: &str) -> (Arc<Notify>, Arc<Notify>) {
        let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        self.state.lock().unwrap().holds.push(Hold {
            method: method.into(),
            contains: contains.into(),
            arrived: Arc::clone(&arrived),
            release: Arc::clone(&release),
            armed: true,
        });
        (arrived, release)
    }

    /// How many polls a long-running operation answers InProgress before it succeeds.
    pub fn set_operation_polls(&self, polls: u32) {
        self.state.lock().unwrap().op_polls = polls;
    }
}

fn reply(status: u16, body: Value, headers: &[(&str, String)]) -> hyper::Response<http_body_util::Full<Bytes>> {
    let mut r = hyper::Response::builder().status(status).header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let text = if body.is_null() { Vec::new() } else { serde_json::to_vec(&body).unwrap() };
    r.body(http_body_util::Full::new(Bytes::from(text))).unwrap()
}

async fn handle(
    state: Arc<Mutex<State>>,
    base: String,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<Bytes>> {
    use http_body_util::BodyExt;
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (request_id, fault, hold) = {
        let mut s = state.lock().unwrap();
        s.counter += 1;
        s.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
            authorization: authorization.clone(),
        });
        let fault = s
            .faults
            .iter_mut()
            .find(|f| f.method == method && path.contains(&f.contains) && f.remaining != Some(0))
            .map(|f| {
                if let Some(n) = f.remaining.as_mut() {
                    *n -= 1;
                }
                (f.status, f.retry_after)
            });
        let hold = s.holds.iter_mut().find(|h| h.armed && h.method == method && path.contains(&h.contains)).map(|h| {
            h.armed = false;
            (Arc::clone(&h.arrived), Arc::clone(&h.release))
        });
        (format!("req-{:04}", s.counter), fault, hold)
    };
    let rid = ("x-ms-request-id", request_id);
    if let Some((status, retry_after)) = fault {
        let mut headers = vec![rid];
        if let Some(s) = retry_after {
            headers.push(("retry-after", s.to_string()));
        }
        return reply(
            status,
            json!({"error": {"code": "Injected", "message": format!("injected {status}")}}),
            &headers,
        );
    }
    if let Some((arrived, release)) = hold {
        let released = release.notified();
        arrived.notify_one();
        released.await;
    }
    if path.ends_with("/oauth2/v2.0/token") {
        return reply(
            200,
            json!({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": "fake-token-for-jit-gateway"}),
            &[rid],
        );
    }
    if authorization.as_deref() != Some("Bearer fake-token-for-jit-gateway") {
        return reply(
            401,
            json!({"error": {"code": "AuthenticationFailed", "message": "no or wrong bearer token"}}),
            &[rid],
        );
    }
    let lower = key(&path);
    let mut s = state.lock().unwrap();
    if let Some(op) = lower.split("/operations/").nth(1).map(str::to_string) {
        let Some((left, action)) = s.ops.get(&op).cloned() else {
            return reply(404, json!({"error": {"code": "NotFound"}}), &[rid]);
        };
        if left > 0 {
            s.ops.insert(op, (left - 1, action));
            return reply(200, json!({"status": "InProgress"}), &[rid, ("retry-after", "1".into())]);
        }
        if let Some((nsg, rule)) = action
            && let Some(n) = s.resources.get_mut(&nsg)
            && let Some(rules) = n["properties"]["securityRules"].as_array_mut()
        {
            rules.retain(|r| r["name"].as_str() != Some(rule.as_str()));
        }
        return reply(200, json!({"status": "Succeeded"}), &[rid]);
    }
    let new_op = |s: &mut State, action: Option<(String, String)>| {
        let id = format!("op-{}", s.counter);
        let polls = s.op_polls;
        s.ops.insert(id.to_ascii_lowercase(), (polls, action));
        format!(
            "{base}/subscriptions/{SUB}/providers/Microsoft.Network/locations/westus/operations/{id}?api-version=2024-07-01"
        )
    };
    if let Some((nsg_path, rule)) = lower.split_once("/securityrules/") {
        let nsg_path = nsg_path.to_string();
        let rule_name = path.rsplit('/').next().unwrap_or("").to_string();
        if !s.resources.contains_key(&nsg_path) {
            return reply(404, json!({"error": {"code": "ResourceNotFound"}}), &[rid]);
        }
        match method.as_str() {
            "PUT" => {
                let Some(props) = body.get("properties").cloned() else {
                    return reply(
                        400,
                        json!({"error": {"code": "InvalidRequestFormat", "message": "no properties"}}),
                        &[rid],
                    );
                };
                let mut props = props;
                props["provisioningState"] = "Succeeded".into();
                let doc =
                    json!({"name": rule_name, "id": format!("{nsg_path}/securityRules/{rule}"), "properties": props});
                let nsg = s.resources.get_mut(&nsg_path).unwrap();
                let rules = nsg["properties"]["securityRules"].as_array_mut().unwrap();
                rules.retain(|r| r["name"].as_str() != Some(rule_name.as_str()));
                rules.push(doc.clone());
                let op = new_op(&mut s, None);
                return reply(201, doc, &[rid, ("azure-asyncoperation", op)]);
            }
            "DELETE" => {
                let exists = s.resources[&nsg_path]["properties"]["securityRules"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x["name"].as_str() == Some(rule_name.as_str())));
                if !exists {
                    return reply(204, Value::Null, &[rid]);
                }
                let op = new_op(&mut s, Some((nsg_path, rule_name)));
                return reply(202, Value::Null, &[rid, ("azure-asyncoperation", op)]);
            }
            "GET" => {
                let found = s.resources[&nsg_path]["properties"]["securityRules"]
                    .as_array()
                    .and_then(|r| r.iter().find(|x| x["name"].as_str() == Some(rule_name.as_str())).cloned());
                return match found {
                    Some(r) => reply(200, r, &[rid]),
                    None => reply(404, json!({"error": {"code": "NotFound"}}), &[rid]),
                };
            }
            _ => {}
        }
    }
    if method == "POST" && lower.ends_with("/initiate") {
        let mut answer = body.clone();
        if let Some(vms) = answer["virtualMachines"].as_array_mut() {
            for vm in vms {
                for p in vm["ports"].as_array_mut().into_iter().flatten() {
                    p["status"] = "Initiating".into();
                    p["statusReason"] = "UserRequested".into();
                }
            }
        }
        answer["requestor"] = "jit-gateway".into();
        return reply(202, answer, &[rid]);
    }
    if method == "GET" && lower.ends_with("/providers/microsoft.compute/virtualmachines") {
        let prefix = lower.trim_end_matches("/providers/microsoft.compute/virtualmachines").to_string();
        let vms: Vec<Value> = s
            .resources
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.contains("/virtualmachines/"))
            .map(|(_, v)| v.clone())
            .collect();
        return reply(200, json!({"value": vms}), &[rid]);
    }
    if method == "GET"
        && let Some(doc) = s.resources.get(&lower)
    {
        return reply(200, doc.clone(), &[rid]);
    }
    reply(404, json!({"error": {"code": "ResourceNotFound", "message": format!("{method} {path}")}}), &[rid])
}
