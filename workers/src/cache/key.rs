//! Which requests may be cached, and the key they are cached under.
//!
//! Only a deterministic request may be served a stored reply: temperature 0, or a fixed `seed`
//! (the provider then promises the same answer, as far as it can). Anything sampled would lose
//! its variety, so it is never cached.
//!
//! The key is a SHA-256 over everything that can change the reply: the scope (the tenant, unless
//! the operator widened it), the provider, the model, and the request exactly as it is sent: a
//! chat completion's whole body (messages, tools, `response_format`, `n`, `stop`, token limits,
//! every pass-through parameter), or a conversation turn's prompt window and its parameters.
//! JSON objects are hashed with their keys sorted and every part carries its length, so the same
//! request always hashes alike and two different ones never run together.
//!
//! The semantic tier groups requests by their [`Neighbourhood`]: the same hash, over the same
//! parts, with the text of the last user message left out (and the embedding model put in).
//! Two requests of one neighbourhood differ in that wording alone, so only it is compared, by
//! embedding; anything else that differs (a system prompt, earlier turns, a parameter, a tool)
//! puts them in different neighbourhoods, which never share a reply.

use std::fmt;

use chatq_common::chat::{ChatMessage, Role};
use chatq_common::ids::TenantId;
use chatq_common::settings::CacheScope;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::provider::ProviderRequest;

/// Bumped when what goes into a key changes, so old entries are never read with a new meaning.
const KEY_VERSION: &[u8] = b"chatq-reply-cache-v1";
/// Likewise for neighbourhoods.
const NEIGHBOURHOOD_VERSION: &[u8] = b"chatq-semantic-neighbourhood-v1";

/// The SHA-256 a reply is cached under.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The hex form, as the shared tier's keys and eviction notices carry it.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads the hex form back.
    pub fn from_hex(text: &str) -> Option<Self> {
        Self::from_slice(&hex::decode(text.trim()).ok()?)
    }

    /// Reads the raw hash back.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The raw hash, as the semantic tier's table stores it.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.hex()[..12])
    }
}

/// Whether the request asks for a reproducible answer and did not opt out of the cache.
pub fn is_cacheable(request: &ProviderRequest) -> bool {
    request.params.cacheable()
}

/// The key of `request` from `tenant` to `provider`, or `None` when it may not be cached.
pub fn key_for(
    scope: CacheScope,
    tenant: TenantId,
    provider: &str,
    request: &ProviderRequest,
) -> Option<CacheKey> {
    if !is_cacheable(request) {
        return None;
    }
    let mut hasher = scoped_hasher(KEY_VERSION, scope, tenant, provider, request);
    match &request.body {
        Some(body) => hash_body(&mut hasher, body),
        None => hash_turn(&mut hasher, &request.messages, request),
    }
    Some(CacheKey(hasher.finalize().into()))
}

/// A cacheable request as the semantic tier sees it: the requests it may share a reply with,
/// and the wording it is compared by.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbourhood {
    /// The hash of everything but the last user message's text.
    pub key: CacheKey,
    /// The last user message's text.
    pub question: String,
}

/// The neighbourhood of `request`, or `None` when the semantic tier should leave it alone: it
/// may not be cached at all, or it does not end with a user message of plain text (a chat
/// completion's content parts, a tool result, an assistant prefix), whose meaning an embedding
/// of words would not capture.
pub fn neighbourhood_for(
    scope: CacheScope,
    tenant: TenantId,
    provider: &str,
    embedding_model: &str,
    request: &ProviderRequest,
) -> Option<Neighbourhood> {
    if !is_cacheable(request) {
        return None;
    }
    let mut hasher = scoped_hasher(NEIGHBOURHOOD_VERSION, scope, tenant, provider, request);
    part(&mut hasher, embedding_model.as_bytes());
    let question = match &request.body {
        Some(body) => {
            let mut body = body.clone();
            let last = body
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .and_then(|messages| messages.last_mut())
                .and_then(Value::as_object_mut)
                .filter(|message| message.get("role").and_then(Value::as_str) == Some("user"))?;
            let Some(Value::String(question)) = last.insert("content".into(), Value::Null) else {
                return None;
            };
            hash_body(&mut hasher, &body);
            question
        }
        None => {
            let mut messages = request.messages.clone();
            let last = messages.last_mut().filter(|m| m.role == Role::User)?;
            let question = std::mem::take(&mut last.content);
            hash_turn(&mut hasher, &messages, request);
            question
        }
    };
    Some(Neighbourhood {
        key: CacheKey(hasher.finalize().into()),
        question,
    })
}

/// A hasher that has taken the parts every key starts with: what it is, whose, and whose model.
fn scoped_hasher(
    version: &[u8],
    scope: CacheScope,
    tenant: TenantId,
    provider: &str,
    request: &ProviderRequest,
) -> Sha256 {
    let mut hasher = Sha256::new();
    part(&mut hasher, version);
    match scope {
        CacheScope::Tenant => part(&mut hasher, tenant.to_string().as_bytes()),
        CacheScope::Global => part(&mut hasher, b"*"),
    }
    part(&mut hasher, provider.as_bytes());
    part(&mut hasher, request.params.model.as_bytes());
    hasher
}

/// A chat completion's body, as sent.
fn hash_body(hasher: &mut Sha256, body: &Map<String, Value>) {
    part(hasher, b"body");
    json(hasher, &Value::Object(body.clone()));
}

/// A conversation turn's prompt window and parameters.
fn hash_turn(hasher: &mut Sha256, messages: &[ChatMessage], request: &ProviderRequest) {
    part(hasher, b"turn");
    let messages = serde_json::to_value(messages).unwrap_or(Value::Null);
    json(hasher, &messages);
    let params = serde_json::to_value(&request.params).unwrap_or(Value::Null);
    json(hasher, &params);
}

/// A length-prefixed part, so consecutive parts cannot run into each other.
fn part(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// A JSON value with its type tagged and object keys in sorted order, whatever order they came
/// in (and whatever order `serde_json` keeps them in).
fn json(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Null => part(hasher, b"n"),
        Value::Bool(b) => part(hasher, if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            part(hasher, b"#");
            part(hasher, n.to_string().as_bytes());
        }
        Value::String(s) => {
            part(hasher, b"s");
            part(hasher, s.as_bytes());
        }
        Value::Array(items) => {
            part(hasher, b"[");
            hasher.update((items.len() as u64).to_be_bytes());
            for item in items {
                json(hasher, item);
            }
        }
        Value::Object(map) => {
            part(hasher, b"{");
            hasher.update((map.len() as u64).to_be_bytes());
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for key in keys {
                part(hasher, key.as_bytes());
                json(hasher, &map[key]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chatq_common::chat::{ChatMessage, GenerationParams, Role};
    use chatq_common::job::Lane;
    use serde_json::json;

    use super::*;

    fn turn(temperature: Option<f64>, seed: Option<i64>, text: &str) -> ProviderRequest {
        ProviderRequest {
            messages: vec![ChatMessage::new(Role::User, text)],
            params: GenerationParams {
                model: "m".into(),
                temperature,
                seed,
                ..GenerationParams::default()
            },
            body: None,
            lane: Lane::Interactive,
        }
    }

    fn body(value: Value) -> ProviderRequest {
        let Value::Object(map) = value else {
            panic!("an object")
        };
        ProviderRequest {
            body: Some(map),
            ..turn(Some(0.0), None, "")
        }
    }

    #[test]
    fn only_deterministic_requests_without_an_opt_out_are_cached() {
        let tenant = TenantId::new();
        let key = |r: &ProviderRequest| key_for(CacheScope::Tenant, tenant, "p", r);
        assert!(key(&turn(Some(0.0), None, "hi")).is_some());
        assert!(key(&turn(Some(0.7), Some(3), "hi")).is_some());
        assert!(key(&turn(None, None, "hi")).is_none());
        assert!(key(&turn(Some(0.2), None, "hi")).is_none());
        let mut opted_out = turn(Some(0.0), None, "hi");
        opted_out.params.no_cache = true;
        assert!(key(&opted_out).is_none());
    }

    #[test]
    fn the_key_changes_with_tenant_provider_prompt_and_parameters_only() {
        let (a, b) = (TenantId::new(), TenantId::new());
        let request = turn(Some(0.0), None, "hi");
        let key = |scope, tenant, provider: &str, r: &ProviderRequest| {
            key_for(scope, tenant, provider, r).unwrap()
        };
        let base = key(CacheScope::Tenant, a, "p", &request);
        assert_eq!(base, key(CacheScope::Tenant, a, "p", &request.clone()));
        assert_ne!(base, key(CacheScope::Tenant, b, "p", &request));
        assert_ne!(base, key(CacheScope::Tenant, a, "q", &request));
        assert_ne!(
            base,
            key(CacheScope::Tenant, a, "p", &turn(Some(0.0), None, "ho"))
        );
        let mut longer = request.clone();
        longer.params.max_tokens = Some(5);
        assert_ne!(base, key(CacheScope::Tenant, a, "p", &longer));
        assert_eq!(
            key(CacheScope::Global, a, "p", &request),
            key(CacheScope::Global, b, "p", &request)
        );
    }

    #[test]
    fn a_body_hashes_alike_whatever_its_key_order_and_apart_for_any_parameter() {
        let tenant = TenantId::new();
        let key = |r: &ProviderRequest| key_for(CacheScope::Tenant, tenant, "p", r).unwrap();
        let one = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"a": 1, "b": 2}]}),
        );
        let same = body(
            json!({"tools": [{"b": 2, "a": 1}], "messages": [{"content": "x", "role": "user"}], "model": "m"}),
        );
        let other = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"a": 1, "b": 3}]}),
        );
        let formatted = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"a": 1, "b": 2}], "response_format": {"type": "json_object"}}),
        );
        assert_eq!(key(&one), key(&same));
        assert_ne!(key(&one), key(&other));
        assert_ne!(key(&one), key(&formatted));
        assert_eq!(CacheKey::from_hex(&key(&one).hex()), Some(key(&one)));
    }

    #[test]
    fn a_neighbourhood_leaves_out_the_last_user_message_and_nothing_else() {
        let (a, b) = (TenantId::new(), TenantId::new());
        let near = |tenant, r: &ProviderRequest| {
            neighbourhood_for(CacheScope::Tenant, tenant, "p", "e", r)
        };
        let hi = near(a, &turn(Some(0.0), None, "hi there")).unwrap();
        let hello = near(a, &turn(Some(0.0), None, "hello there")).unwrap();
        assert_eq!(hi.key, hello.key);
        assert_eq!(hello.question, "hello there");
        assert_ne!(
            hi.key,
            near(b, &turn(Some(0.0), None, "hi there")).unwrap().key
        );
        let other_model = neighbourhood_for(
            CacheScope::Tenant,
            a,
            "p",
            "f",
            &turn(Some(0.0), None, "hi"),
        );
        assert_ne!(hi.key, other_model.unwrap().key);
        let mut longer = turn(Some(0.0), None, "hi there");
        longer.params.max_tokens = Some(5);
        assert_ne!(hi.key, near(a, &longer).unwrap().key);
        let mut with_system = turn(Some(0.0), None, "hi there");
        with_system
            .messages
            .insert(0, ChatMessage::new(Role::System, "be brief"));
        assert_ne!(hi.key, near(a, &with_system).unwrap().key);
        assert!(near(a, &turn(Some(0.5), None, "hi there")).is_none());

        let completion = |content: Value| {
            body(json!({"model": "m", "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": content},
            ]}))
        };
        let one = near(a, &completion(json!("what is a queue"))).unwrap();
        let two = near(a, &completion(json!("what's a queue?"))).unwrap();
        assert_eq!(one.key, two.key);
        assert_eq!(two.question, "what's a queue?");
        assert!(near(a, &completion(json!([{"type": "text", "text": "x"}]))).is_none());
        let assistant_last = body(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
        ]}));
        assert!(near(a, &assistant_last).is_none());
    }
}
