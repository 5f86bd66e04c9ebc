//! A provider behind this worker's share of the limits: every call waits for its turn, and what
//! the provider answers (429s, token usage) feeds back into the limits.

use std::sync::Arc;

use async_trait::async_trait;
use chatq_common::chat::estimate_tokens;
use futures::StreamExt;

use super::{DEFAULT_COMPLETION_ESTIMATE, ProviderLimits};
use crate::provider::{
    EmbeddingRequest, Provider, ProviderError, ProviderRequest, ReplyStream, StreamItem,
};

/// A provider behind this worker's share of the limits.
pub struct LimitedProvider {
    inner: Arc<dyn Provider>,
    limits: Arc<ProviderLimits>,
}

impl LimitedProvider {
    pub fn new(inner: Arc<dyn Provider>, limits: Arc<ProviderLimits>) -> Self {
        Self { inner, limits }
    }

    /// The prompt's estimated tokens, plus the most each choice may answer with.
    fn estimate(request: &ProviderRequest) -> u32 {
        let prompt: usize = request
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content) + 4)
            .sum();
        let prompt = u32::try_from(prompt).unwrap_or(u32::MAX);
        let per_choice = request
            .params
            .max_tokens
            .unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
        prompt.saturating_add(per_choice.saturating_mul(request.params.n.unwrap_or(1).max(1)))
    }

    fn observe<T>(&self, result: &Result<T, ProviderError>) {
        match result {
            Err(ProviderError::RateLimited { .. }) => self.limits.rate_limited(),
            _ => self.limits.accepted(),
        }
    }
}

#[async_trait]
impl Provider for LimitedProvider {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn complete_stream(
        &self,
        request: &ProviderRequest,
    ) -> Result<ReplyStream, ProviderError> {
        let estimate = Self::estimate(request);
        self.limits.admit(estimate, request.lane).await;
        let result = self.inner.complete_stream(request).await;
        self.observe(&result);
        let stream = result?;
        let limits = self.limits.clone();
        Ok(stream
            .inspect(move |item| match item {
                Ok(StreamItem::Done {
                    usage: Some(usage), ..
                }) => limits.settle_tokens(estimate, usage.total_tokens),
                Err(ProviderError::RateLimited { .. }) => limits.rate_limited(),
                _ => {}
            })
            .boxed())
    }

    /// An embedding call takes its turn at the limits like a completion: it is a request, and its
    /// input is tokens.
    async fn embed(&self, request: &EmbeddingRequest<'_>) -> Result<Vec<f32>, ProviderError> {
        let estimate = u32::try_from(estimate_tokens(request.input)).unwrap_or(u32::MAX);
        self.limits.admit(estimate, request.lane).await;
        let result = self.inner.embed(request).await;
        self.observe(&result);
        result
    }
}
