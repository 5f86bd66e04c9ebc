//! The chat pipeline: send → queue → worker → provider → history.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_sent_message_is_answered_once_and_stored_in_sequence() {
    let app = spawn_app().await;
    let conversation = app
        .create_conversation(json!({ "title": "t", "system_prompt": "You are terse." }))
        .await;
    let id = conversation["id"].as_str().unwrap();

    let accepted = app.send(id, "What is a queue?").await;
    let job_id = accepted["job"]["id"].as_str().unwrap();
    assert_eq!(accepted["job"]["status"], "queued");
    assert_eq!(accepted["message"]["seq"], 1);

    let job = app.wait_for_job(job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    let reply = &job["reply"];
    let content = reply["content"].as_str().unwrap();
    assert!(!content.is_empty());

    let history = app.history(id).await;
    let roles: Vec<&str> = history
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);
    let seqs: Vec<i64> = history.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(history[1]["content"], content);
    assert_eq!(history[1]["id"], reply["message_id"]);

    // The provider got the system prompt and the user's message, in that order.
    let requests = app.mock.requests();
    assert_eq!(requests.len(), 1);
    let sent: Vec<(&str, &str)> = requests[0]
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        sent,
        [("system", "You are terse."), ("user", "What is a queue?")]
    );
    app.stop().await;
}
