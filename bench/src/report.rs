//! The report: what was measured, in one serialisable value (for `--json`), and its plain-text
//! form for people. Every chatq figure is printed beside the ceilings measured in the same run,
//! as a ratio, so a slow machine or a busy moment shows in both and a regression shows in the
//! ratio.
//!
//! This is the top of the bench's modules: it gathers every scenario's result, and each result
//! renders itself from the shared pieces ([`super::figures`], [`super::limits`]), so no scenario
//! depends on the report or on another scenario.

use std::fmt::Write as _;

use serde::Serialize;

use super::cache::CacheResult;
use super::completions::CompletionsResult;
use super::e2e::E2eResult;
use super::enqueue::EnqueueResult;
use super::fairness::FairnessResult;
use super::fleet::FleetResult;
use super::history::HistoryResult;
use super::idle::IdleResult;
use super::lanes::LanesResult;
use super::limits::Limits;
use super::machine::Machine;
use super::overhead::OverheadResult;
use super::soak::SoakResult;
use super::spike::SpikeResult;
use super::sse::SseResult;
use super::ttft::TtftResult;
use super::webhooks::WebhooksResult;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started, RFC 3339, UTC.
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub limits: Option<Limits>,
    pub enqueue: Option<EnqueueResult>,
    pub e2e: Option<E2eResult>,
    pub ttft: Option<TtftResult>,
    pub overhead: Option<OverheadResult>,
    pub sse: Option<SseResult>,
    pub fleet: Option<FleetResult>,
    pub spike: Option<SpikeResult>,
    pub lanes: Option<LanesResult>,
    pub fairness: Option<FairnessResult>,
    pub cache: Option<CacheResult>,
    pub history: Option<HistoryResult>,
    pub webhooks: Option<WebhooksResult>,
    pub completions: Option<CompletionsResult>,
    pub idle: Option<IdleResult>,
    pub soak: Option<SoakResult>,
}

impl Report {
    /// The report for people, as printed on standard output.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "chatq bench, {}", self.date);
        let _ = writeln!(out, "command: {}", self.command);
        let _ = writeln!(
            out,
            "machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}, Postgres {}, NATS {}",
            m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.postgres_version, m.nats_version
        );
        if let Some(limits) = &self.limits {
            limits.render(&mut out);
        }
        if let Some(enqueue) = &self.enqueue {
            enqueue.render(&mut out, self.limits.as_ref());
        }
        if let Some(e2e) = &self.e2e {
            e2e.render(&mut out, self.limits.as_ref());
        }
        if let Some(ttft) = &self.ttft {
            ttft.render(&mut out);
        }
        if let Some(overhead) = &self.overhead {
            overhead.render(&mut out);
        }
        if let Some(sse) = &self.sse {
            sse.render(&mut out);
        }
        if let Some(fleet) = &self.fleet {
            fleet.render(&mut out);
        }
        if let Some(spike) = &self.spike {
            spike.render(&mut out);
        }
        if let Some(lanes) = &self.lanes {
            lanes.render(&mut out);
        }
        if let Some(fairness) = &self.fairness {
            fairness.render(&mut out);
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.render(&mut out);
        }
        if let Some(completions) = &self.completions {
            completions.render(&mut out);
        }
        if let Some(cache) = &self.cache {
            cache.render(&mut out);
        }
        if let Some(history) = &self.history {
            history.render(&mut out);
        }
        if let Some(idle) = &self.idle {
            idle.render(&mut out);
        }
        if let Some(soak) = &self.soak {
            soak.render(&mut out);
        }
        out
    }
}
