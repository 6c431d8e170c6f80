//! The OpenID provider client: discovery, the device authorization grant
//! (RFC 8628) and ID token verification.
//!
//! Tokens are verified, never trusted: signature against the provider's JWKS
//! (re-fetched once when a token names a key we do not have), `iss`, `aud`,
//! `exp` (with the configured clock skew) and, where one was sent, `nonce`.
//! Only then are the claims read. Device codes, tokens and secrets stay in
//! `Secret` wrappers and are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreDeviceAuthorizationResponse,
    CoreGrantType, CoreIdToken, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::clock::SharedClock;
use crate::config::OidcConfig;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("identity provider configuration: {0}")]
    Config(String),
    #[error("identity provider unreachable or misbehaving: {0}")]
    Provider(String),
    #[error("the identity provider does not offer the device flow (no device_authorization_endpoint)")]
    NoDeviceFlow,
    #[error("sign-in was denied at the identity provider")]
    Denied,
    #[error("the sign-in code expired before it was approved")]
    Expired,
    /// The provider answered, and refused what the client brought (a wrong, expired or used code).
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    #[error("ID token rejected: {0}")]
    InvalidToken(String),
    #[error("the identity provider no longer accepts this sign-in (account disabled, signed out or access revoked)")]
    Revoked,
    #[error("the identity provider did not send the `{0}` claim (check the requested scopes and oidc.{1})")]
    MissingClaim(String, &'static str),
}

/// Who a verified ID token says the person is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedIdentity {
    pub issuer: String,
    pub subject: String,
    pub user: String,
    pub login_name: Option<String>,
    pub display_name: Option<String>,
    pub groups: Vec<String>,
    /// The provider's refresh token, when it issued one (`offline_access`): the
    /// gateway keeps it to check the person with the provider again later.
    #[serde(skip)]
    pub refresh_token: Option<Secret<String>>,
}

/// What the provider answered to a refresh.
pub struct Refreshed {
    /// The person as the new ID token says, when the provider sent one.
    pub identity: Option<VerifiedIdentity>,
    /// A new refresh token when the provider rotates them.
    pub refresh_token: Option<Secret<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpointMetadata {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpointMetadata {}

type Metadata = ProviderMetadata<
    DeviceEndpointMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

struct Discovered {
    client: Client,
    device_url: Option<DeviceAuthorizationUrl>,
    fetched: Instant,
}

/// A started device authorization: what to show the user, and what to poll with.
pub struct DeviceAuthorization {
    pub verification_uri: String,
    /// The URI with the code filled in, when the provider offers one.
    pub verification_uri_complete: Option<Secret<String>>,
    /// Shown to the user (they type or compare it), never logged.
    pub user_code: Secret<String>,
    pub expires_in: Duration,
    details: CoreDeviceAuthorizationResponse,
}

pub struct OidcClient {
    config: OidcConfig,
    secret: Option<ClientSecret>,
    http: reqwest::Client,
    clock: SharedClock,
    discovered: Mutex<Option<Arc<Discovered>>>,
}

/// Do not fetch the provider's keys again more often than this when a token names an unknown key.
const REDISCOVERY_MIN_INTERVAL: Duration = Duration::from_secs(30);

impl OidcClient {
    pub fn new(config: &OidcConfig, clock: SharedClock) -> Result<OidcClient, OidcError> {
        let secret = load_client_secret(config)?;
        let mut builder = reqwest::Client::builder()
            // Following redirects from an OAuth endpoint invites SSRF; providers don't need it.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout);
        if let Some(ca) = &config.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| OidcError::Config(format!("oidc.ca_file {}: {e}", ca.display())))?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| OidcError::Config(format!("oidc.ca_file: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| OidcError::Config(e.to_string()))?;
        Ok(OidcClient { config: config.clone(), secret, http, clock, discovered: Mutex::new(None) })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The provider's metadata and keys, fetched on first use and again when
    /// `refresh` is set (an unknown key), at most every 30 seconds.
    async fn provider(&self, refresh: bool) -> Result<Arc<Discovered>, OidcError> {
        let mut slot = self.discovered.lock().await;
        if let Some(d) = slot.as_ref()
            && (!refresh || d.fetched.elapsed() < REDISCOVERY_MIN_INTERVAL)
        {
            return Ok(Arc::clone(d));
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| OidcError::Config(e.to_string()))?;
        let metadata = Metadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Provider(format!("discovery at {}: {}", self.config.issuer, error_chain(&e))))?;
        let device_url = metadata.additional_metadata().device_authorization_endpoint.clone();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.secret.clone(),
        )
        .set_auth_type(AuthType::BasicAuth);
        let discovered = Arc::new(Discovered { client, device_url, fetched: Instant::now() });
        *slot = Some(Arc::clone(&discovered));
        Ok(discovered)
    }

    /// Starts a device authorization at the provider.
    pub async fn start_device_flow(&self) -> Result<DeviceAuthorization, OidcError> {
        let provider = self.provider(false).await?;
        let url = provider.device_url.clone().ok_or(OidcError::NoDeviceFlow)?;
        let client = provider.client.clone().set_device_authorization_url(url);
        let scopes = self.config.scopes.iter().filter(|s| *s != "openid").map(|s| Scope::new(s.clone()));
        let details: CoreDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scopes(scopes)
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Provider(format!("device authorization: {}", error_chain(&e))))?;
        Ok(DeviceAuthorization {
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details.verification_uri_complete().map(|u| Secret::new(u.secret().clone())),
            user_code: Secret::new(details.user_code().secret().clone()),
            expires_in: details.expires_in(),
            details,
        })
    }

    /// Polls the token endpoint until the user approves, denies, or the code
    /// expires (or `limit` passes), then verifies the ID token.
    pub async fn finish_device_flow(
        &self,
        auth: &DeviceAuthorization,
        limit: Duration,
    ) -> Result<VerifiedIdentity, OidcError> {
        let provider = self.provider(false).await?;
        let url = provider.device_url.clone().ok_or(OidcError::NoDeviceFlow)?;
        let client = provider.client.clone().set_device_authorization_url(url);
        let request = client
            .exchange_device_access_token(&auth.details)
            .map_err(|e| OidcError::Config(format!("token endpoint: {e}")))?;
        let timeout = auth.expires_in.min(limit);
        let response = request.request_async(&self.http, tokio::time::sleep, Some(timeout)).await.map_err(|e| {
            use openidconnect::DeviceCodeErrorResponseType as T;
            use openidconnect::RequestTokenError::ServerResponse;
            match &e {
                ServerResponse(r) if matches!(r.error(), T::AccessDenied) => OidcError::Denied,
                ServerResponse(r) if matches!(r.error(), T::ExpiredToken) => OidcError::Expired,
                _ => OidcError::Provider(format!("token endpoint: {}", error_chain(&e))),
            }
        })?;
        let _ = response.access_token(); // present by definition; never stored
        let id_token = response.extra_fields().id_token().ok_or_else(|| {
            OidcError::InvalidToken("the token response has no ID token (is `openid` among the scopes?)".into())
        })?;
        let mut verified = self.verify_id_token(&id_token.to_string(), None).await?;
        verified.refresh_token = response.refresh_token().map(|t| Secret::new(t.secret().clone()));
        Ok(verified)
    }

    /// Asks the provider whether a sign-in still stands: a refresh token grant.
    /// `Revoked` when the provider refuses the token (`invalid_grant`: the
    /// account was disabled or deleted, the session ended, the grant revoked).
    pub async fn refresh(&self, token: &Secret<String>) -> Result<Refreshed, OidcError> {
        let provider = self.provider(false).await?;
        let response = provider
            .client
            .exchange_refresh_token(&openidconnect::RefreshToken::new(token.expose().clone()))
            .map_err(|e| OidcError::Config(format!("token endpoint: {e}")))?
            .request_async(&self.http)
            .await
            .map_err(|e| {
                use openidconnect::RequestTokenError::ServerResponse;
                use openidconnect::core::CoreErrorResponseType as T;
                match &e {
                    ServerResponse(r) if matches!(r.error(), T::InvalidGrant | T::UnauthorizedClient) => {
                        OidcError::Revoked
                    }
                    _ => OidcError::Provider(format!("refresh: {}", error_chain(&e))),
                }
            })?;
        let identity = match response.extra_fields().id_token() {
            Some(id_token) => Some(self.verify_id_token(&id_token.to_string(), None).await?),
            None => None,
        };
        Ok(Refreshed { identity, refresh_token: response.refresh_token().map(|t| Secret::new(t.secret().clone())) })
    }

    /// Verifies a compact-serialized ID token and maps its claims to an identity.
    pub async fn verify_id_token(&self, raw: &str, nonce: Option<&Nonce>) -> Result<VerifiedIdentity, OidcError> {
        let token: CoreIdToken = raw.parse().map_err(|e| OidcError::InvalidToken(format!("not a JWT: {e}")))?;
        let provider = self.provider(false).await?;
        match self.check_claims(&provider.client, &token, nonce) {
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                // Maybe the provider rotated its keys: fetch them again, once.
                let provider = self.provider(true).await?;
                self.check_claims(&provider.client, &token, nonce).map_err(token_error)?;
            }
            other => other.map_err(token_error)?,
        }
        self.identity_from(raw).and_then(printable_identity)
    }

    fn check_claims(
        &self,
        client: &Client,
        token: &CoreIdToken,
        nonce: Option<&Nonce>,
    ) -> Result<(), ClaimsVerificationError> {
        let clock = Arc::clone(&self.clock);
        let skew = self.config.clock_skew;
        let verifier = client.id_token_verifier().set_time_fn(move || {
            let ms = clock.now_ms() - skew.as_millis() as i64;
            chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
        });
        let expected = nonce.cloned();
        token
            .claims(&verifier, move |got: Option<&Nonce>| match (&expected, got) {
                (None, _) => Ok(()),
                (Some(want), Some(got)) if want.secret() == got.secret() => Ok(()),
                _ => Err("nonce does not match".to_string()),
            })
            .map(|_| ())
    }

    /// Reads the claims of a token whose signature and standard claims were
    /// verified just before; the payload is the signed bytes.
    fn identity_from(&self, raw: &str) -> Result<VerifiedIdentity, OidcError> {
        let payload = raw.split('.').nth(1).ok_or_else(|| OidcError::InvalidToken("malformed JWT".into()))?;
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(payload.trim_end_matches('=').as_bytes())
            .map_err(|e| OidcError::InvalidToken(format!("payload: {e}")))?;
        let claims: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| OidcError::InvalidToken(format!("payload: {e}")))?;
        identity_from_claims(&claims, &self.config)
    }
}

/// A started browser sign-in (authorization code + PKCE): the URL to open,
/// and what the gateway keeps to finish it. Nothing here leaves the gateway
/// except the URL.
pub struct CodeLogin {
    pub authorize_url: String,
    pub state: Secret<String>,
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    redirect_uri: RedirectUrl,
}

impl OidcClient {
    /// Builds the provider's authorization URL for a loopback redirect (RFC 8252).
    pub async fn start_code_login(&self, redirect_uri: &str) -> Result<CodeLogin, OidcError> {
        let redirect =
            RedirectUrl::new(redirect_uri.to_string()).map_err(|e| OidcError::Config(format!("redirect URI: {e}")))?;
        let provider = self.provider(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let scopes = self.config.scopes.iter().filter(|s| *s != "openid").map(|s| Scope::new(s.clone()));
        let (url, state, nonce) = provider
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(scopes)
            .set_pkce_challenge(challenge)
            .set_redirect_uri(std::borrow::Cow::Owned(redirect.clone()))
            .url();
        Ok(CodeLogin {
            authorize_url: url.to_string(),
            state: Secret::new(state.secret().clone()),
            verifier,
            nonce,
            redirect_uri: redirect,
        })
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID token and its nonce.
    pub async fn finish_code_login(&self, login: CodeLogin, code: &str) -> Result<VerifiedIdentity, OidcError> {
        let provider = self.provider(false).await?;
        let response = provider
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Config(format!("token endpoint: {e}")))?
            .set_pkce_verifier(login.verifier)
            .set_redirect_uri(std::borrow::Cow::Owned(login.redirect_uri))
            .request_async(&self.http)
            .await
            .map_err(|e| code_exchange_error(&e))?;
        let id_token = response
            .extra_fields()
            .id_token()
            .ok_or_else(|| OidcError::InvalidToken("the token response has no ID token".into()))?;
        let mut verified = self.verify_id_token(&id_token.to_string(), Some(&login.nonce)).await?;
        verified.refresh_token = response.refresh_token().map(|t| Secret::new(t.secret().clone()));
        Ok(verified)
    }
}

/// Maps verified claims to an identity, using the configured claim names.
pub fn identity_from_claims(claims: &serde_json::Value, config: &OidcConfig) -> Result<VerifiedIdentity, OidcError> {
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_string).filter(|s| !s.is_empty());
    let issuer = text("iss").ok_or_else(|| OidcError::InvalidToken("no iss".into()))?;
    let subject = text("sub").ok_or_else(|| OidcError::InvalidToken("no sub".into()))?;
    let user =
        text(&config.user_claim).ok_or_else(|| OidcError::MissingClaim(config.user_claim.clone(), "user_claim"))?;
    if config.user_claim == "email" {
        // Some providers send the flag as a string ("true"), as Cognito once did.
        let verified = match claims.get("email_verified") {
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(serde_json::Value::String(s)) => Some(s == "true"),
            _ => None,
        };
        match verified {
            Some(true) => {}
            Some(false) => {
                return Err(OidcError::InvalidToken("the provider says this email address is not verified".into()));
            }
            None if config.assume_email_verified => {}
            None => {
                return Err(OidcError::InvalidToken(
                    "the provider does not say this email address is verified (no `email_verified` claim); \
                     name people by another claim (oidc.user_claim) or, if the provider verifies every \
                     address, set oidc.assume_email_verified"
                        .into(),
                ));
            }
        }
    }
    let groups = match claims.get(&config.groups_claim) {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    Ok(VerifiedIdentity {
        issuer,
        subject,
        user,
        login_name: text(&config.login_name_claim),
        display_name: text("name"),
        groups,
        refresh_token: None,
    })
}

/// An OAuth error answer about the code itself is the client's problem (4xx);
/// anything else (no answer, a 5xx, a client the provider does not know) is
/// the provider's or the gateway's, reported as unreachable or misbehaving.
fn code_exchange_error<RE: std::error::Error + 'static>(
    e: &openidconnect::RequestTokenError<
        RE,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> OidcError {
    use openidconnect::core::CoreErrorResponseType as T;
    if let openidconnect::RequestTokenError::ServerResponse(r) = e {
        let detail = r
            .error_description()
            .map(|d| format!(": {}", crate::logging::escape(d).chars().take(200).collect::<String>()))
            .unwrap_or_default();
        match r.error() {
            T::InvalidGrant => {
                return OidcError::Refused(format!(
                    "the authorization code is wrong, expired or already used (invalid_grant{detail}); sign in again"
                ));
            }
            T::InvalidRequest | T::InvalidScope => {
                return OidcError::Refused(format!("the code exchange was malformed ({}{detail})", r.error().as_ref()));
            }
            _ => {}
        }
    }
    OidcError::Provider(format!("code exchange: {}", error_chain(e)))
}

/// Refuses claims with control characters: names end up in logs, audit lines and CLI tables.
fn printable_identity(identity: VerifiedIdentity) -> Result<VerifiedIdentity, OidcError> {
    let names = [Some(&identity.issuer), Some(&identity.subject), Some(&identity.user)]
        .into_iter()
        .chain([identity.login_name.as_ref(), identity.display_name.as_ref()])
        .flatten()
        .chain(identity.groups.iter());
    for name in names {
        if crate::logging::has_control_chars(name) {
            return Err(OidcError::InvalidToken(format!(
                "a claim contains control characters: `{}`",
                crate::logging::escape(name).chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(identity)
}

fn token_error(e: ClaimsVerificationError) -> OidcError {
    let why = match &e {
        ClaimsVerificationError::SignatureVerification(inner) => format!("signature does not verify ({inner})"),
        ClaimsVerificationError::Expired(m) => format!("expired: {m}"),
        ClaimsVerificationError::InvalidAudience(m) => format!("wrong audience: {m}"),
        ClaimsVerificationError::InvalidIssuer(m) => format!("wrong issuer: {m}"),
        other => other.to_string(),
    };
    OidcError::InvalidToken(why)
}

fn load_client_secret(config: &OidcConfig) -> Result<Option<ClientSecret>, OidcError> {
    if let Some(path) = &config.client_secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| OidcError::Config(format!("oidc.client_secret_file {}: {e}", path.display())))?;
        return Ok(Some(ClientSecret::new(text.trim().to_string())));
    }
    if let Some(var) = &config.client_secret_env {
        let value =
            std::env::var(var).map_err(|_| OidcError::Config(format!("oidc.client_secret_env: ${var} is not set")))?;
        return Ok(Some(ClientSecret::new(value.trim().to_string())));
    }
    Ok(None)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> OidcConfig {
        toml::from_str(
            r#"issuer = "https://idp.example.test"
client_id = "jit-gateway""#,
        )
        .unwrap()
    }

    #[test]
    fn claims_map_to_an_identity() {
        let c = json!({"iss": "https://idp", "sub": "u1", "email": "alice@example.test", "email_verified": true,
                       "preferred_username": "alice", "groups": ["ops", 7, "dev"], "name": "Alice"});
        let id = identity_from_claims(&c, &config()).unwrap();
        assert_eq!(id.user, "alice@example.test");
        assert_eq!(id.login_name.as_deref(), Some("alice"));
        assert_eq!(id.groups, ["ops", "dev"]);
    }

    #[test]
    fn missing_or_unverified_user_claims_are_refused() {
        let no_email = json!({"iss": "https://idp", "sub": "u1"});
        let err = identity_from_claims(&no_email, &config()).unwrap_err().to_string();
        assert!(err.contains("`email` claim"), "{err}");
        let unverified = json!({"iss": "https://idp", "sub": "u1", "email": "a@b", "email_verified": false});
        assert!(identity_from_claims(&unverified, &config()).is_err());
    }

    #[test]
    fn an_email_without_email_verified_counts_as_unverified_unless_configured() {
        let silent = json!({"iss": "https://idp", "sub": "u1", "email": "alice@example.test"});
        let err = identity_from_claims(&silent, &config()).unwrap_err().to_string();
        assert!(err.contains("no `email_verified` claim") && err.contains("assume_email_verified"), "{err}");
        let as_text = json!({"iss": "https://idp", "sub": "u1", "email": "a@b", "email_verified": "true"});
        assert_eq!(identity_from_claims(&as_text, &config()).unwrap().user, "a@b");
        let mut trusting = config();
        trusting.assume_email_verified = true;
        assert_eq!(identity_from_claims(&silent, &trusting).unwrap().user, "alice@example.test");
        let refused = json!({"iss": "https://idp", "sub": "u1", "email": "a@b", "email_verified": false});
        assert!(identity_from_claims(&refused, &trusting).is_err(), "an explicit false is never trusted");
        // Another claim (UPN, oid...) names people without any email check.
        let mut by_upn = config();
        by_upn.user_claim = "upn".into();
        let upn = json!({"iss": "https://idp", "sub": "u1", "upn": "alice@contoso.example"});
        assert_eq!(identity_from_claims(&upn, &by_upn).unwrap().user, "alice@contoso.example");
    }
}
