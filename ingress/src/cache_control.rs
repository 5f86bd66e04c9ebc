//! The reply cache as clients see it: opting out with `Cache-Control: no-cache` (or `no-store`),
//! and the `x-chatq-cache: hit|miss` header on chat completions, with `x-chatq-cache-tier:
//! exact|semantic` beside a hit. The cache itself runs in the workers (`chatq_workers::cache`).

use axum::http::{HeaderMap, HeaderValue, header};
use chatq_common::reply_cache::CacheTier;

/// The response header that says whether a completion came from the reply cache.
pub const CACHE_HEADER: &str = "x-chatq-cache";
/// The response header that says which tier a cached completion came from.
pub const CACHE_TIER_HEADER: &str = "x-chatq-cache-tier";

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

/// Sets `x-chatq-cache` (`hit` or `miss`) and, on a hit, `x-chatq-cache-tier`.
pub fn insert_cache_headers(headers: &mut HeaderMap, cache: Option<CacheTier>) {
    let (hit, tier) = match cache {
        Some(tier) => ("hit", Some(tier)),
        None => ("miss", None),
    };
    headers.insert(CACHE_HEADER, HeaderValue::from_static(hit));
    if let Some(tier) = tier {
        headers.insert(CACHE_TIER_HEADER, HeaderValue::from_static(tier.as_str()));
    }
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
