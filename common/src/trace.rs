//! W3C Trace Context: the `traceparent` that makes one request one trace, from the ingress to the
//! worker that writes the reply.
//!
//! A `traceparent` is `00-<trace id>-<parent id>-<flags>`: 32 and 16 lowercase hex digits and two
//! more (<https://www.w3.org/TR/trace-context/#traceparent-header>). chatq does not export spans to
//! a tracing system; it carries the trace id so that every log line of a request, and of the job
//! it created, names the same trace:
//!
//! - the ingress takes a valid `traceparent` from the client (keeping its trace id), or starts a
//!   new trace, and answers with its own `traceparent`;
//! - the job is recorded with that `traceparent` and published with it as a NATS message header
//!   ([`crate::queue`]), so a copy the reconciler publishes later belongs to the same trace;
//! - the worker continues the trace it finds in the message's header.
//!
//! Each of these hops is a [`TraceContext::child`] of what it received: the same trace id and
//! flags, a new parent id naming the hop. A header that does not parse (wrong length, uppercase,
//! an all-zero id, version `ff`) is ignored and a new trace starts, as the specification says.
//! `tracestate` is neither read nor sent: chatq adds nothing to it and calls no traced service.

use std::fmt;

/// The header name, in HTTP requests and responses and in NATS job messages.
pub const TRACEPARENT: &str = "traceparent";

/// The flags of a trace chatq starts: sampled, because every request is recorded (its log lines
/// carry the trace id).
const SAMPLED: u8 = 0x01;

/// The length of a version `00` `traceparent`, and of the part a later version starts with.
const LEN: usize = 55;

/// A trace id: 16 bytes, never all zero. Shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Where a piece of work sits in its trace: the trace, the span that caused it (the parent id),
/// and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: TraceId,
    /// Never zero.
    parent_id: u64,
    flags: u8,
}

impl TraceContext {
    /// A new trace, with random ids.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId(nonzero(rand::random)),
            parent_id: nonzero(rand::random),
            flags: SAMPLED,
        }
    }

    /// The context of work done for a caller that sent `traceparent` (or none): the caller's
    /// trace, with a new parent id for this hop, or a new trace if the header is missing or
    /// invalid.
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        traceparent
            .and_then(Self::parse)
            .map_or_else(Self::new_root, |caller| caller.child())
    }

    /// The same trace and flags, with a new parent id: what this hop passes on.
    pub fn child(&self) -> Self {
        Self {
            parent_id: nonzero(rand::random),
            ..*self
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// Parses a `traceparent` header value; `None` if it is not a valid one.
    ///
    /// Version `00` must be exactly 55 characters. A later version (not `ff`) may add fields
    /// after them, separated by `-`; its first four fields are read as version `00`'s, and it is
    /// passed on as version `00`.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim_matches([' ', '\t']);
        let version = header.get(..2)?;
        if !is_lower_hex(version) || version == "ff" {
            return None;
        }
        let extra = header.get(LEN..)?;
        if !(extra.is_empty() || (version != "00" && extra.starts_with('-'))) {
            return None;
        }
        let mut fields = header.get(..LEN)?.split('-');
        let (_, trace_id, parent_id, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if fields.next().is_some() {
            return None;
        }
        let trace_id = hex_field::<16>(trace_id).map(u128::from_be_bytes)?;
        let parent_id = hex_field::<8>(parent_id).map(u64::from_be_bytes)?;
        let [flags] = hex_field::<1>(flags)?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            parent_id,
            flags,
        })
    }
}

/// The `traceparent` header value (always version `00`).
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `N` bytes from exactly `2 * N` lowercase hex digits.
fn hex_field<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !is_lower_hex(text) {
        return None;
    }
    let mut bytes = [0; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

/// A random number other than zero (an all-zero id is invalid).
fn nonzero<T: Default + PartialEq>(mut random: impl FnMut() -> T) -> T {
    loop {
        let value = random();
        if value != T::default() {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.to_string(), EXAMPLE);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            TraceContext::parse(unsampled).unwrap().to_string(),
            unsampled
        );
        // Surrounding blanks are not part of the value.
        assert_eq!(TraceContext::parse(&format!(" {EXAMPLE}\t")), Some(context));
    }

    #[test]
    fn invalid_traceparents_are_rejected() {
        for invalid in [
            "",
            "00",
            // Uppercase hex is not valid anywhere in the header.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Wrong lengths, separators, characters.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-0f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version ff is forbidden; a version must be hex.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A later version still needs a separator after the known fields.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            assert_eq!(TraceContext::parse(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(TraceContext::parse(later).unwrap().to_string(), EXAMPLE);
        let exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceContext::parse(exact).unwrap().to_string(), EXAMPLE);
    }

    #[test]
    fn a_hop_keeps_the_trace_and_names_itself() {
        let caller = TraceContext::parse(EXAMPLE).unwrap();
        let hop = TraceContext::continue_or_start(Some(EXAMPLE));
        assert_eq!(hop.trace_id(), caller.trace_id());
        assert_ne!(hop, caller, "a hop has a parent id of its own");
        assert_eq!(TraceContext::parse(&hop.to_string()), Some(hop));
        assert!(hop.to_string().ends_with("-01"));

        let started = TraceContext::continue_or_start(Some("garbage"));
        assert_ne!(started.trace_id(), caller.trace_id());
        assert_ne!(
            TraceContext::continue_or_start(None).trace_id(),
            started.trace_id()
        );
    }

    #[test]
    fn new_traces_are_valid_headers() {
        for _ in 0..100 {
            let root = TraceContext::new_root();
            let header = root.to_string();
            assert_eq!(header.len(), LEN);
            assert_eq!(TraceContext::parse(&header), Some(root), "{header}");
        }
    }
}
