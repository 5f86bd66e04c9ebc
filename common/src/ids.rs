//! Typed identifiers.
//!
//! Every id is a UUIDv7 (time-ordered, so inserts stay at the right edge of an index) stored as a
//! Postgres `uuid`, and shown to clients with a prefix that says what it names: `conv_…`, `msg_…`,
//! `job_…`. A job id cannot be passed where a conversation id is expected, in Rust or over HTTP,
//! and a malformed id is rejected before any query runs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// An id string that is not of the expected kind or form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid {kind} id (expected `{prefix}_` followed by 32 hex digits)")]
pub struct InvalidId {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub input: String,
}

macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub const KIND: &'static str = $kind;

            /// A new id, ordered after ids made earlier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(input: &str) -> Result<Self, InvalidId> {
                let invalid = || InvalidId { kind: $kind, prefix: $prefix, input: input.to_owned() };
                let hex = input
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or_else(invalid)?;
                if hex.len() != 32 {
                    return Err(invalid());
                }
                Uuid::try_parse(hex).map(Self).map_err(|_| invalid())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        /// In the OpenAPI document: a string of the text form above.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema($prefix, $kind)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

fn id_schema(prefix: &str, kind: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^{prefix}_[0-9a-fA-F]{{32}}$")))
        .description(Some(format!("A {kind} id: `{prefix}_` and 32 hex digits.")))
        .examples([format!("{prefix}_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b")])
        .into()
}

typed_id!(
    /// A tenant: the owner of keys, conversations and jobs.
    TenantId, "tenant", "tenant"
);
typed_id!(
    /// An API key's id (not the key itself, which is never stored).
    ApiKeyId, "key", "API key"
);
typed_id!(
    /// A conversation.
    ConversationId, "conv", "conversation"
);
typed_id!(
    /// A message in a conversation.
    MessageId, "msg", "message"
);
typed_id!(
    /// A job: one request to the provider, queued, run and recorded.
    JobId, "job", "job"
);
typed_id!(
    /// A file: an upload for batches, or a batch's output or errors.
    FileId, "file", "file"
);
typed_id!(
    /// A batch: the lines of an input file, each run as a job on the batch lane.
    BatchId, "batch", "batch"
);
typed_id!(
    /// A response of the Responses API: the same uuid as the job that answers it.
    ResponseId, "resp", "response"
);
typed_id!(
    /// A tenant's webhook endpoint: a URL, the events it wants, and its signing secret.
    WebhookId, "wh", "webhook"
);
typed_id!(
    /// A webhook event, as delivered to one endpoint: its `webhook-id`, the same on every retry.
    EventId, "evt", "webhook event"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = JobId::new();
        let text = id.to_string();
        assert!(text.starts_with("job_"));
        assert_eq!(text.parse::<JobId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), id);
    }

    #[test]
    fn ids_of_another_kind_or_form_are_rejected() {
        let conv = ConversationId::new().to_string();
        let err = conv.parse::<JobId>().unwrap_err();
        assert_eq!(err.kind, "job");
        assert!("job_xyz".parse::<JobId>().is_err());
        assert!("job_".parse::<JobId>().is_err());
        let uuid_with_dashes = format!("job_{}", Uuid::now_v7());
        assert!(uuid_with_dashes.parse::<JobId>().is_err());
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let first = MessageId::new();
        let second = MessageId::new();
        assert!(second > first);
    }
}
