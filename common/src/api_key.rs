//! API keys: how they look, how they are generated, how they are stored.
//!
//! A key is `cq_` followed by 48 hex digits (192 random bits). Postgres stores only its SHA-256:
//! with that much entropy a slow password hash adds nothing, and a fast one keeps authentication to
//! one index probe. The key is shown once, when it is created.

use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "cq_";
/// Characters of the key kept in clear, so people can tell keys apart (`cq_3fa9c1`).
const SHOWN_PREFIX_LEN: usize = 9;

/// A freshly generated key. The plaintext exists only in this value.
#[derive(Debug)]
pub struct NewApiKey {
    pub plaintext: String,
    pub hash: [u8; 32],
    pub prefix: String,
}

impl NewApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let plaintext = format!("{PREFIX}{}", hex::encode(bytes));
        Self {
            hash: hash_key(&plaintext),
            prefix: plaintext.chars().take(SHOWN_PREFIX_LEN).collect(),
            plaintext,
        }
    }
}

/// The stored form of a key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether text could be a chatq key at all (a cheap check before any lookup).
pub fn looks_like_key(text: &str) -> bool {
    text.len() == PREFIX.len() + 48
        && text.starts_with(PREFIX)
        && text[PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert!(looks_like_key(&a.plaintext));
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.hash, hash_key(&a.plaintext));
        assert!(a.plaintext.starts_with(&a.prefix));
        assert!(!looks_like_key("Bearer nonsense"));
    }
}
