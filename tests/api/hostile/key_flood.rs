//! A flood of made-up API keys costs Postgres a bounded number of lookups and does not stop real
//! clients from being served.

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, TestOptions, spawn_app_with};

const FAILURES_PER_MIN: u32 = 20;

/// A client whose connections come from `source` (any 127.x address reaches the loopback).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A well-formed key that belongs to no one.
fn made_up_key() -> String {
    format!("cq_{}", uuid::Uuid::new_v4().simple())
        .chars()
        .chain("0123456789abcdef".chars())
        .take(51)
        .collect()
}

async fn status_as(app: &TestApp, client: &reqwest::Client, key: &str) -> StatusCode {
    client
        .request(Method::GET, app.url("/v1/conversations"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_flood_of_made_up_keys_is_cut_off_while_real_clients_are_served() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.limits.auth_failures_per_min = Some(FAILURES_PER_MIN)),
        ..TestOptions::default()
    })
    .await;
    let attacker = client_from("127.0.0.2");
    let neighbour = client_from("127.0.0.1");
    // A real client on the attacker's address, whose key is known before the flood.
    assert_eq!(status_as(&app, &attacker, &app.key).await, StatusCode::OK);

    let flood = futures::stream::iter(0..400)
        .map(|_| {
            let attacker = attacker.clone();
            let app = &app;
            async move { status_as(app, &attacker, &made_up_key()).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let served = async {
        let mut statuses = Vec::new();
        for round in 0..20 {
            statuses.push(status_as(&app, &neighbour, &app.key).await);
            // A key never seen before is looked up, from an address that failed nothing.
            if round % 5 == 0 {
                let fresh = app.other_tenant_key(&format!("fresh-{round}")).await;
                statuses.push(status_as(&app, &neighbour, &fresh).await);
            }
        }
        statuses
    };
    let (flood, served) = tokio::join!(flood, served);

    assert!(
        served.iter().all(|s| *s == StatusCode::OK),
        "real clients are served during the flood: {served:?}"
    );
    let looked_up = flood
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let cut_off = flood
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        looked_up + cut_off,
        flood.len(),
        "every made-up key is refused with 401 or 429: {flood:?}"
    );
    // The budget, and at most the requests already past the check when it ran out.
    assert!(
        looked_up <= FAILURES_PER_MIN as usize + 16,
        "only the failure budget's worth of made-up keys is looked up: {looked_up} of {}",
        flood.len()
    );
    // The key the attacker's address used before still works from there.
    assert_eq!(status_as(&app, &attacker, &app.key).await, StatusCode::OK);
    let refused = attacker
        .request(Method::GET, app.url("/v1/conversations"))
        .bearer_auth(made_up_key())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    app.stop().await;
}
