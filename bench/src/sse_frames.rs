//! Reading a `text/event-stream` body as it arrives: bytes in, whole events out. Both SSE bodies
//! the bench reads use it: chat completion chunks (`data: {...}` lines ending with
//! `data: [DONE]`) and job events (`id:`, `event:`, `data:`).
//!
//! Only what chatq and the mock send is handled: events end with a blank line, every field is on
//! one line, and comments (keep-alives) start with `:`. A field's value loses one leading space,
//! as the SSE specification says.

/// One event: its fields, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Bytes received but not yet a whole event.
#[derive(Debug, Default)]
pub struct SseBuffer {
    pending: Vec<u8>,
}

impl SseBuffer {
    /// Adds a chunk of the body and returns the events it completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find_blank_line(&self.pending) {
            let block: Vec<u8> = self.pending.drain(..end.end).collect();
            let text = String::from_utf8_lossy(&block[..end.start]);
            if let Some(event) = parse_block(&text) {
                events.push(event);
            }
        }
        events
    }
}

/// Where the first blank line is: the range of the line break(s) that end an event.
fn find_blank_line(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let lf = bytes.windows(2).position(|pair| pair == b"\n\n");
    let crlf = bytes.windows(4).position(|quad| quad == b"\r\n\r\n");
    match (lf, crlf) {
        (Some(a), Some(b)) if b < a => Some(b..b + 4),
        (Some(a), _) => Some(a..a + 2),
        (None, Some(b)) => Some(b..b + 4),
        (None, None) => None,
    }
}

/// The event of one block of lines; `None` for a block of comments only.
fn parse_block(text: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut has_field = false;
    for line in text.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        has_field = true;
        match name {
            "id" => event.id = Some(value.to_owned()),
            "event" => event.event = Some(value.to_owned()),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
    has_field.then_some(event)
}

/// The text of a chat completion chunk's `choices[0].delta.content`, or the arguments of its
/// first tool-call piece, if it carries either: the first piece of the answer. The role chunk
/// that opens a stream has `content: ""`, which is not content.
pub fn chunk_content(data: &str) -> Option<String> {
    let chunk: serde_json::Value = serde_json::from_str(data).ok()?;
    let delta = &chunk["choices"][0]["delta"];
    if let Some(call) = delta["tool_calls"]
        .as_array()
        .and_then(|calls| calls.first())
    {
        return Some(
            call["function"]["arguments"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let content = delta["content"].as_str()?;
    (!content.is_empty()).then(|| content.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_put_back_together() {
        let mut buffer = SseBuffer::default();
        assert!(buffer.push(b"id: 3\nevent: message.del").is_empty());
        let events =
            buffer.push(b"ta\ndata: {\"delta\":\"hi\"}\n\n: keep-alive\n\ndata:[DONE]\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("3".into()),
                    event: Some("message.delta".into()),
                    data: r#"{"delta":"hi"}"#.into(),
                },
                SseEvent {
                    data: "[DONE]".into(),
                    ..SseEvent::default()
                },
            ]
        );
    }

    #[test]
    fn the_role_chunk_carries_no_content() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        let token = r#"{"choices":[{"index":0,"delta":{"content":" queue"}}]}"#;
        assert_eq!(chunk_content(role), None);
        assert_eq!(chunk_content(token).as_deref(), Some(" queue"));
        assert_eq!(chunk_content("[DONE]"), None);
        let call = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}}]}"#;
        assert_eq!(chunk_content(call).as_deref(), Some(""));
    }
}
