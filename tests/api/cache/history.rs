//! The history window kept between turns: a conversation's next turn reads only its new messages
//! from Postgres, and the prompt is still the bounded window.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, id_of, messages_path, spawn_app};

/// The messages of the provider's last request: (role, content).
fn last_prompt(app: &TestApp) -> Vec<(String, String)> {
    let requests = app.mock.requests();
    let last = requests.last().expect("the provider was called");
    last.messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect()
}

#[tokio::test]
async fn a_long_conversations_next_turn_reads_only_its_new_messages() {
    let app = spawn_app().await;
    let window = app.settings.limits.history_max_messages;
    let conversation = id_of(&app.create_conversation(json!({})).await);
    // 5,000 messages already, written straight to Postgres (sending them would take 2,500 turns).
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content)
         SELECT gen_random_uuid(), c.id, c.tenant_id, n,
                CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END, 'message ' || n
           FROM conversations c, generate_series(1, 5000) AS n
          WHERE c.id = $1",
    )
    .bind(conversation_uuid(&conversation))
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE conversations SET next_seq = 5001, message_count = 5000 WHERE id = $1")
        .bind(conversation_uuid(&conversation))
        .execute(&app.pool)
        .await
        .unwrap();

    assert_eq!(
        app.turn(&conversation, "question 1").await["status"],
        "succeeded"
    );
    let first = last_prompt(&app);
    assert_eq!(first.len(), window, "the window, not the whole history");
    assert_eq!(first[0].1, format!("message {}", 5001 - window + 1));
    assert_eq!(first[window - 1], ("user".into(), "question 1".into()));

    // What the worker keeps is not read again: a message of the window changed in Postgres
    // behind its back is still sent as the worker first read it.
    let probe = 5000 - 10;
    sqlx::query("UPDATE messages SET content = 'changed' WHERE conversation_id = $1 AND seq = $2")
        .bind(conversation_uuid(&conversation))
        .bind(probe)
        .execute(&app.pool)
        .await
        .unwrap();
    let answered = app.turn(&conversation, "question 2").await;
    assert_eq!(answered["status"], "succeeded");
    let second = last_prompt(&app);
    assert_eq!(second.len(), window);
    assert_eq!(second[window - 1], ("user".into(), "question 2".into()));
    // The reply to question 1 and question 2 were read; the window moved on by two.
    assert_eq!(second[window - 2].0, "assistant");
    assert_eq!(second[window - 3], first[window - 1]);
    assert_eq!(second[..window - 2], first[2..]);
    assert!(
        second
            .iter()
            .any(|(_, content)| content == &format!("message {probe}")),
        "the kept message was read again from Postgres"
    );

    // A cleared history is not kept: the next turn's prompt is its question alone.
    let cleared = app
        .http
        .delete(app.url(&messages_path(&conversation)))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.turn(&conversation, "question 3").await["status"],
        "succeeded"
    );
    assert_eq!(last_prompt(&app), [("user".into(), "question 3".into())]);
    app.stop().await;
}

fn conversation_uuid(id: &str) -> uuid::Uuid {
    id.parse::<chatq_common::ids::ConversationId>()
        .unwrap()
        .as_uuid()
}
