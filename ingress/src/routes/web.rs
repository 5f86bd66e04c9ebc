//! `GET /` and `GET /assets/…`: the web chat page.
//!
//! Three files (`ingress/assets/chat.html`, `chat.css`, `chat.js`: markup, style and plain
//! JavaScript, nothing from elsewhere), compiled into the binary, so every ingress serves them
//! with nothing to deploy beside it. They need no authentication: the page asks for an API key,
//! keeps it in the browser's localStorage and calls the public API with it like any other client.
//! Style and script are files of their own so the Content-Security-Policy allows no inline code.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page, its style and its script, as shipped.
const PAGE: &str = include_str!("../../assets/chat.html");
const STYLE: &str = include_str!("../../assets/chat.css");
const SCRIPT: &str = include_str!("../../assets/chat.js");

/// The page may run its own script and style from this origin and nothing inline, and talk to
/// this origin only: an API key typed into it cannot be sent anywhere else, text injected into it
/// cannot run, and the page cannot be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "operations", security(()),
    responses((status = 200, description = "The web chat page.", content_type = "text/html", body = String)))]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /assets/chat.css`.
#[utoipa::path(get, path = "/assets/chat.css", tag = "operations", security(()),
    responses((status = 200, description = "The page's style sheet.", content_type = "text/css", body = String)))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /assets/chat.js`.
#[utoipa::path(get, path = "/assets/chat.js", tag = "operations", security(()),
    responses((status = 200, description = "The page's script.", content_type = "text/javascript", body = String)))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// One file with the headers every part of the page gets. `no-cache` lets the browser keep a copy
/// but check it on each load, so a new chatq never runs with an old script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
