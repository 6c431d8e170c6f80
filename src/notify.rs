//! Webhook notifications of new requests and decisions, in the JSON shape
//! that Slack- and Teams-compatible incoming webhooks accept (`{"text": ...}`).
//!
//! Sending happens in the background with retries and backoff; a webhook that
//! is down never delays or blocks a decision. Failures are logged.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Incoming-webhook URL (https; plain http only on loopback).
    pub webhook_url: String,
    /// Attempts after the first, with doubling pauses from 1s.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_retries() -> u32 {
    3
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl NotifyConfig {
    pub fn problem(&self) -> Option<String> {
        let url = match reqwest::Url::parse(&self.webhook_url) {
            Ok(u) => u,
            Err(e) => return Some(format!("not a URL: {e}")),
        };
        let loopback =
            matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback()) || url.host_str() == Some("localhost");
        match url.scheme() {
            "https" => None,
            "http" if loopback => None,
            _ => Some("must be https (http only on loopback)".into()),
        }
    }
}

#[derive(Clone)]
pub struct Notifier {
    config: Option<NotifyConfig>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(config: Option<NotifyConfig>) -> Notifier {
        let timeout = config.as_ref().map_or(default_timeout(), |c| c.timeout);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Notifier { config, http }
    }

    /// Sends `text` in the background; returns at once.
    pub fn send(&self, text: String) {
        let Some(config) = self.config.clone() else { return };
        let http = self.http.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({ "text": text });
            let mut pause = Duration::from_secs(1);
            for attempt in 0..=config.retries {
                match http.post(&config.webhook_url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => tracing::warn!(status = %r.status(), attempt, "webhook refused the notification"),
                    Err(e) => tracing::warn!(error = %e, attempt, "webhook unreachable"),
                }
                if attempt < config.retries {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
            tracing::error!("webhook notification dropped after {} attempts", config.retries + 1);
        });
    }
}
