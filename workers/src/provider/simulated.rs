//! The built-in simulated provider: deterministic replies with configurable latency, length and
//! failure rate, and no network. It is the default, so a first `chatq serve` works with nothing
//! else configured; it says so at start-up and in the `model` of every reply
//! (`simulated/<model>`), so nobody mistakes it for a real model.
//!
//! Its replies come from [`text`]: the same prompt always gets the same words. Its embeddings come
//! from [`embedding`]: a bag of words, so texts that share most words are close.

pub mod embedding;
pub mod text;

use std::time::Duration;

use async_trait::async_trait;
use chatq_common::chat::Usage;
use chatq_common::choices::ChoiceDelta;
use chatq_common::settings::SimulatedSettings;
use futures::StreamExt;
use rand::Rng;

use self::text::{prompt_tokens, reply_tokens};
use super::{EmbeddingRequest, Provider, ProviderError, ProviderRequest, ReplyStream, StreamItem};

/// The simulated provider.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    ttft: Duration,
    token_delay: Duration,
    tokens: u32,
    failure_rate: f64,
}

impl SimulatedProvider {
    pub fn from_settings(settings: &SimulatedSettings) -> Self {
        Self {
            ttft: Duration::from_millis(settings.ttft_ms),
            token_delay: Duration::from_millis(settings.token_delay_ms),
            tokens: settings.tokens,
            failure_rate: settings.failure_rate.clamp(0.0, 1.0),
        }
    }

    fn plan(&self, request: &ProviderRequest) -> Result<Plan, ProviderError> {
        if self.failure_rate > 0.0 && rand::rng().random_bool(self.failure_rate) {
            return Err(ProviderError::Server {
                status: 503,
                message: "simulated failure (CHATQ_SIMULATED_FAILURE_RATE)".into(),
                retry_after: None,
            });
        }
        let wanted = request.params.max_tokens.unwrap_or(u32::MAX);
        let count = self.tokens.min(wanted);
        let finish_reason = if wanted < self.tokens {
            "length"
        } else {
            "stop"
        };
        Ok(Plan {
            tokens: reply_tokens(&request.messages, count as usize),
            usage: Usage::new(prompt_tokens(&request.messages), count),
            finish_reason: finish_reason.into(),
            model: format!("simulated/{}", request.params.model),
        })
    }
}

struct Plan {
    tokens: Vec<String>,
    usage: Usage,
    finish_reason: String,
    model: String,
}

#[async_trait]
impl Provider for SimulatedProvider {
    fn describe(&self) -> String {
        format!(
            "SIMULATED provider ({} tokens, first after {} ms, then every {} ms): replies are not \
             from a real model; set CHATQ_PROVIDER=openai and CHATQ_PROVIDER_BASE_URL to use one",
            self.tokens,
            self.ttft.as_millis(),
            self.token_delay.as_millis()
        )
    }

    async fn complete_stream(
        &self,
        request: &ProviderRequest,
    ) -> Result<ReplyStream, ProviderError> {
        let plan = self.plan(request)?;
        let (ttft, delay) = (self.ttft, self.token_delay);
        let done = StreamItem::Done {
            finish_reasons: vec![(0, plan.finish_reason)],
            usage: Some(plan.usage),
            model: plan.model,
        };
        let deltas = futures::stream::iter(plan.tokens.into_iter().enumerate()).then(
            move |(i, token)| async move {
                let wait = if i == 0 { ttft } else { delay };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(StreamItem::Delta(ChoiceDelta::text(token)))
            },
        );
        Ok(deltas
            .chain(futures::stream::once(async move { Ok(done) }))
            .boxed())
    }

    async fn embed(&self, request: &EmbeddingRequest<'_>) -> Result<Vec<f32>, ProviderError> {
        Ok(embedding::embed(request.input))
    }
}
