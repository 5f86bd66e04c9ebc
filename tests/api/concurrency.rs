//! Many conversations at once over several workers: every job runs exactly once.

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{TestOptions, id_of, spawn_app_with};

#[tokio::test]
async fn many_conversations_sent_at_once_over_two_workers_are_each_answered_exactly_once() {
    const CONVERSATIONS: usize = 60;
    let app = spawn_app_with(TestOptions {
        workers: 2,
        ..TestOptions::default()
    })
    .await;
    let conversations: Vec<String> = join_all(
        (0..CONVERSATIONS).map(|i| app.create_conversation(json!({ "title": format!("c{i}") }))),
    )
    .await
    .iter()
    .map(id_of)
    .collect();

    let contents: Vec<String> = (0..CONVERSATIONS)
        .map(|i| format!("hello from conversation {i}"))
        .collect();
    let accepted = join_all(
        conversations
            .iter()
            .zip(&contents)
            .map(|(id, content)| app.send(id, content)),
    )
    .await;
    let jobs: Vec<String> = accepted.iter().map(|a| id_of(&a["job"])).collect();
    let finished = join_all(jobs.iter().map(|job| app.wait_for_job(job))).await;

    for ((conversation, job_id), job) in conversations.iter().zip(&jobs).zip(&finished) {
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        let history = app.history(conversation).await;
        let replies: Vec<_> = history
            .iter()
            .filter(|m| m["role"] == "assistant")
            .collect();
        assert_eq!(replies.len(), 1, "{history:?}");
        assert_eq!(replies[0]["job_id"], job_id.as_str());
        assert_eq!(replies[0]["id"], job["reply"]["message_id"]);
        assert_eq!(history.len(), 2);
    }
    assert_eq!(app.mock.stats().requests, CONVERSATIONS as u64);
    assert_eq!(app.mock.requests().len(), CONVERSATIONS);
    // Also as stored: one reply per job, and no job ran twice.
    let (replies, most_attempts): (i64, Option<i32>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages WHERE role = 'assistant'), (SELECT max(attempts) FROM jobs)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(replies, CONVERSATIONS as i64);
    assert_eq!(most_attempts, Some(1));
    app.stop().await;
}

/// The turns of concurrent requests are recorded in one transaction (`enqueue_turns`): each must
/// be decided as if they had come one after another, whatever else the batch holds.
#[tokio::test]
async fn turns_recorded_in_one_batch_are_decided_as_if_sent_one_after_another() {
    use std::str::FromStr;

    use chatq_common::chat::GenerationParams;
    use chatq_common::db::jobs::batch::enqueue_turns;
    use chatq_common::db::jobs::{EnqueueOutcome, NewTurn};
    use chatq_common::ids::{ConversationId, JobId, MessageId, TenantId};
    use chatq_common::job::JobRequest;

    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let busy = id_of(&app.create_conversation(json!({})).await);
    let quiet = id_of(&app.create_conversation(json!({})).await);
    let busy = ConversationId::from_str(&busy).unwrap();
    let quiet = ConversationId::from_str(&quiet).unwrap();
    let tenant: uuid::Uuid =
        sqlx::query_scalar("SELECT tenant_id FROM conversations WHERE id = $1")
            .bind(busy.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let tenant = TenantId::from_uuid(tenant);
    let request = JobRequest::ConversationTurn {
        params: GenerationParams::default(),
    };
    let turn = |conversation, tenant, key| NewTurn {
        tenant,
        conversation,
        job_id: JobId::new(),
        message_id: MessageId::new(),
        content: "hello",
        request: &request,
        model: None,
        default_model: Some("mock-model"),
        idempotency_key: key,
        request_hash: None,
        deadline_secs: 600.0,
        max_messages: 1_000,
    };
    let turns = [
        turn(busy, tenant, Some("k")),
        // A second turn for a conversation the batch has just made busy.
        turn(busy, tenant, None),
        // The key of the first turn again, for another conversation.
        turn(quiet, tenant, Some("k")),
        // Another tenant's id for the same conversation.
        turn(quiet, TenantId::new(), None),
        turn(quiet, tenant, None),
    ];
    let outcomes = enqueue_turns(&app.pool, &turns).await.unwrap();
    let seqs: Vec<Option<i64>> = outcomes
        .iter()
        .map(|outcome| match outcome {
            EnqueueOutcome::Enqueued { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [Some(1), None, None, None, Some(1)], "{outcomes:?}");
    assert!(matches!(outcomes[1], EnqueueOutcome::Busy), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], EnqueueOutcome::DuplicateKey),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[3], EnqueueOutcome::NotFound),
        "{outcomes:?}"
    );
    // Exactly what was decided was written: two messages, two jobs, and the counters moved.
    assert_eq!(app.history(&busy.to_string()).await.len(), 1);
    assert_eq!(app.history(&quiet.to_string()).await.len(), 1);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 2);
    let conversation = app.get_ok(&format!("/v1/conversations/{busy}")).await;
    assert_eq!(conversation["message_count"], 1);
    app.stop().await;
}
