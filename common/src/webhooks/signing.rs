//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), so a receiver verifies a
//! delivery with the `openai` SDK's `webhooks.unwrap` or any `standardwebhooks` library.
//!
//! A delivery carries three headers: `webhook-id` (the delivery's stable id: a retry sends the
//! same one, so a receiver can drop a repeat), `webhook-timestamp` (Unix seconds, so a receiver
//! can refuse a replayed old message) and `webhook-signature`: `v1,` then the base64 HMAC-SHA256
//! of `<id>.<timestamp>.<body>` under the endpoint's secret. The secret is shown to the tenant once,
//! as `whsec_` followed by the base64 key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

/// The prefix of a secret as shown to its tenant.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key in a new secret.
const SECRET_BYTES: usize = 32;
/// SHA-256's block size, which HMAC pads its key to.
const BLOCK: usize = 64;

/// An endpoint's signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// A secret that is not `whsec_` followed by base64.
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret is 'whsec_' followed by base64")]
pub struct InvalidSecret;

impl WebhookSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// Reads a secret as shown (`whsec_…`), or its bare base64.
    ///
    /// # Errors
    /// Not base64, or empty.
    pub fn parse(text: &str) -> Result<Self, InvalidSecret> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = STANDARD.decode(encoded).map_err(|_| InvalidSecret)?;
        if key.is_empty() {
            return Err(InvalidSecret);
        }
        Ok(Self(key))
    }

    /// A stored key (see [`WebhookSecret::key`]).
    pub fn from_key(key: Vec<u8>) -> Self {
        Self(key)
    }

    /// The raw key, to store: deliveries are signed with it, so it is kept as it is, not hashed.
    pub fn key(&self) -> &[u8] {
        &self.0
    }

    /// The secret as shown to its tenant, once: `whsec_<base64>`.
    pub fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The `webhook-signature` header value for a delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    /// Whether `signatures` (a `webhook-signature` header: space-separated `v1,<base64>`) holds
    /// a valid signature of the delivery.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], signatures: &str) -> bool {
        let expected = self.mac(id, timestamp, body);
        signatures
            .split_whitespace()
            .filter_map(|signature| signature.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            .any(|given| constant_time_eq(&given, &expected))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut message = Vec::with_capacity(id.len() + 24 + body.len());
        message.extend_from_slice(id.as_bytes());
        message.push(b'.');
        message.extend_from_slice(timestamp.to_string().as_bytes());
        message.push(b'.');
        message.extend_from_slice(body);
        hmac_sha256(&self.0, &message)
    }
}

/// HMAC-SHA256 (RFC 2104), over the `sha2` hash chatq already uses.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_key: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_key: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_key)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_key)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares without stopping at the first difference, so timing tells nothing of the signature.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_the_specifications_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
            &format!("v1,bm90IGl0 {signature}")
        ));
        assert!(!secret.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            b"{}",
            &signature
        ));
        assert!(!secret.verify("msg_other", 1_614_265_330, body, &signature));
    }

    #[test]
    fn hmac_matches_rfc_4231_with_a_long_key() {
        // RFC 4231, test case 6: a 131-byte key, hashed first.
        let key = [0xaa_u8; 131];
        let mac = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_new_secret_reads_back_and_never_prints() {
        let secret = WebhookSecret::generate();
        let shown = secret.reveal();
        assert!(shown.starts_with(SECRET_PREFIX));
        assert_eq!(WebhookSecret::parse(&shown).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&shown[6..]));
        assert!(WebhookSecret::parse("whsec_!!").is_err());
        assert!(WebhookSecret::parse("whsec_").is_err());
    }
}
