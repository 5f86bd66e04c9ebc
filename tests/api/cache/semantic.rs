//! The semantic tier: a deterministic request that differs from an earlier one only in the
//! wording of its last user message is served the earlier reply when their embeddings are alike
//! enough, and marked as a semantic hit; below the threshold, in another neighbourhood (another
//! system prompt) or for another tenant, it goes to the provider; with the tier off (the
//! default), no embedding is ever asked for.
//!
//! The mock's embeddings are bags of words (`chatq_workers::provider::simulated::embedding`):
//! "What is the capital of France?" and "What is the capital city of France?" share six words of
//! seven (cosine about 0.93); "… of Spain?" shares five of six (about 0.83). The tests set the
//! threshold between the two.

use chatq_mock_llm::MockConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Completed, answer_with, complete, complete_as, deterministic, job_of, provider_calls};
use crate::helpers::{TestApp, TestOptions, id_of, messages_path, spawn_app, spawn_app_with};
use crate::sse::SseReader;

const QUESTION: &str = "What is the capital of France?";
const PARAPHRASE: &str = "What is the capital city of France?";
const OTHER_QUESTION: &str = "What is the capital of Spain?";

/// A chatq with the semantic tier on at threshold 0.9, its database on a server with pgvector.
async fn spawn_semantic_app() -> TestApp {
    spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.cache.semantic = true;
            s.cache.semantic_threshold = 0.9;
        }),
        pgvector: true,
        ..TestOptions::default()
    })
    .await
}

/// Embedding requests the mock has been asked for.
fn embedding_calls(app: &TestApp) -> u64 {
    app.mock.stats().embeddings
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn with_system(question: &str, system: &str) -> Value {
    let mut body = deterministic(question);
    body["messages"] = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]);
    body
}

/// Asserts a completion was served by the semantic tier with `content`.
async fn assert_semantic_hit(app: &TestApp, completed: &Completed, content: &str) {
    assert_eq!(
        (completed.cache.as_str(), completed.tier.as_str()),
        ("hit", "semantic")
    );
    assert_eq!(completed.content(), content);
    let job = job_of(app, completed).await;
    assert_eq!(job["reply"]["cached"], true);
    assert_eq!(job["reply"]["cache"], "semantic");
}

#[tokio::test]
async fn cache_semantic_a_paraphrase_above_the_threshold_is_served_the_earlier_reply() {
    let app = spawn_semantic_app().await;
    answer_with(&app, "Paris.");
    let first = complete(&app, &deterministic(QUESTION)).await;
    assert_eq!((first.cache.as_str(), first.tier.as_str()), ("miss", ""));
    assert_eq!(job_of(&app, &first).await["reply"].get("cache"), None);
    assert_eq!((provider_calls(&app), embedding_calls(&app)), (1, 1));

    // A provider call now would answer differently: the paraphrase gets the first reply.
    answer_with(&app, "a fresh answer");
    let paraphrase = complete(&app, &deterministic(PARAPHRASE)).await;
    assert_semantic_hit(&app, &paraphrase, "Paris.").await;
    assert_eq!(paraphrase.body["usage"], first.body["usage"]);
    assert_eq!(provider_calls(&app), 1, "the semantic tier saved the call");
    assert_eq!(embedding_calls(&app), 2);

    // The same question again is the exact tier's, which is asked first: no embedding.
    let again = complete(&app, &deterministic(QUESTION)).await;
    assert_eq!(
        (again.cache.as_str(), again.tier.as_str()),
        ("hit", "exact")
    );
    assert_eq!(job_of(&app, &again).await["reply"]["cache"], "exact");
    assert_eq!((provider_calls(&app), embedding_calls(&app)), (1, 2));

    for series in [
        "chatq_cache_lookups_total{tier=\"semantic\",result=\"hit\"}",
        "chatq_cache_lookups_total{tier=\"semantic\",result=\"miss\"}",
    ] {
        assert!(metric(&app, series).await >= 1.0, "{series}");
    }
    app.stop().await;
}

#[tokio::test]
async fn cache_semantic_embeddings_are_counted_as_provider_calls() {
    let app = spawn_semantic_app().await;
    let calls = |call: &'static str, outcome: &'static str| {
        let series = format!("chatq_provider_calls_total{{call=\"{call}\",outcome=\"{outcome}\"}}");
        let app = &app;
        async move { metric(app, &series).await }
    };
    answer_with(&app, "Paris.");
    complete(&app, &deterministic(QUESTION)).await;
    assert_eq!(
        complete(&app, &deterministic(PARAPHRASE)).await.tier,
        "semantic"
    );
    app.mock.set_config(MockConfig {
        embeddings_status: Some(500),
        ..app.mock.config()
    });
    assert_eq!(
        complete(&app, &deterministic(OTHER_QUESTION)).await.cache,
        "miss"
    );
    assert_eq!((provider_calls(&app), embedding_calls(&app)), (2, 3));

    // Counters are per process, and other tests may share it: at least this test's calls.
    assert!(
        calls("embedding", "ok").await >= 2.0,
        "two embeddings answered"
    );
    assert!(
        calls("embedding", "server_error").await >= 1.0,
        "one refused"
    );
    assert!(calls("chat", "ok").await >= 2.0, "two replies");
    app.stop().await;
}

#[tokio::test]
async fn cache_semantic_a_paraphrase_below_the_threshold_or_in_another_context_misses() {
    let app = spawn_semantic_app().await;
    answer_with(&app, "Paris.");
    complete(&app, &deterministic(QUESTION)).await;

    answer_with(&app, "Madrid.");
    let other = complete(&app, &deterministic(OTHER_QUESTION)).await;
    assert_eq!(other.cache, "miss");
    assert_eq!(other.content(), "Madrid.");
    assert_eq!(job_of(&app, &other).await["reply"]["cached"], false);

    // Close enough in wording, but under another system prompt: never compared.
    answer_with(&app, "Paris, in French.");
    let in_french = complete(&app, &with_system(PARAPHRASE, "Answer in French.")).await;
    assert_eq!(in_french.cache, "miss");
    // A sampled paraphrase is no candidate at all: no embedding is asked for.
    let mut sampled = deterministic(PARAPHRASE);
    sampled["temperature"] = json!(0.7);
    let before = embedding_calls(&app);
    assert_eq!(complete(&app, &sampled).await.cache, "miss");
    assert_eq!(embedding_calls(&app), before);
    assert_eq!(provider_calls(&app), 4);
    app.stop().await;
}

#[tokio::test]
async fn cache_semantic_another_tenant_never_hits() {
    let app = spawn_semantic_app().await;
    let other = app.other_tenant_key("tenant-b").await;
    answer_with(&app, "for tenant a");
    complete(&app, &deterministic(QUESTION)).await;

    answer_with(&app, "for tenant b");
    for question in [PARAPHRASE, QUESTION] {
        let b = complete_as(&app, &other, &deterministic(question)).await;
        if question == QUESTION {
            // Tenant b's own paraphrase was stored just before: that one it may be served.
            assert_eq!((b.cache.as_str(), b.tier.as_str()), ("hit", "semantic"));
        } else {
            assert_eq!(b.cache, "miss");
        }
        assert_eq!(b.content(), "for tenant b");
    }
    assert_eq!(provider_calls(&app), 2);
    // Tenant a is still served its own.
    let a = complete(&app, &deterministic(PARAPHRASE)).await;
    assert_semantic_hit(&app, &a, "for tenant a").await;
    app.stop().await;
}

#[tokio::test]
async fn cache_semantic_conversation_turns_hit_and_negative_feedback_evicts() {
    let app = spawn_semantic_app().await;
    let first_turn = |content: &'static str| {
        let app = &app;
        async move {
            let conversation = id_of(&app.create_conversation(json!({})).await);
            let accepted: Value = app
                .request(Method::POST, &messages_path(&conversation))
                .json(&json!({ "content": content, "temperature": 0 }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            app.wait_for_job(accepted["job"]["id"].as_str().unwrap())
                .await
        }
    };
    answer_with(&app, "Paris.");
    let first = first_turn(QUESTION).await;
    assert_eq!(first["reply"]["cached"], false);
    answer_with(&app, "Paris, the capital.");
    let paraphrase = first_turn(PARAPHRASE).await;
    assert_eq!(
        (
            &paraphrase["reply"]["cache"],
            &paraphrase["reply"]["content"]
        ),
        (&json!("semantic"), &json!("Paris."))
    );
    let history = app
        .history(paraphrase["conversation_id"].as_str().unwrap())
        .await;
    assert_eq!(history[1]["content"], "Paris.");
    assert_eq!(provider_calls(&app), 1);

    // Rating the near-duplicate's reply down evicts the reply it was served: from both tiers.
    let message = paraphrase["reply"]["message_id"].as_str().unwrap();
    let rated = app
        .post_json(
            &format!("/v1/messages/{message}/feedback"),
            &json!({ "rating": -1 }),
        )
        .await;
    assert_eq!(rated.status(), StatusCode::CREATED);
    let rows_left = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM semantic_replies")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    // The notice reaches the workers over NATS: poll for its effect.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while rows_left().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the semantic row was never evicted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let asked_again = first_turn(PARAPHRASE).await;
    assert_eq!(asked_again["reply"]["cached"], false);
    assert_eq!(asked_again["reply"]["content"], "Paris, the capital.");
    assert_eq!(provider_calls(&app), 2);
    app.stop().await;
}

#[tokio::test]
async fn cache_semantic_is_off_by_default_and_never_asks_for_embeddings() {
    let app = spawn_app().await;
    assert!(!app.settings.cache.semantic);
    answer_with(&app, "Paris.");
    complete(&app, &deterministic(QUESTION)).await;
    assert_eq!(complete(&app, &deterministic(QUESTION)).await.tier, "exact");
    let paraphrase = complete(&app, &deterministic(PARAPHRASE)).await;
    assert_eq!(paraphrase.cache, "miss");
    assert_eq!(provider_calls(&app), 2);
    assert_eq!(embedding_calls(&app), 0);
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('semantic_replies')::text")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(exists, None, "the tier's table is made only when it is on");
    app.stop().await;
}

#[tokio::test]
async fn cache_semantic_a_streamed_hit_says_so_when_it_starts() {
    let app = spawn_semantic_app().await;
    answer_with(&app, "Paris is the capital.");
    complete(&app, &deterministic(QUESTION)).await;
    let mut body = deterministic(PARAPHRASE);
    body["stream"] = json!(true);
    let response = app
        .request(Method::POST, "/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(
        (header("x-chatq-cache"), header("x-chatq-cache-tier")),
        ("hit".to_owned(), "semantic".to_owned())
    );
    let streamed: String = SseReader::new(response)
        .collect()
        .await
        .into_iter()
        .filter(|event| event.data != "[DONE]")
        .filter_map(|event| {
            let chunk: Value = serde_json::from_str(&event.data).unwrap();
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, "Paris is the capital.");
    assert_eq!(provider_calls(&app), 1);
    app.stop().await;
}

#[tokio::test]
async fn cache_semantic_an_embedding_that_fails_is_a_miss_and_the_request_is_answered() {
    let app = spawn_semantic_app().await;
    answer_with(&app, "Paris.");
    complete(&app, &deterministic(QUESTION)).await;
    app.mock.set_config(MockConfig {
        embeddings_status: Some(500),
        ..app.mock.config()
    });
    answer_with(&app, "Paris, again.");
    let paraphrase = complete(&app, &deterministic(PARAPHRASE)).await;
    assert_eq!(paraphrase.cache, "miss");
    assert_eq!(paraphrase.content(), "Paris, again.");
    assert_eq!(job_of(&app, &paraphrase).await["status"], "succeeded");
    assert_eq!((provider_calls(&app), embedding_calls(&app)), (2, 2));
    // Nothing was stored without an embedding; the exact tiers still work as ever.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM semantic_replies")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(
        complete(&app, &deterministic(PARAPHRASE)).await.tier,
        "exact"
    );
    app.stop().await;
}
