//! The per-key rate limit holds for the key, however the request spells its `Authorization`.

use reqwest::{Method, StatusCode};

use crate::helpers::{TestOptions, spawn_app_with};

#[tokio::test]
async fn every_spelling_of_a_key_shares_one_rate_limit() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|s| {
            s.limits.key_rate_limit_per_sec = Some(1);
            s.limits.key_rate_limit_burst = 5;
        }),
        ..TestOptions::default()
    })
    .await;
    // Authentication accepts each of these as the same key.
    let spellings = [
        format!("Bearer {}", app.key),
        format!("bearer {}", app.key),
        format!("Bearer  {}", app.key),
        format!("Bearer {} ", app.key),
    ];
    let mut statuses = Vec::new();
    for round in 0..3 {
        for header in &spellings {
            let response = app
                .http
                .request(Method::GET, app.url("/v1/conversations"))
                .header("authorization", header)
                .send()
                .await
                .unwrap();
            statuses.push((round, response.status()));
        }
    }
    let ok = statuses
        .iter()
        .filter(|(_, status)| *status == StatusCode::OK)
        .count();
    assert_eq!(ok, 5, "one burst for the key, then 429s: {statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|(_, s)| matches!(*s, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS)),
        "{statuses:?}"
    );
    app.stop().await;
}
