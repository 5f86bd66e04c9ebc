//! The in-memory caches stay within their byte bounds in the process's memory, as the allocator
//! counts it, not only in the text they hold: a worker's memory is what an operator sizes.

#![expect(
    clippy::expect_used,
    clippy::print_stderr,
    reason = "in tests, a step that fails is the test failing, and the figures measured are shown"
)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chatq_common::chat::{ChatMessage, Role, Usage};
use chatq_common::choices::{AssistantMessage, Choice};
use chatq_common::db::jobs::ClaimedJob;
use chatq_common::ids::{ConversationId, JobId, TenantId};
use chatq_workers::cache::{CacheKey, CachedReply, memory_tier};
use chatq_workers::history::HistoryWindows;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// One heap count at a time: the allocator's counts are the process's.
static COUNTING: Mutex<()> = Mutex::new(());

/// Counts the heap from now until the guard drops.
fn counting() -> (MutexGuard<'static, ()>, dhat::Profiler) {
    let one_at_a_time = COUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (one_at_a_time, dhat::Profiler::builder().testing().build())
}

/// The heap held now, as glibc's malloc takes it: each block's bytes, an 8-byte header and, on
/// average, 8 bytes of rounding up to its 16-byte steps.
fn held() -> isize {
    let stats = dhat::HeapStats::get();
    (stats.curr_bytes + 16 * stats.curr_blocks) as isize
}

const BOUND: u64 = 4 << 20;

/// What a cache filled far past `BOUND` holds must be within the bound (moka's own fixed
/// structures allowed 10 %), and most of the bound used (weights not far above the truth).
fn assert_within_bound(what: &str, grown: isize) {
    let bound = BOUND as f64;
    let grown = grown as f64;
    eprintln!(
        "{what}: {:.0} KiB held for a bound of {:.0} KiB",
        grown / 1024.0,
        bound / 1024.0
    );
    assert!(
        grown <= bound * 1.1,
        "{what} hold {grown} bytes for a bound of {bound}"
    );
    assert!(
        grown >= bound * 0.75,
        "{what} hold only {grown} bytes for a bound of {bound}: weighed too heavy"
    );
}

fn turn(conversation: ConversationId, question: &str, answer: &str) -> ClaimedJob {
    let now = time::OffsetDateTime::now_utc();
    ClaimedJob {
        id: JobId::new(),
        tenant_id: TenantId::new(),
        conversation_id: Some(conversation),
        lane: "interactive".into(),
        request: serde_json::Value::Null,
        model: "mock-1".into(),
        attempts: 1,
        earlier_attempts: 0,
        publication: 0,
        deadline_at: now,
        created_at: now,
        system_prompt: None,
        user_seq: Some(2),
        history: vec![
            (1, ChatMessage::new(Role::User, question)),
            (2, ChatMessage::new(Role::Assistant, answer)),
        ],
        first_seq: Some(1),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn conversation_windows_take_no_more_memory_than_their_bound() {
    let _counting = counting();
    let windows = HistoryWindows::new(BOUND, 50);
    let before = held();
    // Far more conversations of one question and answer each than the bound holds.
    for n in 0..40_000 {
        let question = format!("Question {n}: what is the weather like in the mountains today?");
        let answer = format!("Answer {n}: ").repeat(20);
        let mut job = turn(ConversationId::new(), &question, &answer);
        windows.complete(&mut job, None).await;
    }
    windows.settle().await;
    assert_within_bound("conversation windows", held() - before);
}

fn reply(n: usize) -> CachedReply {
    CachedReply {
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                content: Some(format!("Reply {n}: ").repeat(40)),
                refusal: None,
                tool_calls: Vec::new(),
                reasoning_content: None,
            },
            finish_reason: "stop".into(),
            logprobs: None,
        }],
        usage: Usage {
            prompt_tokens: 12,
            completion_tokens: 80,
            total_tokens: 92,
            prompt_tokens_details: None,
            completion_tokens_details: None,
        },
        model: "mock-1".into(),
    }
}

fn key(n: usize) -> CacheKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
    CacheKey::from_slice(&bytes).expect("32 bytes")
}

#[tokio::test(flavor = "current_thread")]
async fn cached_replies_take_no_more_memory_than_their_bound() {
    let _counting = counting();
    let memory = memory_tier(BOUND, Duration::from_secs(3600));
    let before = held();
    for n in 0..20_000 {
        memory.insert(key(n), Arc::new(reply(n))).await;
    }
    memory.run_pending_tasks().await;
    assert_within_bound("cached replies", held() - before);
}

#[test]
fn a_reply_with_log_probabilities_weighs_at_least_what_it_holds() {
    let _counting = counting();
    let before = held();
    let mut with_logprobs = reply(1);
    let tokens: Vec<serde_json::Value> = (0..200)
        .map(|n| {
            serde_json::json!({
                "token": format!("tok{n}"),
                "logprob": -0.25,
                "bytes": [116, 111, 107],
                "top_logprobs": [{"token": "a", "logprob": -1.5, "bytes": [97]}],
            })
        })
        .collect();
    let mut logprobs = serde_json::Map::new();
    logprobs.insert("content".into(), serde_json::Value::Array(tokens));
    logprobs.insert("refusal".into(), serde_json::Value::Null);
    with_logprobs.choices[0].logprobs = Some(serde_json::Value::Object(logprobs));
    let held_bytes = held() - before;
    let weight = with_logprobs.weight() as isize;
    eprintln!("a reply with logprobs: weight {weight}, held {held_bytes}");
    assert!(
        weight >= held_bytes,
        "weighs {weight} bytes and holds {held_bytes}"
    );
    assert!(
        weight <= held_bytes * 2,
        "weighs {weight} bytes and holds only {held_bytes}"
    );
}
