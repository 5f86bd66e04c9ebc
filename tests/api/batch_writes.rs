//! The batched writes of the job life cycle (`common/src/db/jobs/batch.rs`), called directly.
//!
//! The API tests go through them too, but a batch that decides wrongly mostly fails as a whole
//! and is then sorted out by the single-job fallback, and a batch of one takes the single-job
//! path: these tests hold each batch statement to what its single-job counterpart would do.

use chatq_common::chat::{ChatMessage, GenerationParams, Role, Usage};
use chatq_common::db::jobs::batch::{claim_many, complete_many, enqueue_turns};
use chatq_common::db::jobs::{Completion, EnqueueOutcome, NewTurn};
use chatq_common::db::messages::prompt_window;
use chatq_common::ids::{ConversationId, JobId, MessageId, TenantId};
use chatq_common::job::JobRequest;
use uuid::Uuid;

use crate::helpers::{TestApp, TestOptions, spawn_app_with};

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
        let tenant = chatq_common::db::keys::create_key(&app.pool, "batch", false)
            .await
            .unwrap()
            .tenant_id;
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

    fn turn<'a>(
        &'a self,
        conversation: ConversationId,
        content: &'a str,
        key: Option<&'a str>,
    ) -> NewTurn<'a> {
        NewTurn {
            tenant: self.tenant,
            conversation,
            job_id: JobId::new(),
            message_id: MessageId::new(),
            content,
            request: &self.request,
            model: None,
            default_model: Some("mock-model"),
            idempotency_key: key,
            request_hash: None,
            deadline_secs: 600.0,
            max_messages: 1_000,
        }
    }
}

/// A conversation's messages, in order: sequence number, role, content.
async fn messages(pool: &sqlx::PgPool, conversation: ConversationId) -> Vec<(i64, String, String)> {
    sqlx::query_as(
        "SELECT seq, role, content FROM messages WHERE conversation_id = $1 ORDER BY seq",
    )
    .bind(conversation.as_uuid())
    .fetch_all(pool)
    .await
    .unwrap()
}

fn seqs(outcomes: &[EnqueueOutcome]) -> Vec<Option<i64>> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            EnqueueOutcome::Enqueued { seq, .. } => Some(*seq),
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
    let outcomes = enqueue_turns(&fixture.app.pool, &turns).await.unwrap();
    assert_eq!(
        seqs(&outcomes),
        [Some(1), None, None, None, Some(1)],
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[1], EnqueueOutcome::Busy), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], EnqueueOutcome::DuplicateKey),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[3], EnqueueOutcome::NotFound),
        "{outcomes:?}"
    );
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
async fn claims_and_replies_written_in_batches_do_what_the_single_job_path_does() {
    let fixture = Fixture::start().await;
    let pool = &fixture.app.pool;
    let briefed = fixture.conversation(Some("Be brief.")).await;
    let other = fixture.conversation(None).await;
    let first = [
        fixture.turn(briefed, "first question", None),
        fixture.turn(other, "another question", None),
    ];
    enqueue_turns(pool, &first).await.unwrap();
    let (a, b) = (first[0].job_id, first[1].job_id);
    let (token_a, token_b) = (Uuid::new_v4(), Uuid::new_v4());

    let claimed = claim_many(pool, &[(a, token_a), (b, token_b)], "w1", 30.0, 2)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for job in &claimed {
        let conversation = job.conversation_id.unwrap();
        let window = prompt_window(pool, conversation, job.user_seq.unwrap(), 2)
            .await
            .unwrap();
        assert_eq!(job.history.as_ref(), Some(&window), "job {}", job.id);
        assert_eq!(job.attempts, 1);
    }
    let claimed_a = claimed.iter().find(|job| job.id == a).unwrap();
    assert_eq!(claimed_a.system_prompt.as_deref(), Some("Be brief."));
    // Claimed already, under a live lease: a second batch takes neither.
    let again = claim_many(
        pool,
        &[(a, Uuid::new_v4()), (b, Uuid::new_v4())],
        "w2",
        30.0,
        2,
    )
    .await
    .unwrap();
    assert!(again.is_empty(), "{again:?}");

    let reply = |id: JobId, token: Uuid, content: &'static str| Completion {
        id,
        token,
        reply_message_id: MessageId::new(),
        content,
        finish_reason: "stop",
        usage: Usage::default(),
        ttft_ms: Some(1),
        upstream_ms: 2,
        cached: false,
        reply_model: "mock-model",
    };
    // The second reply comes with a claim token that is not the job's: nothing is written for it.
    let written = complete_many(
        pool,
        &[
            reply(a, token_a, "short answer"),
            reply(b, Uuid::new_v4(), "lost"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(written, [true, false]);
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
    let outcomes = enqueue_turns(pool, &next).await.unwrap();
    assert_eq!(seqs(&outcomes), [Some(3)]);
    let claimed = claim_many(pool, &[(next[0].job_id, Uuid::new_v4())], "w1", 30.0, 2)
        .await
        .unwrap();
    assert_eq!(
        claimed[0].history,
        Some(vec![
            ChatMessage::new(Role::Assistant, "short answer"),
            ChatMessage::new(Role::User, "second question"),
        ])
    );
    fixture.app.stop().await;
}
