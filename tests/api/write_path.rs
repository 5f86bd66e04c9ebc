//! The write path of the job life cycle (`common/src/db/jobs`), called directly: recording,
//! claiming and completing many jobs at once, each outcome decided as it would be for one job.
//!
//! The API tests go through it too, but there most batches hold one job; these tests put several
//! jobs, and the awkward cases, in one batch.

use std::sync::Arc;

use chatq_common::chat::{ChatMessage, GenerationParams, Role, Usage};
use chatq_common::db::jobs::{
    self, ClaimRequest, Completion, Idempotency, NewJob, NewTurnMessage, NotClaimed, Recorded,
    claim, complete, record, record_again,
};
use chatq_common::ids::{ConversationId, JobId, MessageId, TenantId};
use chatq_common::job::{JobRequest, Lane};
use uuid::Uuid;

use crate::helpers::{TestApp, TestOptions, spawn_app_with};

/// A claim of `id` with `token`, holding no window of its conversation.
fn ask(id: JobId, token: Uuid) -> ClaimRequest {
    ClaimRequest {
        id,
        token,
        known_seq: 0,
    }
}

struct Fixture {
    app: TestApp,
    tenant: TenantId,
    request: JobRequest,
}

impl Fixture {
    /// A chatq without workers, so nothing but the test touches the jobs.
    async fn start() -> Self {
        let app = spawn_app_with(TestOptions {
            workers: 0,
            ..TestOptions::default()
        })
        .await;
        let tenant = app.tenant("batch").await;
        Self {
            app,
            tenant,
            request: JobRequest::ConversationTurn {
                params: GenerationParams::default(),
            },
        }
    }

    async fn conversation(&self, system_prompt: Option<&str>) -> ConversationId {
        let created: Uuid = sqlx::query_scalar(
            "INSERT INTO conversations (id, tenant_id, title, system_prompt)
             VALUES ($1, $2, '', $3) RETURNING id",
        )
        .bind(ConversationId::new().as_uuid())
        .bind(self.tenant.as_uuid())
        .bind(system_prompt)
        .fetch_one(&self.app.pool)
        .await
        .unwrap();
        ConversationId::from_uuid(created)
    }

    fn turn(&self, conversation: ConversationId, content: &str, key: Option<&str>) -> NewJob {
        NewJob {
            id: JobId::new(),
            tenant: self.tenant,
            lane: Lane::Interactive,
            request: self.request.clone(),
            model: None,
            default_model: Some(Arc::from("mock-model")),
            idempotency: key.map(|key| Idempotency {
                key: key.to_owned(),
                request_hash: vec![1],
            }),
            deadline_secs: 600.0,
            max_queued: None,
            turn: Some(NewTurnMessage {
                conversation,
                message_id: MessageId::new(),
                content: content.to_owned(),
                max_messages: 1_000,
            }),
            trace: None,
        }
    }

    async fn claim_one(&self, id: JobId, token: Uuid) -> Result<jobs::ClaimedJob, NotClaimed> {
        claim(&self.app.pool, &[ask(id, token)], "w1", 30.0, 2, None)
            .await
            .unwrap()
            .remove(0)
    }
}

/// A conversation's messages, in order: sequence number, role, content.
async fn messages(
    pool: &chatq_common::db::Db,
    conversation: ConversationId,
) -> Vec<(i64, String, String)> {
    sqlx::query_as(
        "SELECT seq, role, content FROM messages WHERE conversation_id = $1 ORDER BY seq",
    )
    .bind(conversation.as_uuid())
    .fetch_all(pool)
    .await
    .unwrap()
}

fn seqs(outcomes: &[Recorded]) -> Vec<Option<i64>> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            Recorded::Enqueued(job) => job.seq,
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn turns_recorded_in_one_batch_are_decided_as_if_sent_one_after_another() {
    let fixture = Fixture::start().await;
    let busy = fixture.conversation(None).await;
    let quiet = fixture.conversation(None).await;
    let mut strangers = fixture.turn(quiet, "not yours", None);
    strangers.tenant = TenantId::new();
    let turns = [
        fixture.turn(busy, "hello", Some("k")),
        // A second turn for a conversation the batch has just made busy.
        fixture.turn(busy, "hello again", None),
        // The key of the first turn again, for another conversation.
        fixture.turn(quiet, "same key", Some("k")),
        // Another tenant's id for the same conversation.
        strangers,
        fixture.turn(quiet, "hello", None),
    ];
    let outcomes = record(&fixture.app.pool, &turns).await.unwrap();
    assert_eq!(
        seqs(&outcomes),
        [Some(1), None, None, None, Some(1)],
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[1], Recorded::Busy), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], Recorded::DuplicateKey),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[3], Recorded::NotFound), "{outcomes:?}");
    // Exactly what was decided was written: one message and one job per conversation, and the
    // conversations' counters moved by one.
    let written: Vec<(Uuid, i64, i32, i64)> = sqlx::query_as(
        "SELECT c.id, c.next_seq, c.message_count,
                (SELECT count(*) FROM jobs j WHERE j.conversation_id = c.id)
           FROM conversations c ORDER BY c.id",
    )
    .fetch_all(&fixture.app.pool)
    .await
    .unwrap();
    for (conversation, next_seq, message_count, jobs) in written {
        assert_eq!(
            (next_seq, message_count, jobs),
            (2, 1, 1),
            "conversation {conversation}"
        );
    }
    fixture.app.stop().await;
}

#[tokio::test]
async fn a_job_recorded_again_after_a_lost_commit_acknowledgement_is_answered_as_recorded() {
    let fixture = Fixture::start().await;
    let conversation = fixture.conversation(None).await;
    let other = fixture.conversation(None).await;
    let turns = vec![
        fixture.turn(conversation, "hello", Some("k1")),
        fixture.turn(other, "hi", None),
    ];
    let first = record(&fixture.app.pool, &turns).await.unwrap();
    // Each job again, as the fallback does after a batch whose commit took effect but whose
    // acknowledgement was lost: found recorded, not refused as busy or as a reused key.
    for (first, turn) in first.iter().zip(&turns) {
        let again = record_again(&fixture.app.pool, turn).await;
        match (first, again) {
            (Recorded::Enqueued(first), Ok(Recorded::Enqueued(again))) => {
                assert_eq!((first.seq, &first.model), (again.seq, &again.model));
            }
            other => panic!("expected the recorded jobs back, got {other:?}"),
        }
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&fixture.app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 2, "nothing was written twice");
    fixture.app.stop().await;
}

#[tokio::test]
async fn claims_and_replies_in_one_batch_are_each_decided_alone() {
    let fixture = Fixture::start().await;
    let pool = &fixture.app.pool;
    let briefed = fixture.conversation(Some("Be brief.")).await;
    let other = fixture.conversation(None).await;
    let first = [
        fixture.turn(briefed, "first question", None),
        fixture.turn(other, "another question", None),
    ];
    record(pool, &first).await.unwrap();
    let (a, b) = (first[0].id, first[1].id);
    let (token_a, token_b) = (Uuid::new_v4(), Uuid::new_v4());

    let claimed = claim(
        pool,
        &[ask(a, token_a), ask(b, token_b)],
        "w1",
        30.0,
        2,
        None,
    )
    .await
    .unwrap();
    let claimed: Vec<jobs::ClaimedJob> = claimed.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        claimed[0].history,
        [(1, ChatMessage::new(Role::User, "first question"))]
    );
    assert_eq!(
        claimed[1].history,
        [(1, ChatMessage::new(Role::User, "another question"))]
    );
    assert!(claimed.iter().all(|job| job.attempts == 1));
    assert_eq!(claimed[0].system_prompt.as_deref(), Some("Be brief."));
    // Claimed already, under a live lease: a second batch takes neither.
    let again = claim(
        pool,
        &[ask(a, Uuid::new_v4()), ask(b, Uuid::new_v4())],
        "w2",
        30.0,
        2,
        None,
    )
    .await
    .unwrap();
    assert!(
        again
            .iter()
            .all(|result| matches!(result, Err(NotClaimed::HeldElsewhere { .. }))),
        "{again:?}"
    );

    let reply = |id: JobId, token: Uuid, conversation, content: &str| Completion {
        id,
        token,
        conversation_id: Some(conversation),
        reply_message_id: MessageId::new(),
        content: content.to_owned(),
        finish_reason: "stop".into(),
        usage: Usage::default(),
        ttft_ms: Some(1),
        upstream_ms: 2,
        cache: None,
        reply_model: "mock-model".into(),
        choices: None,
    };
    // The second reply comes with a claim token that is not the job's: nothing is written for it.
    let written = complete(
        pool,
        &[
            reply(a, token_a, briefed, "short answer"),
            reply(b, Uuid::new_v4(), other, "lost"),
        ],
    )
    .await
    .unwrap();
    let committed = written[0].as_ref().expect("the first reply is written");
    assert_eq!(committed.reply_content.as_deref(), Some("short answer"));
    assert_eq!(committed.status, "succeeded");
    assert!(written[1].is_none(), "{written:?}");
    assert_eq!(
        messages(pool, briefed).await,
        [
            (1, "user".to_owned(), "first question".to_owned()),
            (2, "assistant".to_owned(), "short answer".to_owned())
        ]
    );
    assert_eq!(messages(pool, other).await.len(), 1);

    // The next turn's window holds the reply and the new question, oldest first.
    let next = [fixture.turn(briefed, "second question", None)];
    let outcomes = record(pool, &next).await.unwrap();
    assert_eq!(seqs(&outcomes), [Some(3)]);
    let claimed = fixture.claim_one(next[0].id, Uuid::new_v4()).await.unwrap();
    assert_eq!(
        claimed.history,
        [
            (2, ChatMessage::new(Role::Assistant, "short answer")),
            (3, ChatMessage::new(Role::User, "second question")),
        ]
    );
    fixture.app.stop().await;
}

#[tokio::test]
async fn two_deliveries_of_one_job_in_one_claim_batch_claim_it_once() {
    let fixture = Fixture::start().await;
    let conversation = fixture.conversation(None).await;
    let turn = [fixture.turn(conversation, "once, please", None)];
    record(&fixture.app.pool, &turn).await.unwrap();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let results = claim(
        &fixture.app.pool,
        &[ask(turn[0].id, first), ask(turn[0].id, second)],
        "w1",
        30.0,
        2,
        None,
    )
    .await
    .unwrap();
    assert!(
        results[0].is_ok(),
        "the first delivery claims it: {results:?}"
    );
    assert!(
        matches!(results[1], Err(NotClaimed::HeldElsewhere { .. })),
        "the second is told it is held: {results:?}"
    );
    // The claim is the first delivery's: its reply is written, as a second could not be.
    let token: Uuid = sqlx::query_scalar("SELECT claim_token FROM jobs WHERE id = $1")
        .bind(turn[0].id.as_uuid())
        .fetch_one(&fixture.app.pool)
        .await
        .unwrap();
    assert_eq!(token, first);
    fixture.app.stop().await;
}
