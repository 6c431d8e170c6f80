//! A small typed Azure Resource Manager client on azure_core 1.x and
//! azure_identity 1.x: the handful of calls the gateway needs (VMs, NICs,
//! subnets, NSG rules, Defender for Cloud JIT `initiate`) and polling of
//! long-running operations.
//!
//! Why not `azure_mgmt_compute` and friends: those are the legacy SDK (0.21),
//! frozen and tied to azure_core/azure_identity 0.21, so they cannot share the
//! current credential types; they also build about 3x heavier. The calls here
//! are plain REST with the official api-versions.
//!
//! azure_core runs with its own HTTP stack turned off: requests go through the
//! gateway's reqwest client (rustls with ring), which is also how tests point
//! it at a fake Resource Manager with a test CA. Its retry policy retries
//! 429/5xx with backoff and honours Retry-After.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::{Error as AzError, ErrorKind};
use azure_core::http::headers::{HeaderName, Headers};
use azure_core::http::policies::Policy;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    AsyncRawResponse, Body, ClientOptions, Context, ExponentialRetryOptions, HttpClient, Method, Pipeline,
    PipelineSendOptions, Request, RetryOptions, StatusCode, Transport, Url,
};
use serde_json::Value;

use super::AzureConfig;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("Azure configuration: {0}")]
    Config(String),
    #[error("Azure answered {status} to {what}: {message} (request ID {request_id})")]
    Status { what: String, status: u16, message: String, request_id: String },
    #[error("Azure could not be reached for {what}: {message}")]
    Transport { what: String, message: String },
    #[error("Azure's answer to {what} was not understood: {message}")]
    Shape { what: String, message: String },
    #[error("{what} did not finish: {status}")]
    Operation { what: String, status: String },
}

pub type ArmResult<T> = Result<T, ArmError>;

pub const COMPUTE_API: &str = "2024-07-01";
pub const NETWORK_API: &str = "2024-07-01";
pub const SECURITY_API: &str = "2020-01-01";
const SCOPE: &str = "https://management.azure.com/.default";

/// azure_core's transport, backed by the gateway's reqwest client.
#[derive(Debug)]
struct Reqwest(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for Reqwest {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let Body::Bytes(bytes) = request.body() else {
            return Err(AzError::with_message(ErrorKind::Other, "streamed bodies are not used"));
        };
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .map_err(|e| AzError::with_message(ErrorKind::Other, e.to_string()))?;
        let mut builder = self.0.request(method, request.url().as_str()).body(bytes.clone());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = builder.send().await.map_err(|e| {
            let kind = if e.is_connect() || e.is_timeout() { ErrorKind::Connection } else { ErrorKind::Io };
            AzError::with_error(kind, e, "request failed")
        })?;
        let mut headers = Headers::new();
        for (name, value) in response.headers() {
            if let Ok(v) = value.to_str() {
                headers.insert(name.as_str().to_owned(), v.to_owned());
            }
        }
        let status = StatusCode::from(response.status().as_u16());
        let body = response.bytes().await.map_err(|e| AzError::with_error(ErrorKind::Io, e, "reading the body"))?;
        Ok(AsyncRawResponse::from_bytes(status, headers, body))
    }
}

/// The credential chain: workload identity, a service principal secret,
/// managed identity (only when configured: it calls the instance metadata
/// service), then the Azure CLI. The first that yields a token wins.
#[derive(Debug)]
struct Chain(Vec<(&'static str, Arc<dyn TokenCredential>)>);

#[async_trait::async_trait]
impl TokenCredential for Chain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let mut failures = Vec::new();
        for (name, credential) in &self.0 {
            match credential.get_token(scopes, options.clone()).await {
                Ok(token) => return Ok(token),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        Err(AzError::with_message(
            ErrorKind::Credential,
            format!("no Azure credential worked ({})", failures.join("; ")),
        ))
    }
}

pub struct Arm {
    pipeline: Pipeline,
    base: Url,
}

/// What a call answered, with the request ID for the audit log.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: Headers,
    pub request_id: String,
}

fn header(headers: &Headers, name: &'static str) -> Option<String> {
    headers.get_optional_string(&HeaderName::from_static(name))
}

impl Arm {
    pub fn new(config: &AzureConfig) -> ArmResult<Arm> {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        if let Some(ca) = &config.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| ArmError::Config(format!("azure.ca_file {}: {e}", ca.display())))?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| ArmError::Config(format!("azure.ca_file: {e}")))?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build().map_err(|e| ArmError::Config(e.to_string()))?;
        let transport = Transport::new(Arc::new(Reqwest(http)));
        let cloud = config.authority_host.as_ref().map(|host| {
            let mut custom = azure_core::cloud::CustomConfiguration::default();
            custom.authority_host = host.clone();
            Arc::new(azure_core::cloud::CloudConfiguration::Custom(custom))
        });
        let options =
            || ClientOptions { transport: Some(transport.clone()), cloud: cloud.clone(), ..Default::default() };
        let credential = Arc::new(Chain(credentials(config, &options)?));
        let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [SCOPE]));
        let retry = RetryOptions::exponential(ExponentialRetryOptions {
            max_retries: config.retries,
            initial_delay: azure_core::time::Duration::milliseconds(500),
            max_delay: azure_core::time::Duration::seconds(10),
            max_total_elapsed: azure_core::time::Duration::seconds(60),
        });
        let pipeline = Pipeline::new(
            Some("jit-gateway"),
            Some(env!("CARGO_PKG_VERSION")),
            ClientOptions { retry, ..options() },
            vec![],
            vec![auth],
            None,
        );
        let base =
            Url::parse(&config.arm_endpoint).map_err(|e| ArmError::Config(format!("azure.arm_endpoint: {e}")))?;
        Ok(Arm { pipeline, base })
    }

    async fn send(&self, method: Method, url: Url, body: Option<&Value>, what: &str) -> ArmResult<Answer> {
        let mut request = Request::new(url, method);
        if let Some(b) = body {
            request.insert_header("content-type", "application/json");
            request.set_body(serde_json::to_vec(b).unwrap_or_default());
        }
        let options = PipelineSendOptions { skip_checks: true, ..Default::default() };
        let response = self
            .pipeline
            .send(&Context::new(), &mut request, Some(options))
            .await
            .map_err(|e| ArmError::Transport { what: what.into(), message: e.to_string() })?;
        let (status, headers, body) = response.deconstruct();
        let request_id = header(&headers, "x-ms-request-id").unwrap_or_default();
        let body: Value = if body.as_ref().is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body.as_ref()).unwrap_or(Value::Null)
        };
        let status = u16::from(status);
        if status >= 400 && status != 404 {
            let message = body["error"]["message"].as_str().unwrap_or("no details").to_string();
            return Err(ArmError::Status { what: what.into(), status, message, request_id });
        }
        Ok(Answer { status, body, headers, request_id })
    }

    fn url(&self, path: &str, api: &str) -> ArmResult<Url> {
        let mut url =
            self.base.join(path.trim_start_matches('/')).map_err(|e| ArmError::Config(format!("{path}: {e}")))?;
        url.query_pairs_mut().append_pair("api-version", api);
        Ok(url)
    }

    /// GET a resource; `None` when it does not exist.
    pub async fn get(&self, id: &str, api: &str) -> ArmResult<Option<Value>> {
        let answer = self.send(Method::Get, self.url(id, api)?, None, &format!("GET {id}")).await?;
        Ok((answer.status != 404).then_some(answer.body))
    }

    /// GET a list, following `nextLink` pages.
    pub async fn list(&self, path: &str, api: &str) -> ArmResult<Vec<Value>> {
        let mut out = Vec::new();
        let mut next = Some(self.url(path, api)?);
        while let Some(url) = next.take() {
            let page = self.send(Method::Get, url, None, &format!("GET {path}")).await?;
            if let Some(items) = page.body["value"].as_array() {
                out.extend(items.iter().cloned());
            }
            if let Some(link) = page.body["nextLink"].as_str() {
                next = Some(self.same_host(link, path)?);
            }
        }
        Ok(out)
    }

    /// PUT, then wait for the long-running operation to finish.
    pub async fn put(&self, id: &str, api: &str, body: &Value) -> ArmResult<Answer> {
        let what = format!("PUT {id}");
        let answer = self.send(Method::Put, self.url(id, api)?, Some(body), &what).await?;
        self.finish(answer, &what).await
    }

    /// DELETE, then wait for the operation; a resource already gone is success.
    pub async fn delete(&self, id: &str, api: &str) -> ArmResult<Answer> {
        let what = format!("DELETE {id}");
        let answer = self.send(Method::Delete, self.url(id, api)?, None, &what).await?;
        if answer.status == 404 {
            return Ok(answer);
        }
        self.finish(answer, &what).await
    }

    pub async fn post(&self, path: &str, api: &str, body: &Value) -> ArmResult<Answer> {
        let what = format!("POST {path}");
        self.send(Method::Post, self.url(path, api)?, Some(body), &what).await
    }

    /// A polling URL from Azure must point at the same Resource Manager: the
    /// bearer token is attached to whatever URL is given.
    fn same_host(&self, link: &str, what: &str) -> ArmResult<Url> {
        let url = Url::parse(link)
            .map_err(|e| ArmError::Shape { what: what.into(), message: format!("bad URL {link}: {e}") })?;
        if url.host_str() != self.base.host_str()
            || url.port_or_known_default() != self.base.port_or_known_default()
            || url.scheme() != "https"
        {
            return Err(ArmError::Shape {
                what: what.into(),
                message: format!("Azure sent a URL on another host: {link}"),
            });
        }
        Ok(url)
    }

    /// Polls `Azure-AsyncOperation` (or `Location`) until the operation ends.
    async fn finish(&self, first: Answer, what: &str) -> ArmResult<Answer> {
        let async_op = header(&first.headers, "azure-asyncoperation");
        let location = header(&first.headers, "location");
        let (mut url, by_status) = match (async_op, location) {
            (Some(u), _) => (self.same_host(&u, what)?, true),
            (None, Some(u)) if first.status == 202 => (self.same_host(&u, what)?, false),
            _ => return Ok(first),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let wait = retry_after(&first.headers).unwrap_or(Duration::from_millis(500));
            tokio::time::sleep(wait).await;
            let poll = self.send(Method::Get, url.clone(), None, what).await?;
            if by_status {
                match poll.body["status"].as_str().unwrap_or("") {
                    "Succeeded" => return Ok(Answer { request_id: first.request_id, ..poll }),
                    s @ ("Failed" | "Canceled" | "Cancelled") => {
                        let detail = poll.body["error"]["message"].as_str().unwrap_or("").to_string();
                        return Err(ArmError::Operation {
                            what: what.into(),
                            status: format!("{s} {detail}").trim().into(),
                        });
                    }
                    _ => {}
                }
            } else if poll.status != 202 {
                return Ok(Answer { request_id: first.request_id, ..poll });
            } else if let Some(l) = header(&poll.headers, "location") {
                url = self.same_host(&l, what)?;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ArmError::Operation { what: what.into(), status: "still running after 5 minutes".into() });
            }
        }
    }
}

fn retry_after(headers: &Headers) -> Option<Duration> {
    header(headers, "retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(|s| Duration::from_secs(s.min(30)))
}

fn credentials(
    config: &AzureConfig,
    options: &dyn Fn() -> ClientOptions,
) -> ArmResult<Vec<(&'static str, Arc<dyn TokenCredential>)>> {
    use azure_identity::*;
    let cred = |e: azure_core::Error| ArmError::Config(format!("Azure credential: {e}"));
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut chain: Vec<(&'static str, Arc<dyn TokenCredential>)> = Vec::new();
    if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        let o = WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions { client_options: options() },
            ..Default::default()
        };
        chain.push(("workload identity", WorkloadIdentityCredential::new(Some(o)).map_err(cred)?));
    }
    let secret = match (&config.client_secret_file, env("AZURE_CLIENT_SECRET")) {
        (Some(path), _) => Some(Secret::new(
            std::fs::read_to_string(path)
                .map_err(|e| ArmError::Config(format!("azure.client_secret_file {}: {e}", path.display())))?
                .trim()
                .to_string(),
        )),
        (None, Some(s)) => Some(Secret::new(s)),
        _ => None,
    };
    let tenant = config.tenant_id.clone().or_else(|| env("AZURE_TENANT_ID"));
    let client = config.client_id.clone().or_else(|| env("AZURE_CLIENT_ID"));
    if let (Some(secret), Some(tenant), Some(client)) = (secret, tenant, client) {
        let o = ClientSecretCredentialOptions { client_options: options() };
        let c = ClientSecretCredential::new(
            &tenant,
            client,
            azure_core::credentials::Secret::new(secret.expose().clone()),
            Some(o),
        )
        .map_err(cred)?;
        chain.push(("client secret", c));
    }
    if config.managed_identity {
        let o = ManagedIdentityCredentialOptions { client_options: options(), ..Default::default() };
        chain.push(("managed identity", ManagedIdentityCredential::new(Some(o)).map_err(cred)?));
    }
    if config.azure_cli {
        chain.push(("Azure CLI", AzureCliCredential::new(None).map_err(cred)?));
    }
    if chain.is_empty() {
        return Err(ArmError::Config("no Azure credential is configured (azure.client_id + client_secret_file, managed_identity, workload identity, or azure_cli)".into()));
    }
    Ok(chain)
}
