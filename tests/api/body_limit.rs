//! A body over `max_request_bytes` is answered with 413, and the client gets to read it: also on
//! a connection it reuses, and when it writes its whole request before reading (as httpx and the
//! OpenAI SDK do).

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::{messages_path, spawn_app};

/// Reads one response off a kept-alive connection: its status and body.
async fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no response, got {status_line:?}"));
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn request(method: &str, path: &str, key: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: chatq\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn an_oversized_body_on_a_reused_connection_gets_its_413() {
    let app = spawn_app().await;
    let conversation = app.create_conversation(serde_json::json!({})).await;
    let path = messages_path(conversation["id"].as_str().unwrap());
    let limit = app.settings.limits.max_request_bytes;
    let too_big = format!(r#"{{"content": "{}"}}"#, "x".repeat(4 * limit));
    for round in 0..3 {
        let stream = TcpStream::connect(app.addr).await.unwrap();
        let mut reader = BufReader::new(stream);
        // A few ordinary requests first, on the same connection.
        for _ in 0..3 {
            let get = request("GET", "/v1/conversations", &app.key, "");
            reader.get_mut().write_all(&get).await.unwrap();
            let (status, body) = read_response(&mut reader).await;
            assert_eq!(status, 200, "round {round}: {body}");
        }
        // The whole oversized request is written before anything is read.
        let post = request("POST", &path, &app.key, &too_big);
        reader
            .get_mut()
            .write_all(&post)
            .await
            .unwrap_or_else(|err| panic!("round {round}: the request could not be written: {err}"));
        let (status, body) = read_response(&mut reader).await;
        assert_eq!(status, 413, "round {round}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["type"], "request_too_large", "{body}");
    }
    assert_eq!(app.row_counts().await.2, 0, "nothing was recorded");
    app.stop().await;
}
