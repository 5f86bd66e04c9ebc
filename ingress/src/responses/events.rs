//! A response's stream events, derived from its job's event log.
//!
//! The Responses API numbers a response's events 0, 1, 2, … (`sequence_number`), and a client
//! that lost its stream asks for the events after the last number it saw (`starting_after`).
//! chatq does not store those events: [`Translator`] derives them from the job's events
//! (`job.queued`, `job.started`, `message.delta`, the terminal event), which the event hubs
//! replay in the same order with the same ids for every reader. The translation is a pure
//! function of that log, each job event giving a fixed run of response events, so a resumed
//! stream numbers every event as the first stream did and continues with no gap and no repeat.
//!
//! | job event | response events |
//! |---|---|
//! | `job.queued` | `response.created`, `response.queued` |
//! | first `job.started` | `response.in_progress`, `response.output_item.added`, `response.content_part.added` |
//! | `message.delta` | `response.output_text.delta` (text of choice 0) |
//! | `job.succeeded` | `response.output_text.done`, `response.content_part.done`, `response.output_item.done`, `response.completed` (or `response.incomplete`) |
//! | `job.failed` | `response.failed` |
//! | `job.cancelled` | `response.failed` whose response has the status `cancelled` (the API has no event of its own for it) |
//!
//! A retried attempt (a worker died mid-reply) starts its text again: text it repeats is not
//! sent twice, and the `done` events and the final response carry the reply as committed, which
//! is the one to keep. A reply read back from Postgres (the job's events have aged out of the
//! replay window) arrives as one delta.

use chatq_common::db::responses::ResponseRow;
use chatq_common::events::{EventBody, JobView};
use serde_json::{Value, json};

use super::object::{message_item, output_item_id, output_part, response_json, status_of};

/// Turns a job's events into the response's, numbering them.
pub struct Translator {
    row: ResponseRow,
    /// The job as first known (for the response objects of the early events).
    job: JobView,
    next: u64,
    opened: bool,
    /// The text sent in deltas so far.
    sent: String,
    /// The text of the attempt running now.
    attempt_text: String,
    ended: bool,
}

impl Translator {
    pub fn new(row: ResponseRow, job: JobView) -> Self {
        Self {
            row,
            job,
            next: 0,
            opened: false,
            sent: String::new(),
            attempt_text: String::new(),
            ended: false,
        }
    }

    /// Whether the response's last event has been made.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The response events one job event gives, each with its `sequence_number`.
    pub fn on(&mut self, body: &EventBody) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        match body {
            EventBody::Queued(_) => {
                let queued = response_json(&self.row, &self.job, "queued");
                self.push(
                    &mut out,
                    json!({"type": "response.created", "response": queued}),
                );
                self.push(
                    &mut out,
                    json!({"type": "response.queued", "response": queued}),
                );
            }
            EventBody::Started(_) => {
                self.open(&mut out);
                self.attempt_text.clear();
            }
            EventBody::Delta(delta) => {
                if delta.index == 0 && !delta.text.is_empty() {
                    self.open(&mut out);
                    self.attempt_text.push_str(&delta.text);
                    self.send_new_text(&mut out);
                }
            }
            EventBody::Succeeded(job) | EventBody::Failed(job) | EventBody::Cancelled(job) => {
                self.end(&mut out, job);
            }
        }
        out
    }

    fn push(&mut self, out: &mut Vec<Value>, mut event: Value) {
        event["sequence_number"] = json!(self.next);
        self.next += 1;
        out.push(event);
    }

    /// The events that start the output: once.
    fn open(&mut self, out: &mut Vec<Value>) {
        if self.opened {
            return;
        }
        self.opened = true;
        let in_progress = response_json(&self.row, &self.job, "in_progress");
        self.push(
            out,
            json!({"type": "response.in_progress", "response": in_progress}),
        );
        let item = message_item(&self.row, None, "in_progress");
        self.push(
            out,
            json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        );
        let part = output_part("");
        let item_id = output_item_id(&self.row);
        self.push(
            out,
            json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
                   "content_index": 0, "part": part}),
        );
    }

    /// Sends the text of this attempt beyond what was sent already (a retried attempt repeats
    /// the start of the reply).
    fn send_new_text(&mut self, out: &mut Vec<Value>) {
        let Some(new) = self.attempt_text.strip_prefix(self.sent.as_str()) else {
            // The attempt has not caught up with what was sent, or differs from it: the
            // `done` events carry the reply as committed.
            return;
        };
        if new.is_empty() {
            return;
        }
        let delta = new.to_owned();
        self.sent.push_str(&delta);
        self.text_delta(out, &delta);
    }

    fn text_delta(&mut self, out: &mut Vec<Value>, delta: &str) {
        let item_id = output_item_id(&self.row);
        self.push(
            out,
            json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                   "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn end(&mut self, out: &mut Vec<Value>, job: &JobView) {
        self.ended = true;
        let status = status_of(job);
        let response = response_json(&self.row, job, status);
        match status {
            "completed" | "incomplete" => {
                self.open(out);
                let text = job
                    .reply
                    .as_ref()
                    .map(|r| r.content.clone())
                    .unwrap_or_default();
                // A reply the deltas did not (all) carry: the rest of it, when it follows on.
                if let Some(rest) = text.strip_prefix(self.sent.as_str())
                    && !rest.is_empty()
                {
                    let rest = rest.to_owned();
                    self.sent.push_str(&rest);
                    self.text_delta(out, &rest);
                }
                let item_id = output_item_id(&self.row);
                self.push(
                    out,
                    json!({"type": "response.output_text.done", "item_id": item_id,
                           "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.push(
                    out,
                    json!({"type": "response.content_part.done", "item_id": item_id,
                           "output_index": 0, "content_index": 0, "part": output_part(&text)}),
                );
                let item = message_item(&self.row, Some(&text), status);
                self.push(
                    out,
                    json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
                );
                let kind = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                self.push(out, json!({"type": kind, "response": response}));
            }
            _ => self.push(
                out,
                json!({"type": "response.failed", "response": response}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use chatq_common::events::{Delta, Queued, Started};
    use chatq_common::ids::{JobId, ResponseId};
    use chatq_common::job::JobStatus;
    use chatq_common::job::view::ReplyView;

    use super::*;

    fn row() -> ResponseRow {
        ResponseRow {
            id: ResponseId::new(),
            previous: None,
            instructions: None,
            input: json!([]),
            metadata: json!({}),
            store: true,
            background: true,
            temperature: None,
            top_p: None,
            max_output_tokens: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn job(status: JobStatus, reply: Option<&str>) -> JobView {
        JobView {
            id: JobId::new(),
            object: "job".into(),
            status,
            lane: "interactive".into(),
            model: "m".into(),
            conversation_id: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            attempts: 1,
            queued_ms: None,
            ttft_ms: None,
            upstream_ms: None,
            reply: reply.map(|text| ReplyView {
                message_id: None,
                model: None,
                content: text.into(),
                finish_reason: Some("stop".into()),
                usage: None,
                cached: false,
                cache: None,
                choices: Vec::new(),
            }),
            error: None,
        }
    }

    fn queued() -> EventBody {
        EventBody::Queued(Queued {
            job_id: JobId::new(),
            status: JobStatus::Queued,
            created_at: 0,
        })
    }

    fn started(attempt: u32) -> EventBody {
        EventBody::Started(Started {
            job_id: JobId::new(),
            attempt,
            cached: false,
            cache: None,
        })
    }

    fn delta(text: &str) -> EventBody {
        EventBody::Delta(Delta::text(text))
    }

    fn translate(log: &[EventBody]) -> Vec<Value> {
        let row = row();
        let mut translator = Translator::new(row, job(JobStatus::Queued, None));
        log.iter().flat_map(|event| translator.on(event)).collect()
    }

    fn kinds_and_numbers(events: &[Value]) -> Vec<(String, u64)> {
        events
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["sequence_number"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    fn text(events: &[Value]) -> String {
        events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .filter_map(|e| e["delta"].as_str())
            .collect()
    }

    #[test]
    fn the_same_log_gives_the_same_events_under_the_same_numbers() {
        let log = [
            queued(),
            started(1),
            delta("Hel"),
            delta("lo"),
            EventBody::ended(job(JobStatus::Succeeded, Some("Hello"))),
        ];
        let first = translate(&log);
        let second = translate(&log);
        assert_eq!(kinds_and_numbers(&first), kinds_and_numbers(&second));
        let numbers: Vec<u64> = kinds_and_numbers(&first).iter().map(|k| k.1).collect();
        assert_eq!(numbers, (0..first.len() as u64).collect::<Vec<_>>());
        assert_eq!(first[0]["type"], "response.created");
        assert_eq!(
            first.last().map(|e| e["type"].clone()),
            Some(json!("response.completed"))
        );
        assert_eq!(text(&first), "Hello");
    }

    #[test]
    fn a_retried_attempt_does_not_send_its_text_twice() {
        let log = [
            queued(),
            started(1),
            delta("Hel"),
            started(2),
            delta("He"),
            delta("llo"),
            EventBody::ended(job(JobStatus::Succeeded, Some("Hello"))),
        ];
        let events = translate(&log);
        assert_eq!(text(&events), "Hello");
        let added = events
            .iter()
            .filter(|e| e["type"] == "response.output_item.added")
            .count();
        assert_eq!(added, 1);
    }

    #[test]
    fn a_reply_read_back_from_postgres_still_ends_the_stream_whole() {
        let log = [
            queued(),
            delta("Hello"),
            EventBody::ended(job(JobStatus::Succeeded, Some("Hello"))),
        ];
        let events = translate(&log);
        assert_eq!(text(&events), "Hello");
        assert!(events.iter().any(|e| e["type"] == "response.in_progress"));
        let failed = translate(&[queued(), EventBody::ended(job(JobStatus::Cancelled, None))]);
        let last = failed.last().cloned().unwrap_or_default();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "cancelled");
    }
}
