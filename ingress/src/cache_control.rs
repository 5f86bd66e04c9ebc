//! The reply cache as clients see it: opting out with `Cache-Control: no-cache` (or `no-store`),
//! and the `x-chatq-cache: hit|miss` header on chat completions. The cache itself runs in the
//! workers (`chatq_workers::cache`).

use axum::http::{HeaderMap, HeaderValue, header};

/// The response header that says whether a completion came from the reply cache.
pub const CACHE_HEADER: &str = "x-chatq-cache";

/// Whether the request's `Cache-Control` asks not to be served from, or stored in, a cache.
pub fn no_cache_asked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.trim().to_ascii_lowercase())
        .any(|directive| directive == "no-cache" || directive == "no-store")
}

/// `hit` or `miss`.
pub fn cache_header_value(cached: bool) -> HeaderValue {
    HeaderValue::from_static(if cached { "hit" } else { "miss" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cache_is_found_among_other_directives() {
        let mut headers = HeaderMap::new();
        assert!(!no_cache_asked(&headers));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        assert!(!no_cache_asked(&headers));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Cache"),
        );
        assert!(no_cache_asked(&headers));
    }
}
