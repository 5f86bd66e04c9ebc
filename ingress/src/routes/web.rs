//! `GET /`: the web chat page.
//!
//! One self-contained HTML file (`ingress/assets/chat.html`: markup, style and vanilla
//! JavaScript, no external assets), compiled into the binary, so every ingress serves it with
//! nothing to deploy beside it. It needs no authentication: the page asks for an API key, keeps it
//! in the browser's localStorage and calls the public API with it like any other client.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, as shipped.
const PAGE: &str = include_str!("../../assets/chat.html");

/// The page may run its own inline script and style, and talk to this origin only: an API key
/// typed into it cannot be sent anywhere else, and the page cannot be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
