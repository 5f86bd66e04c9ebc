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

#[tokio::test]
async fn deleting_a_conversation_while_its_reply_is_written_never_fails() {
    let app = spawn_app_with(TestOptions {
        mock: chatq_mock_llm::MockConfig {
            ttft_ms: 5,
            tokens: 2,
            ..chatq_mock_llm::MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    for round in 0..40u64 {
        let conversation = id_of(&app.create_conversation(json!({})).await);
        let accepted = app.send(&conversation, "race me").await;
        let job = accepted["job"]["id"].as_str().unwrap().to_owned();
        // A different head start each round, so the delete meets the reply at every point of
        // its write: before, during, after.
        tokio::time::sleep(std::time::Duration::from_millis(round % 10 * 2)).await;
        let deleted = app
            .request(
                reqwest::Method::DELETE,
                &format!("/v1/conversations/{conversation}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            deleted.status(),
            reqwest::StatusCode::NO_CONTENT,
            "round {round}: {}",
            deleted.text().await.unwrap_or_default()
        );
        let polled = app.get(&format!("/v1/jobs/{job}")).await;
        assert!(
            matches!(polled.status().as_u16(), 200 | 404),
            "round {round}: {}",
            polled.status()
        );
    }
    // The worker is still answering.
    let conversation = id_of(&app.create_conversation(json!({})).await);
    let job = app.turn(&conversation, "still there?").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    app.stop().await;
}
