//! The requests `chatq batch` makes. An error answer is reported in the API's own words
//! (`error.message`), with its status.

use std::path::Path;

use anyhow::Context as _;
use futures::StreamExt as _;
use indicatif::ProgressBar;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::ApiArgs;

/// Bytes read from the file per piece of the upload.
const UPLOAD_PIECE: usize = 256 * 1024;

pub struct BatchApi {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl BatchApi {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        // reqwest is built without a default TLS crypto backend; chatq uses ring.
        drop(rustls::crypto::ring::default_provider().install_default());
        Ok(Self {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .context("cannot build an HTTP client")?,
            base: args.url.trim_end_matches('/').to_owned(),
            key: args.key.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        answer(self.request(reqwest::Method::GET, path).send().await, path).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let sent = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await;
        answer(sent, path).await
    }

    /// `POST /v1/files` with purpose `batch`, the file streamed from disk (never read whole),
    /// `bar` moving as it goes.
    pub async fn upload(&self, file: &Path, bar: &ProgressBar) -> anyhow::Result<Value> {
        let boundary = format!("chatq-{}", uuid_like());
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("requests.jsonl")
            .replace('"', "");
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let reader = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot open {}", file.display()))?;
        let bar = bar.clone();
        let pieces = futures::stream::try_unfold(reader, move |mut reader| {
            let bar = bar.clone();
            async move {
                let mut piece = vec![0; UPLOAD_PIECE];
                let read = reader.read(&mut piece).await?;
                if read == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                piece.truncate(read);
                bar.inc(read as u64);
                Ok(Some((bytes::Bytes::from(piece), reader)))
            }
        });
        let body = futures::stream::once(async move { Ok(bytes::Bytes::from(head)) })
            .chain(pieces)
            .chain(futures::stream::once(async move {
                Ok(bytes::Bytes::from(tail))
            }));
        let sent = self
            .request(reqwest::Method::POST, "/files")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        answer(sent, "/files").await
    }

    /// Streams a file's content to `path`; returns its lines.
    pub async fn download(&self, path: &str, to: &Path) -> anyhow::Result<u64> {
        let response = self.request(reqwest::Method::GET, path).send().await;
        let response = checked(response, path).await?;
        let mut out = tokio::fs::File::create(to)
            .await
            .with_context(|| format!("cannot write {}", to.display()))?;
        let mut lines = 0;
        let mut body = response.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.with_context(|| format!("the download of {path} broke off"))?;
            lines += piece.iter().filter(|&&b| b == b'\n').count() as u64;
            out.write_all(&piece).await?;
        }
        out.flush().await?;
        Ok(lines)
    }
}

/// A boundary no file line will hold by chance.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{:x}", std::process::id())
}

async fn checked(
    sent: reqwest::Result<reqwest::Response>,
    path: &str,
) -> anyhow::Result<reqwest::Response> {
    let response = sent.with_context(|| format!("cannot reach chatq for {path}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no error message");
    anyhow::bail!("{path}: {status}: {message}")
}

async fn answer(sent: reqwest::Result<reqwest::Response>, path: &str) -> anyhow::Result<Value> {
    checked(sent, path)
        .await?
        .json()
        .await
        .with_context(|| format!("{path}: the answer is not JSON"))
}
