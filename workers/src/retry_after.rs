//! How long a server asked to be left alone: `Retry-After` as the provider and webhook receivers
//! send it.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

/// The longest wait a server's answer can ask for; anything longer is read as this.
const LONGEST: f64 = 3600.0;

/// `Retry-After` in seconds, or OpenAI's `retry-after-ms`, at most an hour. (The HTTP-date form
/// is not read: neither OpenAI-compatible providers nor common webhook receivers send it.)
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |value: &HeaderValue| value.to_str().ok()?.trim().parse::<f64>().ok();
    if let Some(ms) = headers.get("retry-after-ms").and_then(number) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, LONGEST)));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(number)
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, LONGEST)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_date_or_nonsense_is_not_a_wait_and_a_huge_one_is_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3600)));
    }
}
