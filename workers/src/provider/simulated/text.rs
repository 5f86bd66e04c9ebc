//! The simulated provider's text: deterministic replies, so the same prompt always gets the same
//! text and tests can compare what was streamed with what was stored, and a replay with what was
//! first sent; and the rule by which it counts a prompt's tokens.
//!
//! The mock provider (`chatq-mock-llm`) answers with this same text and counts with this same
//! rule, so a test's expectation holds whichever of the two produced the reply.

use chatq_common::chat::{ChatMessage, estimate_tokens};

const VOCABULARY: &[&str] = &[
    "the",
    "queue",
    "keeps",
    "every",
    "request",
    "safe",
    "while",
    "workers",
    "pull",
    "jobs",
    "and",
    "answer",
    "them",
    "in",
    "order",
    "a",
    "reply",
    "streams",
    "token",
    "by",
    "through",
    "NATS",
    "to",
    "Postgres",
    "which",
    "remembers",
    "it",
    "all",
    "so",
    "nothing",
    "is",
    "lost",
    "when",
    "something",
    "breaks",
    "on",
    "purpose",
    "load",
    "spreads",
    "across",
    "processes",
    "that",
    "scale",
    "out",
    "calmly",
    "under",
    "pressure",
    "with",
    "bounded",
    "memory",
];

/// FNV-1a over the roles and contents of a prompt.
fn prompt_hash(messages: &[ChatMessage]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for message in messages {
        for byte in message
            .role
            .as_str()
            .bytes()
            .chain([0])
            .chain(message.content.bytes())
            .chain([0xff])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A well-mixed number from a seed (SplitMix64).
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The reply to a prompt, as `count` tokens. Joined, they form the whole text (every token but
/// the first starts with a space).
pub fn reply_tokens(messages: &[ChatMessage], count: usize) -> Vec<String> {
    let hash = prompt_hash(messages);
    (0..count as u64)
        .map(|i| {
            let index = usize::try_from(mix(hash ^ i) % VOCABULARY.len() as u64).unwrap_or(0);
            let word = VOCABULARY[index];
            if i == 0 {
                let mut capitalised = word.to_owned();
                if let Some(first) = capitalised.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                capitalised
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// Prompt tokens as the simulated provider (and the mock) count them: the estimate of each
/// message's content, plus 4 for its role and framing.
pub fn prompt_tokens(messages: &[ChatMessage]) -> u32 {
    let tokens: usize = messages
        .iter()
        .map(|m| estimate_tokens(&m.content) + 4)
        .sum();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatq_common::chat::Role;

    #[test]
    fn the_same_prompt_gets_the_same_reply_and_another_prompt_another() {
        let a = vec![ChatMessage::new(Role::User, "hello")];
        let b = vec![ChatMessage::new(Role::User, "hello!")];
        assert_eq!(reply_tokens(&a, 12), reply_tokens(&a, 12));
        assert_ne!(reply_tokens(&a, 12), reply_tokens(&b, 12));
        assert_eq!(reply_tokens(&a, 12).len(), 12);
        assert!(reply_tokens(&a, 3)[1].starts_with(' '));
    }
}
