//! One delivery attempt: the signed POST, through a client that cannot be turned against the
//! network it runs in.
//!
//! The client follows no redirects (a 3xx is a failed attempt), uses no proxy from the
//! environment, connects and answers within short timeouts, and reads at most
//! [`MAX_RESPONSE_BYTES`] of an answer. Every name is resolved by [`GuardedResolver`], which
//! refuses the connection when an address is not public ([`target`]), so the check holds for the
//! address actually connected to, on every attempt; a URL with a literal address is checked
//! before sending.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use chatq_common::db::webhooks::DueDelivery;
use chatq_common::settings::WebhookSettings;
use chatq_common::webhooks::events;
use chatq_common::webhooks::target::{self, TargetError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use time::OffsetDateTime;
use url::{Host, Url};

use crate::retry_after::retry_after;

/// Most bytes read from a receiver's answer (its body is not used; reading a little lets the
/// connection be reused).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// A status other than 2xx, with the wait the receiver asked for (`Retry-After`).
    #[error("the receiver answered HTTP {0}")]
    Status(u16, Option<Duration>),
    #[error("the receiver did not answer in time")]
    Timeout,
    #[error("cannot connect to the receiver: {0}")]
    Connect(String),
    #[error("{0}")]
    RefusedTarget(TargetError),
    #[error("the delivery failed: {0}")]
    Other(String),
}

impl AttemptError {
    /// How long the receiver asked to be left alone, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status(_, retry_after) => *retry_after,
            _ => None,
        }
    }

    /// The `reason` label of `chatq_webhook_failed_attempts_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AttemptError::Status(..) => "status",
            AttemptError::Timeout => "timeout",
            AttemptError::Connect(_) => "connect",
            AttemptError::RefusedTarget(_) => "refused_target",
            AttemptError::Other(_) => "other",
        }
    }
}

/// Resolves names for the delivery client, refusing any that resolve to a non-public address
/// (unless the operator allows them).
#[derive(Debug, Clone, Copy)]
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let addrs = target::resolve(&host, 0, allow_private).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Sends deliveries.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(settings: &WebhookSettings) -> anyhow::Result<Self> {
        // As for the provider's client: ring for TLS (reqwest has no default crypto backend).
        drop(rustls::crypto::ring::default_provider().install_default());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs.max(1)))
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .pool_max_idle_per_host(4)
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: settings.allow_private_targets,
            }))
            .user_agent(concat!("chatq-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            allow_private: settings.allow_private_targets,
        })
    }

    /// One attempt: `Ok` when the receiver answered 2xx.
    ///
    /// # Errors
    /// Anything else, as an [`AttemptError`].
    pub async fn send(&self, delivery: &DueDelivery) -> Result<(), AttemptError> {
        let url = Url::parse(&delivery.url).map_err(|err| AttemptError::Other(err.to_string()))?;
        let host = url.host_str().unwrap_or_default();
        match url.host() {
            Some(Host::Ipv4(ip)) => target::allowed(host, ip.into(), self.allow_private),
            Some(Host::Ipv6(ip)) => target::allowed(host, ip.into(), self.allow_private),
            _ => Ok(()),
        }
        .map_err(AttemptError::RefusedTarget)?;
        let body = serde_json::to_vec(&events::payload(
            delivery.id,
            &delivery.event,
            delivery.object_id,
            delivery.created_at,
        ))
        .map_err(|err| AttemptError::Other(err.to_string()))?;
        let id = delivery.id.to_string();
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature = delivery.secret.sign(&id, timestamp, &body);
        let mut response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut read = 0;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                // The answer's status is what counts; a body cut short changes nothing.
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status(status.as_u16(), retry_after))
        }
    }
}

/// What a failed request was: a refused target (found in the cause chain, from the resolver),
/// a timeout, a connection that could not be made, or anything else.
fn classify(err: reqwest::Error) -> AttemptError {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<TargetError>() {
            return AttemptError::RefusedTarget(refused.clone());
        }
        source = cause.source();
    }
    if err.is_timeout() {
        AttemptError::Timeout
    } else if err.is_connect() {
        AttemptError::Connect(error_chain(&err))
    } else {
        AttemptError::Other(error_chain(&err))
    }
}

fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever provider the worker calls (the simulated one builds no HTTP client), the
    /// delivery client builds: it installs its TLS crypto backend itself. (nextest runs each test
    /// in a process of its own, so nothing installed one before.)
    #[test]
    fn the_client_builds_in_a_process_that_installed_no_tls_backend() {
        let settings = chatq_common::Settings::default().webhooks;
        assert!(Sender::new(&settings).is_ok());
    }
}
