//! A small incremental decoder for `text/event-stream` bodies, as OpenAI-compatible servers send
//! them: `data: {...}` lines separated by blank lines, ending with `data: [DONE]`.
//!
//! Bytes go in as they arrive from the network, in chunks that may split a line or a UTF-8
//! character anywhere; complete events come out. Splitting on `\n` bytes is safe for UTF-8,
//! because no multi-byte character contains that byte.

/// Decodes server-sent events from a byte stream.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of a line not yet terminated.
    partial: Vec<u8>,
    /// `data:` lines of the event being assembled.
    data: Vec<String>,
    has_data: bool,
}

/// An error for a body that is not an event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8 in the event stream")]
pub struct InvalidUtf8;

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the `data` of every event they complete.
    ///
    /// # Errors
    /// A line is not valid UTF-8.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, InvalidUtf8> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(newline);
            rest = &tail[1..];
            let complete = if self.partial.is_empty() {
                self.line(line)?
            } else {
                self.partial.extend_from_slice(line);
                let joined = std::mem::take(&mut self.partial);
                self.line(&joined)?
            };
            if let Some(event) = complete {
                events.push(event);
            }
        }
        self.partial.extend_from_slice(rest);
        Ok(events)
    }

    /// Bytes buffered in an unfinished line (bounded by the caller's response-size cap).
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.data.iter().map(String::len).sum::<usize>()
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<String>, InvalidUtf8> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // A blank line dispatches the event.
            if !self.has_data {
                return Ok(None);
            }
            self.has_data = false;
            let data = std::mem::take(&mut self.data).join("\n");
            return Ok(Some(data));
        }
        let line = std::str::from_utf8(line).map_err(|_| InvalidUtf8)?;
        if line.starts_with(':') {
            return Ok(None); // A comment (keep-alive).
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            self.data.push(value.to_owned());
            self.has_data = true;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let body = "data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":\"é\"}\r\n\r\ndata: [DONE]\n\n";
        let bytes = body.as_bytes();
        // Feed one byte at a time: every split point, including inside `é`, must work.
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for byte in bytes {
            events.extend(decoder.feed(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(events, vec!["{\"a\":1}", "{\"b\":\"é\"}", "[DONE]"]);
    }

    #[test]
    fn multi_line_data_is_joined_and_other_fields_ignored() {
        let mut decoder = SseDecoder::new();
        let events = decoder
            .feed(b"event: x\nid: 3\ndata: one\ndata: two\n\n")
            .unwrap();
        assert_eq!(events, vec!["one\ntwo"]);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut decoder = SseDecoder::new();
        assert_eq!(decoder.feed(b"data: \xff\xfe\n\n"), Err(InvalidUtf8));
    }
}
