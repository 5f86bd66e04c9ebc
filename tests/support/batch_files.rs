//! Batch input files for the API and fault tests: request lines and the multipart form that
//! uploads them (built by hand: the tests' reqwest has no multipart support).

use serde_json::{Value, json};

/// A batch line asking for an answer; the prompt names the custom id, so a test can tell from
/// the provider's requests which line each was.
pub fn request_line(custom_id: &str) -> Value {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "mock-model", "messages": [{"role": "user", "content": format!("Answer {custom_id}")}]},
    })
}

/// The custom id a provider request of [`request_line`] was for.
pub fn custom_id_asked(body: &Value) -> String {
    body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("Answer ")
        .to_owned()
}

pub fn jsonl(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .map(|line| format!("{line}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A `POST /v1/files` form: (content type, body).
pub fn upload_form(purpose: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "cqtest-boundary-5f1d";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"requests.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
