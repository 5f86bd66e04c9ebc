//! Listing conversations (newest first, keyset pages), one conversation's counters, history
//! pages, and conversations created in bulk (`db::conversations::create_many`).

use std::collections::HashSet;

use chatq_common::db::conversations;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{id_of, messages_path, spawn_app};

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(id_of).collect()
}

#[tokio::test]
async fn conversations_are_listed_newest_first_and_pages_walk_them_all_once() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(id_of(
            &app.create_conversation(json!({ "title": format!("c{i}") }))
                .await,
        ));
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let all = app.get_ok("/v1/conversations").await;
    assert_eq!(all["object"], "list");
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all["has_more"], false);

    let mut walked = Vec::new();
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/v1/conversations?limit=3&after={after}"),
            None => "/v1/conversations?limit=3".to_owned(),
        };
        let page = app.get_ok(&path).await;
        let page_ids = ids(&page);
        pages.push((page_ids.len(), page["has_more"].as_bool().unwrap()));
        walked.extend(page_ids.iter().cloned());
        if page["has_more"] == false {
            break;
        }
        assert_eq!(page["last_id"], page_ids.last().unwrap().as_str());
        after = Some(page["last_id"].as_str().unwrap().to_owned());
        assert!(pages.len() < 10, "pagination does not end: {pages:?}");
    }
    assert_eq!(pages, [(3, true), (3, true), (1, false)]);
    assert_eq!(walked, newest_first);
    assert_eq!(walked.iter().collect::<HashSet<_>>().len(), walked.len());

    // A page that ends exactly at the last conversation says there is nothing more.
    let exact = app
        .get_ok(&format!(
            "/v1/conversations?limit=1&after={}",
            newest_first[5]
        ))
        .await;
    assert_eq!(ids(&exact), [newest_first[6].clone()]);
    assert_eq!(exact["has_more"], false);
    let past_the_end = app
        .get_ok(&format!(
            "/v1/conversations?limit=5&after={}",
            newest_first[6]
        ))
        .await;
    assert!(ids(&past_the_end).is_empty());
    assert_eq!(past_the_end["has_more"], false);
    app.stop().await;
}

#[tokio::test]
async fn a_conversation_shows_its_message_count_and_last_activity() {
    let app = spawn_app().await;
    let created = app
        .create_conversation(
            json!({ "title": "counted", "system_prompt": "be brief", "metadata": { "team": "a" } }),
        )
        .await;
    let id = id_of(&created);
    let path = format!("/v1/conversations/{id}");
    let fresh = app.get_ok(&path).await;
    assert_eq!(fresh["message_count"], 0);
    assert_eq!(fresh["title"], "counted");
    assert_eq!(fresh["system_prompt"], "be brief");
    assert_eq!(fresh["metadata"], json!({ "team": "a" }));
    assert_eq!(fresh["last_activity_at"], fresh["created_at"]);

    // Move the conversation an hour into the past, so new activity shows in whole seconds.
    sqlx::query(
        "UPDATE conversations SET created_at = created_at - interval '1 hour', \
         last_activity_at = last_activity_at - interval '1 hour'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let backdated = app.get_ok(&path).await;
    let job = app.turn(&id, "hello").await;
    assert_eq!(job["status"], "succeeded");

    let after = app.get_ok(&path).await;
    assert_eq!(after["message_count"], 2);
    assert_eq!(after["created_at"], backdated["created_at"]);
    let last_activity = after["last_activity_at"].as_i64().unwrap();
    assert!(
        last_activity >= backdated["last_activity_at"].as_i64().unwrap() + 3600 - 1,
        "last activity did not move: {backdated} then {after}"
    );
    assert!(last_activity >= job["finished_at"].as_i64().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn history_pages_backwards_with_limit_and_before() {
    let app = spawn_app().await;
    let id = id_of(&app.create_conversation(json!({})).await);
    for turn in 1..=3 {
        app.turn(&id, &format!("turn {turn}")).await;
    }
    let page = |query: String| {
        let app = &app;
        let path = format!("{}?{query}", messages_path(&id));
        async move {
            let page = app.get_ok(&path).await;
            let seqs: Vec<i64> = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_i64().unwrap())
                .collect();
            (seqs, page["has_more"].as_bool().unwrap())
        }
    };
    assert_eq!(
        page("limit=10".into()).await,
        (vec![1, 2, 3, 4, 5, 6], false)
    );
    // The newest page first, each page in ascending order, then older ones with `before`.
    assert_eq!(page("limit=2".into()).await, (vec![5, 6], true));
    assert_eq!(page("limit=2&before=5".into()).await, (vec![3, 4], true));
    assert_eq!(page("limit=2&before=3".into()).await, (vec![1, 2], false));
    assert_eq!(
        page("limit=4&before=4".into()).await,
        (vec![1, 2, 3], false)
    );
    assert_eq!(page("before=1".into()).await, (vec![], false));
    assert_eq!(
        page("limit=6".into()).await,
        (vec![1, 2, 3, 4, 5, 6], false)
    );
    app.stop().await;
}

#[tokio::test]
async fn conversations_created_in_bulk_are_the_tenants_own_empty_and_usable() {
    let app = spawn_app().await;
    let tenant = app.tenant("tenant-a").await;
    let created = conversations::create_many(&app.pool, tenant, Some("bulk"), 5)
        .await
        .unwrap();
    let created: HashSet<String> = created.iter().map(ToString::to_string).collect();
    assert_eq!(created.len(), 5);

    let listed = app.get_ok("/v1/conversations").await;
    assert_eq!(ids(&listed).into_iter().collect::<HashSet<_>>(), created);
    for conversation in listed["data"].as_array().unwrap() {
        assert_eq!(conversation["title"], "bulk", "{conversation}");
        assert_eq!(conversation["message_count"], 0, "{conversation}");
    }
    let other = app.other_tenant_key("tenant-b").await;
    let theirs: Value = app
        .request_as(&other, Method::GET, "/v1/conversations")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ids(&theirs).is_empty(), "{theirs}");

    let one = created.iter().next().unwrap();
    let job = app.turn(one, "hello").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(app.history(one).await.len(), 2);
    app.stop().await;
}
