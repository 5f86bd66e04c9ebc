//! The chat pipeline: send → queue → worker → provider → history.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestOptions, id_of, messages_path, spawn_app, spawn_app_with};

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
    assert_eq!(history[0]["content"], "What is a queue?");
    assert_eq!(history[0]["job_id"], job_id);
    assert_eq!(history[1]["content"], content);
    assert_eq!(history[1]["id"], reply["message_id"]);
    assert_eq!(history[1]["job_id"], job_id);

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

#[tokio::test]
async fn several_turns_alternate_user_and_assistant_in_sequence() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    let turns = 4;
    let mut jobs = Vec::new();
    for turn in 1..=turns {
        let job = app.turn(&id, &format!("question number {turn}")).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        jobs.push(job);
    }

    let history = app.history(&id).await;
    assert_eq!(history.len(), 2 * turns);
    for (index, message) in history.iter().enumerate() {
        let turn = index / 2;
        assert_eq!(message["seq"], index + 1, "{message}");
        assert_eq!(message["conversation_id"], id.as_str());
        assert_eq!(message["job_id"], jobs[turn]["id"], "{message}");
        if index % 2 == 0 {
            assert_eq!(message["role"], "user");
            assert_eq!(message["content"], format!("question number {}", turn + 1));
        } else {
            assert_eq!(message["role"], "assistant");
            assert_eq!(message["id"], jobs[turn]["reply"]["message_id"]);
            assert_eq!(message["content"], jobs[turn]["reply"]["content"]);
        }
    }
    let conversation = app.get_ok(&format!("/v1/conversations/{id}")).await;
    assert_eq!(conversation["message_count"], 2 * turns);
    assert_eq!(app.mock.requests().len(), turns);
    app.stop().await;
}

/// Estimated tokens as the settings document them: about four characters a token.
fn estimated_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

#[tokio::test]
async fn the_provider_gets_the_system_prompt_and_the_newest_history_within_the_window() {
    const MAX_MESSAGES: usize = 5;
    const MAX_TOKENS: usize = 100;
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.limits.history_max_messages = MAX_MESSAGES;
            s.limits.history_max_tokens = MAX_TOKENS;
        }),
        ..TestOptions::default()
    })
    .await;
    let system_prompt = "You are terse.";
    let id = id_of(
        &app.create_conversation(json!({ "system_prompt": system_prompt }))
            .await,
    );
    // Short turns, where the message count binds; long ones, where the token budget binds; and
    // one turn that is alone over the budget, which is sent anyway.
    let lengths = [20, 24, 16, 28, 200, 30, 12, 400, 20, 36];
    for (turn, length) in lengths.into_iter().enumerate() {
        let content = format!("turn {turn:02} ")
            .chars()
            .cycle()
            .take(length)
            .collect::<String>();
        let job = app.turn(&id, &content).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }

    let history = app.history(&id).await;
    assert_eq!(history.len(), 2 * lengths.len());
    let requests = app.mock.requests();
    assert_eq!(requests.len(), lengths.len());
    let mut bound_by_count = false;
    let mut bound_by_tokens = false;
    let mut windows = Vec::new();
    for (turn, request) in requests.iter().enumerate() {
        let sent: Vec<(&str, &str)> = request
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(sent[0], ("system", system_prompt), "turn {turn}: {sent:?}");
        let window = &sent[1..];
        // What the conversation held when this turn was sent: everything up to its user message.
        let stored: Vec<(&str, &str)> = history[..=2 * turn]
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            window.last(),
            stored.last(),
            "turn {turn}: the current turn comes last"
        );
        assert!(
            window.len() <= MAX_MESSAGES,
            "turn {turn}: {} history messages sent",
            window.len()
        );
        let tokens: usize = sent.iter().map(|(_, c)| estimated_tokens(c)).sum();
        windows.push((window.len(), tokens));
        assert!(
            tokens <= MAX_TOKENS || window.len() == 1,
            "turn {turn}: {tokens} estimated tokens sent"
        );
        assert_eq!(
            window,
            &stored[stored.len() - window.len()..],
            "turn {turn}: the newest messages, oldest first"
        );
        // And the window is as full as the limits allow: the next older message would not fit.
        if window.len() < stored.len() {
            let older = stored[stored.len() - window.len() - 1];
            let full_by_count = window.len() == MAX_MESSAGES;
            let full_by_tokens = tokens + estimated_tokens(older.1) > MAX_TOKENS;
            assert!(
                full_by_count || full_by_tokens,
                "turn {turn}: {older:?} was left out though it fits"
            );
            bound_by_count |= full_by_count && !full_by_tokens;
            bound_by_tokens |= full_by_tokens && !full_by_count;
        }
    }
    // The turns above are chosen so that each limit is the one that binds at least once.
    assert!(
        bound_by_count && bound_by_tokens,
        "(messages, tokens) sent: {windows:?}"
    );
    assert!(
        requests.iter().any(|r| r.messages.len() == 2),
        "one turn was sent alone"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_model_and_sampling_parameters_of_a_turn_reach_the_provider() {
    let app = spawn_app().await;
    let id = id_of(
        &app.create_conversation(json!({ "model": "conversation-model" }))
            .await,
    );
    let first = app.turn(&id, "which model?").await;
    assert_eq!(first["model"], "conversation-model");

    let response = app
        .post_json(
            &messages_path(&id),
            &json!({ "content": "short, please", "model": "turn-model", "temperature": 0.3, "max_tokens": 5 }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    let second = app.wait_for_job(&id_of(&accepted["job"])).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(second["model"], "turn-model");
    assert_eq!(second["reply"]["usage"]["completion_tokens"], 5);
    assert_eq!(second["reply"]["finish_reason"], "length");

    let requests = app.mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].model.as_deref(), Some("conversation-model"));
    assert_eq!(requests[0].temperature, None);
    assert_eq!(requests[1].model.as_deref(), Some("turn-model"));
    assert_eq!(requests[1].temperature, Some(0.3));
    assert_eq!(requests[1].max_tokens, Some(5));
    app.stop().await;
}
