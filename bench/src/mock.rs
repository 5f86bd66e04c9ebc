//! The provider's side of the story: what the mock provider (a child process) saw, read from its
//! `GET /stats`, and the rate at which requests reached it, from the arrival time it records for
//! each request. A limit chatq claims to hold is checked here, where the requests arrive, not by
//! trusting chatq's own counters.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use chatq_mock_llm::MockStats;
use http_body_util::{BodyExt as _, Full};
use hyper::header::HOST;
use hyper::{Method, Request};
use serde::Serialize;

use super::load::Connection;

/// Reads the mock's counters and arrival times.
///
/// # Errors
/// The mock cannot be reached or answers something else than its stats.
pub async fn stats(mock: SocketAddr) -> anyhow::Result<MockStats> {
    let body = call(mock, Method::GET, "/stats").await?;
    serde_json::from_slice(&body).context("the mock's /stats is not what it should be")
}

/// Clears the mock's counters and arrival times (after a warm-up).
///
/// # Errors
/// The mock cannot be reached.
pub async fn reset(mock: SocketAddr) -> anyhow::Result<()> {
    call(mock, Method::POST, "/reset").await.map(drop)
}

async fn call(mock: SocketAddr, method: Method, path: &'static str) -> anyhow::Result<Bytes> {
    let mut connection = Connection::open(mock).await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, mock.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = connection
        .send(request)
        .await
        .with_context(|| format!("the mock did not answer {path}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "the mock answered {path} with {}",
        response.status()
    );
    Ok(response.into_body().collect().await?.to_bytes())
}

/// The rate at which requests arrived at the provider.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ArrivalRate {
    pub requests: usize,
    /// From the first arrival to the last.
    pub seconds: f64,
    /// `(requests - 1) / seconds`: the average rate between the first and the last arrival.
    pub per_second: f64,
    /// The fewest and most arrivals in one whole second, counting seconds from the first arrival
    /// (the last, partial second left out).
    pub slowest_second: usize,
    pub busiest_second: usize,
    /// The most arrivals in any one-second window, wherever it starts.
    pub max_in_any_second: usize,
}

impl ArrivalRate {
    /// From arrival times in milliseconds (the mock's clock), in the order they arrived.
    pub fn of(arrivals_ms: &[u64]) -> Self {
        let (Some(&first), Some(&last)) = (arrivals_ms.first(), arrivals_ms.last()) else {
            return Self::default();
        };
        let seconds = (last.saturating_sub(first)) as f64 / 1000.0;
        let per_second = if seconds > 0.0 {
            (arrivals_ms.len() - 1) as f64 / seconds
        } else {
            0.0
        };
        let whole_seconds = usize::try_from((last - first) / 1000).unwrap_or(0);
        let mut bins = vec![0usize; whole_seconds];
        for at in arrivals_ms {
            let bin = usize::try_from((at - first) / 1000).unwrap_or(usize::MAX);
            if let Some(count) = bins.get_mut(bin) {
                *count += 1;
            }
        }
        let mut max_in_any_second = 0;
        let mut window_start = 0;
        for (index, at) in arrivals_ms.iter().enumerate() {
            while arrivals_ms[window_start] + 1000 <= *at {
                window_start += 1;
            }
            max_in_any_second = max_in_any_second.max(index + 1 - window_start);
        }
        Self {
            requests: arrivals_ms.len(),
            seconds,
            per_second,
            slowest_second: bins.iter().copied().min().unwrap_or(0),
            busiest_second: bins.iter().copied().max().unwrap_or(0),
            max_in_any_second,
        }
    }
}

impl std::fmt::Display for ArrivalRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1} s: {:.1}/s; whole seconds {}–{}; most in any 1 s window {}",
            self.requests,
            self.seconds,
            self.per_second,
            self.slowest_second,
            self.busiest_second,
            self.max_in_any_second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_read_back() {
        // 100 a second for 10 seconds, then a burst of 30 at the very end.
        let mut arrivals: Vec<u64> = (0..1000).map(|i| 5_000 + i * 10).collect();
        arrivals.extend(std::iter::repeat_n(14_995, 30));
        let rate = ArrivalRate::of(&arrivals);
        assert_eq!(rate.requests, 1030);
        assert_eq!(rate.slowest_second, 100);
        assert_eq!(rate.busiest_second, 100);
        assert_eq!(rate.max_in_any_second, 130);
        assert!((rate.per_second - 1029.0 / 9.995).abs() < 1e-6);
        assert_eq!(ArrivalRate::of(&[]).requests, 0);
    }
}
