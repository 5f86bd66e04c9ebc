//! `GET /` and `GET /assets/…`: the web chat page, served by every ingress without a key. Its
//! behaviour in a browser is tested in `web_browser`.

use reqwest::StatusCode;
use reqwest::header;

use crate::helpers::{TestApp, assert_error, spawn_app};

/// Fetches a part of the page without a key; checks the headers every part carries and returns
/// its content type, its Content-Security-Policy and its text.
async fn fetch_part(app: &TestApp, path: &str) -> (String, String, String) {
    let response = app
        .http
        .get(format!("http://{}{path}", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let headers = response.headers().clone();
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer", "{path}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
    let content_type = headers[header::CONTENT_TYPE].to_str().unwrap().to_owned();
    let policy = headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, policy, response.text().await.unwrap())
}

#[tokio::test]
async fn the_chat_page_is_served_without_a_key_and_may_only_talk_to_this_origin() {
    let app = spawn_app().await;
    let (content_type, policy, page) = fetch_part(&app, "/").await;
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(
        policy.contains("connect-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "a key typed into the page must not leave this origin, and the page must not be framed: {policy}"
    );
    assert!(
        policy.contains("script-src 'self'")
            && policy.contains("style-src 'self'")
            && !policy.contains("unsafe-inline")
            && !policy.contains("unsafe-eval"),
        "no inline or evaluated code may run: {policy}"
    );
    assert!(page.starts_with("<!doctype html>"));
    assert!(
        !page.contains("<script>") && !page.contains("<style>") && !page.contains(" style="),
        "the page holds no inline script or style (the policy would block it)"
    );
    // Nor script in any other form: every script element loads a file of this origin, and no
    // element carries an event handler or a javascript: URL.
    for script in page.split("<script").skip(1) {
        let tag = script.split('>').next().unwrap_or_default();
        assert!(
            tag.contains("src=\"/assets/"),
            "an inline script: <script{tag}>"
        );
    }
    let lowered = page.to_ascii_lowercase();
    assert!(!lowered.contains("javascript:"), "a javascript: URL");
    let handler = lowered.split_whitespace().find(|word| {
        word.starts_with("on")
            && word.contains('=')
            && word[2..].split('=').next().is_some_and(|name| {
                name.chars().all(|c| c.is_ascii_lowercase()) && !name.is_empty()
            })
    });
    assert_eq!(handler, None, "an inline event handler");
    for asset in ["/assets/chat.js", "/assets/chat.css"] {
        assert!(
            page.contains(&format!("\"{asset}\"")),
            "the page loads {asset}"
        );
    }

    let (content_type, _, style) = fetch_part(&app, "/assets/chat.css").await;
    assert_eq!(content_type, "text/css; charset=utf-8");
    assert!(style.contains("prefers-color-scheme: dark"));
    let (content_type, _, script) = fetch_part(&app, "/assets/chat.js").await;
    assert_eq!(content_type, "text/javascript; charset=utf-8");
    // The page drives the public API, and the routes it calls exist.
    for path in ["/v1/conversations", "/events", "/feedback", "/cancel"] {
        assert!(script.contains(path), "the page calls {path}");
    }
    assert!(
        !script.contains("innerHTML") && !script.contains("insertAdjacentHTML"),
        "text from the server is never parsed as HTML"
    );
    let everything = page.len() + style.len() + script.len();
    assert!(
        everything < 100 * 1024,
        "the page, its style and its script are {everything} bytes"
    );
    let listed = app.get("/v1/conversations?limit=50").await;
    assert_eq!(listed.status(), StatusCode::OK);

    // Only the page is public: the API still needs a key, and other assets do not exist.
    let anonymous = app
        .http
        .get(format!("http://{}/v1/conversations", app.addr))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "authentication_error").await;
    let missing = app
        .http
        .get(format!("http://{}/assets/other.js", app.addr))
        .send()
        .await
        .unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found_error").await;
    app.stop().await;
}
