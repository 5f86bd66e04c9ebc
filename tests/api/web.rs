//! `GET /`: the web chat page, served by every ingress without a key.

use reqwest::StatusCode;
use reqwest::header;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn the_chat_page_is_served_without_a_key_and_may_only_talk_to_this_origin() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(format!("http://{}/", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        policy.contains("connect-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "a key typed into the page must not leave this origin, and the page must not be framed: {policy}"
    );
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"));
    // The page drives the public API, and the routes it calls exist.
    for path in ["/v1/conversations", "/events"] {
        assert!(page.contains(path), "the page calls {path}");
    }
    let listed = app.get("/v1/conversations?limit=50").await;
    assert_eq!(listed.status(), StatusCode::OK);

    // Only the page is public: the API still needs a key.
    let anonymous = app
        .http
        .get(format!("http://{}/v1/conversations", app.addr))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "authentication_error").await;
    app.stop().await;
}
