//! Connection-level limits: a client that never finishes its request headers, or its body, is cut
//! off; and an ingress holds no more connections than it is allowed.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestOptions, spawn_app_with};

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    drop(stream.read_to_end(&mut received).await);
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.ingress.header_read_timeout_secs = 1),
        ..TestOptions::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"GET /v1/models HT").await.unwrap();
        slow.push(stream);
    }
    let closed = futures::future::join_all(slow.iter_mut().map(read_to_close));
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("every half-sent request is closed by the ingress");
    // Meanwhile and after, whole requests are served.
    let response = app.get("/v1/models").await;
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.ingress.body_read_timeout_secs = 1),
        ..TestOptions::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/conversations HTTP/1.1\r\nHost: chatq\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"title\":",
        app.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut stream))
        .await
        .expect("the ingress answers a trickling body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(app.row_counts().await.0, 0, "nothing was created");
    app.stop().await;
}

#[tokio::test]
async fn an_ingress_holds_no_more_connections_than_its_cap() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        settings: Box::new(|s| s.ingress.max_connections = 3),
        ..TestOptions::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"GET /v1/models HT").await.unwrap();
        held.push(stream);
    }
    // A fourth client waits in the backlog: it is not served while the three are open.
    let mut fourth = tokio::spawn({
        let request = app.request(reqwest::Method::GET, "/v1/models");
        async move { request.send().await.map(|r| r.status()) }
    });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut fourth).await;
    assert!(
        early.is_err(),
        "a fourth connection was served at the cap: {early:?}"
    );
    // One closes: the fourth is served.
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(20), fourth)
        .await
        .expect("the waiting client is served once a connection closes")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    drop(held);
    app.stop().await;
}
