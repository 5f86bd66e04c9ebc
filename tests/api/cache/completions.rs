//! The cache on `/v1/chat/completions`.

use reqwest::Method;
use serde_json::json;

use super::{
    answer_with, complete, complete_as, complete_with, deterministic, job_of, provider_calls,
};
use crate::helpers::{TestOptions, spawn_app, spawn_app_with};

#[tokio::test]
async fn cache_a_repeated_deterministic_completion_is_served_from_the_cache() {
    let app = spawn_app().await;
    answer_with(&app, "the first answer");
    let first = complete(&app, &deterministic("what is a queue?")).await;
    assert_eq!(first.cache, "miss");
    assert_eq!(first.content(), "the first answer");
    assert_eq!(job_of(&app, &first).await["reply"]["cached"], false);
    assert_eq!(provider_calls(&app), 1);

    // A provider call now would answer differently: a cached reply is the first answer.
    answer_with(&app, "another answer");
    let second = complete(&app, &deterministic("what is a queue?")).await;
    assert_eq!(second.cache, "hit");
    assert_eq!(second.content(), "the first answer");
    assert_eq!(second.body["usage"], first.body["usage"]);
    assert_eq!(job_of(&app, &second).await["reply"]["cached"], true);
    assert_eq!(provider_calls(&app), 1, "the cache saved the second call");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "chatq_cache_provider_calls_saved_total",
        "chatq_cache_lookups_total{tier=\"memory\",result=\"hit\"}",
        "chatq_cache_lookups_total{tier=\"shared\",result=\"miss\"}",
    ] {
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok());
        assert!(value.is_some_and(|v| v >= 1.0), "{series} in:\n{metrics}");
    }

    // A fixed seed is deterministic too, and another question is another key.
    let mut seeded = deterministic("what is a queue?");
    seeded["temperature"] = json!(0.9);
    seeded["seed"] = json!(7);
    assert_eq!(complete(&app, &seeded).await.cache, "miss");
    assert_eq!(complete(&app, &seeded).await.cache, "hit");
    assert_eq!(
        complete(&app, &deterministic("and a stack?")).await.cache,
        "miss"
    );
    assert_eq!(provider_calls(&app), 3);
    app.stop().await;
}

#[tokio::test]
async fn cache_any_parameter_that_changes_the_answer_changes_the_key() {
    let app = spawn_app().await;
    let base = deterministic("pick one");
    complete(&app, &base).await;
    let variants = [
        json!({"max_tokens": 5}),
        json!({"stop": ["x"]}),
        json!({"n": 2}),
        json!({"response_format": {"type": "json_object"}}),
        json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
    ];
    for variant in &variants {
        let mut body = base.clone();
        for (key, value) in variant.as_object().unwrap() {
            body[key] = value.clone();
        }
        assert_eq!(complete(&app, &body).await.cache, "miss", "{variant}");
    }
    assert_eq!(provider_calls(&app), 1 + variants.len() as u64);
    assert_eq!(complete(&app, &base).await.cache, "hit");
    app.stop().await;
}

#[tokio::test]
async fn cache_sampled_requests_are_never_cached() {
    let app = spawn_app().await;
    let mut sampled = deterministic("tell me a story");
    sampled["temperature"] = json!(0.8);
    let mut unset = deterministic("tell me a story");
    unset.as_object_mut().unwrap().remove("temperature");
    for body in [&sampled, &sampled, &unset, &unset] {
        let completed = complete(&app, body).await;
        assert_eq!(completed.cache, "miss");
        assert_eq!(job_of(&app, &completed).await["reply"]["cached"], false);
    }
    assert_eq!(provider_calls(&app), 4);
    app.stop().await;
}

#[tokio::test]
async fn cache_two_tenants_asking_the_same_never_share_a_reply() {
    let app = spawn_app().await;
    let other = app.other_tenant_key("tenant-b").await;
    answer_with(&app, "for tenant a");
    let a = complete(&app, &deterministic("the same prompt")).await;
    answer_with(&app, "for tenant b");
    let b = complete_as(&app, &other, &deterministic("the same prompt")).await;
    assert_eq!(provider_calls(&app), 2);
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("miss", "miss"));
    assert_eq!(a.content(), "for tenant a");
    assert_eq!(b.content(), "for tenant b");
    // Each is served its own.
    assert_eq!(
        complete(&app, &deterministic("the same prompt"))
            .await
            .content(),
        "for tenant a"
    );
    let again = complete_as(&app, &other, &deterministic("the same prompt")).await;
    assert_eq!(
        (again.cache.as_str(), again.content()),
        ("hit", "for tenant b")
    );
    assert_eq!(provider_calls(&app), 2);
    app.stop().await;
}

#[tokio::test]
async fn cache_a_global_scope_shares_replies_between_tenants() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.cache.scope = chatq_common::settings::CacheScope::Global;
        }),
        ..TestOptions::default()
    })
    .await;
    let other = app.other_tenant_key("tenant-b").await;
    complete(&app, &deterministic("a public question")).await;
    let b = complete_as(&app, &other, &deterministic("a public question")).await;
    assert_eq!(b.cache, "hit");
    assert_eq!(provider_calls(&app), 1);
    app.stop().await;
}

#[tokio::test]
async fn cache_a_client_can_opt_out_by_header_or_by_body() {
    let app = spawn_app().await;
    let question = deterministic("fresh, please");
    complete(&app, &question).await;
    let by_header = complete_with(
        app.request(Method::POST, "/v1/chat/completions")
            .header("cache-control", "no-cache"),
        &question,
    )
    .await;
    assert_eq!(by_header.cache, "miss");
    let mut opted_out = question.clone();
    opted_out["cache"] = json!(false);
    let by_body = complete(&app, &opted_out).await;
    assert_eq!(by_body.cache, "miss");
    assert_eq!(provider_calls(&app), 3);
    // The extension field never reaches the provider.
    assert!(
        app.mock
            .requests()
            .iter()
            .all(|r| r.body.get("cache").is_none()),
        "chatq's cache field was sent to the provider"
    );
    // Opting out neither reads nor writes: the cache still holds the first reply.
    assert_eq!(complete(&app, &question).await.cache, "hit");
    app.stop().await;
}

#[tokio::test]
async fn cache_an_expired_reply_is_asked_for_again() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| s.cache.ttl_secs = 1),
        ..TestOptions::default()
    })
    .await;
    let question = deterministic("soon stale");
    complete(&app, &question).await;
    assert_eq!(complete(&app, &question).await.cache, "hit");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let again = complete(&app, &question).await;
        if again.cache == "miss" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reply never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(provider_calls(&app), 2);
    app.stop().await;
}

#[tokio::test]
async fn cache_identical_requests_at_once_make_one_provider_call() {
    let app = spawn_app_with(TestOptions {
        mock: chatq_mock_llm::MockConfig {
            ttft_ms: 300,
            ..chatq_mock_llm::MockConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let question = deterministic("everyone asks this");
    let all = futures::future::join_all((0..12).map(|_| complete(&app, &question))).await;
    assert_eq!(provider_calls(&app), 1);
    let first = all[0].content().to_owned();
    assert!(all.iter().all(|c| c.content() == first));
    let calls_of = |kind: &str| all.iter().filter(|c| c.cache == kind).count();
    assert_eq!(calls_of("miss") + calls_of("hit"), 12);
    let cached = futures::future::join_all(all.iter().map(|c| job_of(&app, c))).await;
    let served = cached
        .iter()
        .filter(|j| j["reply"]["cached"] == true)
        .count();
    assert_eq!(served, 11, "one call, eleven served from it");
    app.stop().await;
}
