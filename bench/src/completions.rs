//! `completions`: non-streaming chat completions answered per second, closed loop: N connections
//! (`--concurrency`, 64 by default), each sending its next `POST /v1/chat/completions` as soon as
//! the previous one is answered, as `oha -c 64` does. This is the path every OpenAI SDK user
//! takes, so it is the rate to compare with a gateway's.
//!
//! Three kinds of target, each with a warm-up, then measured for the same time with the same
//! requests: chatq (ingress and workers of the stack), the mock provider straight (what the
//! provider alone allows), and every `--completions-peer`: another OpenAI-compatible server, such
//! as a gateway started in front of this stack's mock (`--completions-mock-addr` fixes where the
//! mock listens, so the gateway can be configured before the run). The peers are measured by
//! the same load generator, in the same run, against the same mock, so the rates compare.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hyper::{Method, Uri};
use serde::Serialize;

use super::args::GeneralArgs;
use super::cpu::CpuWatch;
use super::figures::{cpu_cost_line, cpu_line, thousands};
use super::load::{Load, Requests};
use super::load_summary::LoadSummary;
use super::services::Services;
use super::stack::{MockPlan, Stack, StackPlan, with_stack};
use super::traffic::{Answer, chat_completions};

/// Seconds of warm-up against each target before it is measured.
const WARM_UP_SECS: f64 = 2.0;

#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// completions: seconds each target is measured for (after a 2 s warm-up).
    #[arg(
        id = "completions-seconds",
        long = "completions-seconds",
        default_value_t = 10.0
    )]
    pub seconds: f64,
    /// completions: the mock provider's latency (time to the whole reply), in milliseconds.
    #[arg(
        id = "completions-mock-ms",
        long = "completions-mock-ms",
        default_value_t = 0
    )]
    pub mock_ms: u64,
    /// completions: where the mock provider listens [default: a free port], so that a peer can
    /// be pointed at it before the run.
    #[arg(
        id = "completions-mock-addr",
        long = "completions-mock-addr",
        value_name = "HOST:PORT"
    )]
    pub mock_addr: Option<SocketAddr>,
    /// completions: another OpenAI-compatible server to measure the same way, as NAME=BASE_URL,
    /// e.g. litellm=http://127.0.0.1:4000/v1 (repeatable). Sent chatq's request bodies (model
    /// `mock-model`).
    #[arg(
        id = "completions-peer",
        long = "completions-peer",
        value_name = "NAME=BASE_URL"
    )]
    pub peers: Vec<String>,
    /// completions: the API key sent to the peers [default: the bench's chatq key].
    #[arg(
        id = "completions-peer-key",
        long = "completions-peer-key",
        value_name = "KEY"
    )]
    pub peer_key: Option<String>,
    /// completions: skip the load straight to the mock.
    #[arg(id = "completions-no-direct", long = "completions-no-direct")]
    pub no_direct: bool,
}

/// One peer of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub target: SocketAddr,
    /// `/v1/chat/completions` under the base URL's path.
    pub path: String,
}

/// Parses `NAME=http://HOST:PORT/PATH` (plain HTTP: the load generator speaks no TLS).
///
/// # Errors
/// Not of that form, or the host does not resolve.
pub fn parse_peer(spec: &str) -> anyhow::Result<Peer> {
    let (name, url) = spec
        .split_once('=')
        .with_context(|| format!("--completions-peer {spec:?}: expected NAME=BASE_URL"))?;
    let rest = url.strip_prefix("http://").with_context(|| {
        format!("--completions-peer {spec:?}: the base URL must start with http://")
    })?;
    let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
    let target = authority
        .to_socket_addrs()
        .with_context(|| format!("--completions-peer {spec:?}: {authority:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("--completions-peer {spec:?}: {authority:?} does not resolve"))?;
    let base = base.trim_end_matches('/');
    let path = if base.is_empty() {
        "/chat/completions".to_owned()
    } else {
        format!("/{base}/chat/completions")
    };
    Ok(Peer {
        name: name.to_owned(),
        target,
        path,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionsResult {
    pub mock_ms: u64,
    pub workers: usize,
    pub worker_concurrency: usize,
    pub chatq: LoadSummary,
    pub direct: Option<LoadSummary>,
    pub peers: Vec<PeerResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerResult {
    pub name: String,
    pub load: LoadSummary,
}

/// Runs the scenario on a stack of its own (mock, ingress, workers).
///
/// # Errors
/// A peer is not NAME=BASE_URL, the stack does not start, or a load cannot run.
pub async fn run(
    args: &GeneralArgs,
    completions: &CompletionsArgs,
    services: &Services,
) -> anyhow::Result<CompletionsResult> {
    let peers = completions
        .peers
        .iter()
        .map(|spec| parse_peer(spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mock = MockPlan {
        ttft_ms: completions.mock_ms,
        token_delay_ms: 0,
        tokens: args.mock_tokens,
    };
    let plan = StackPlan::new(args.workers, args.worker_concurrency, Some(mock))
        .without_key_rate_limit()
        .with_mock_addr(completions.mock_addr);
    with_stack(services, &plan, async |stack: &mut Stack| {
        let mock = stack
            .mock
            .ok_or_else(|| anyhow::anyhow!("no mock provider"))?;
        let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
        let measure = async |name: &str, target: SocketAddr, path: &str, key: &str| {
            let load = |label: String, seconds: f64| -> anyhow::Result<Load> {
                Ok(Load {
                    api_key: Some(key.to_owned()),
                    ..completions_closed_loop(label, target, path, seconds, args.concurrency)?
                })
            };
            LoadSummary::measure(load(format!("{name} warm-up"), WARM_UP_SECS)?, &watch, 200)
                .await?;
            LoadSummary::measure(load(name.to_owned(), completions.seconds)?, &watch, 200).await
        };
        let path = "/v1/chat/completions";
        let key = stack.api_key.as_str();
        let chatq = measure("completions through chatq", stack.ingress, path, key).await?;
        let direct = if completions.no_direct {
            None
        } else {
            Some(measure("completions direct to the mock", mock, path, key).await?)
        };
        let peer_key = completions.peer_key.as_deref().unwrap_or(key);
        let mut measured = Vec::new();
        for peer in &peers {
            let label = format!("completions through {}", peer.name);
            let load = measure(&label, peer.target, &peer.path, peer_key).await?;
            measured.push(PeerResult {
                name: peer.name.clone(),
                load,
            });
        }
        stack.check_alive()?;
        Ok(CompletionsResult {
            mock_ms: completions.mock_ms,
            workers: args.workers,
            worker_concurrency: args.worker_concurrency,
            chatq,
            direct,
            peers: measured,
        })
    })
    .await
}

/// The same non-streaming completion again and again for `seconds`, on `connections`; no key.
fn completions_closed_loop(
    label: String,
    target: SocketAddr,
    path: &str,
    seconds: f64,
    connections: usize,
) -> anyhow::Result<Load> {
    let body = chat_completions(1, false, Answer::Text)
        .pop()
        .map_or_else(Bytes::new, |planned| planned.body);
    Ok(Load {
        label,
        target,
        method: Method::POST,
        requests: Requests::Repeat {
            path: Uri::try_from(path).context("a completions path is not a valid URI")?,
            duration: Duration::from_secs_f64(seconds.max(0.1)),
        },
        body,
        api_key: None,
        connections,
    })
}

impl CompletionsResult {
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nCOMPLETIONS: non-streaming POST /v1/chat/completions, closed loop; mock latency {} ms; {} workers × concurrency {}",
            self.mock_ms, self.workers, self.worker_concurrency
        );
        let mut line = |load: &LoadSummary| {
            let _ = writeln!(
                out,
                "  {}: {}/s over {} connections in {:.1} s; latency ms: {}",
                load.label,
                thousands(load.per_second),
                load.connections,
                load.seconds,
                load.latency_ms
            );
            let _ = writeln!(out, "      answers: {}", load.answers());
            let _ = writeln!(
                out,
                "      load {}; CPU {}",
                load.load_average,
                cpu_line(&load.cpu)
            );
        };
        line(&self.chatq);
        if let Some(direct) = &self.direct {
            line(direct);
        }
        for peer in &self.peers {
            line(&peer.load);
        }
        for peer in &self.peers {
            let ratio = if peer.load.per_second > 0.0 {
                format!("{:.2}×", self.chatq.per_second / peer.load.per_second)
            } else {
                "∞ ×".into()
            };
            let _ = writeln!(out, "  chatq's rate is {ratio} {}'s", peer.name);
        }
        let _ = writeln!(
            out,
            "  CPU per completion through chatq, ms: {}",
            cpu_cost_line(&self.chatq.cpu, self.chatq.per_second)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_a_name_and_a_base_url() {
        let peer = parse_peer("litellm=http://127.0.0.1:4000/v1/").unwrap();
        assert_eq!(peer.name, "litellm");
        assert_eq!(peer.target, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(peer.path, "/v1/chat/completions");
        let bare = parse_peer("gw=http://127.0.0.1:8080").unwrap();
        assert_eq!(bare.path, "/chat/completions");
    }

    #[test]
    fn a_peer_without_a_name_or_over_tls_is_refused() {
        let unnamed = parse_peer("http://127.0.0.1:4000/v1").unwrap_err();
        assert!(format!("{unnamed:#}").contains("NAME=BASE_URL"));
        let tls = parse_peer("gw=https://127.0.0.1:4000/v1").unwrap_err();
        assert!(format!("{tls:#}").contains("http://"));
    }
}
