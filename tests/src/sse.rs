//! A Server-Sent Events reader for the tests: reads `text/event-stream` off a reqwest
//! response and hands back one message at a time, as a browser's parser would.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::Value;

use crate::client::ApiClient;

#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseMessage {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.data).with_context(|| format!("data of {self:?}"))
    }

    /// The id's seq (`12`, or `<action>:12` on the account stream).
    pub fn seq(&self) -> Option<u64> {
        self.id.as_deref()?.rsplit(':').next()?.parse().ok()
    }
}

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

pub struct SseStream {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Body,
    buffer: String,
    /// Comment lines (keep-alives) seen so far.
    pub comments: usize,
}

impl SseStream {
    /// The next message; `None` when the server ended the stream. Fails after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<SseMessage>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(message) = self.take_message() {
                return Ok(Some(message));
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .context("no event-stream message in time")?;
            match chunk {
                Some(chunk) => {
                    let text = String::from_utf8_lossy(&chunk.context("reading the stream")?)
                        .replace("\r\n", "\n");
                    self.buffer.push_str(&text);
                }
                None => return Ok(self.take_message()),
            }
        }
    }

    /// Messages until one named `name` (included), failing after `timeout` in all.
    pub async fn until(&mut self, name: &str, timeout: Duration) -> Result<Vec<SseMessage>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(message) => {
                    let done = message.event == name;
                    seen.push(message);
                    if done {
                        return Ok(seen);
                    }
                }
                None => bail!("the stream ended before `{name}`: {seen:?}"),
            }
        }
    }

    fn take_message(&mut self) -> Option<SseMessage> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut message = SseMessage {
                id: None,
                event: "message".to_owned(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => message.id = Some(value.to_owned()),
                    "event" => message.event = value.to_owned(),
                    "data" => {
                        if has_data {
                            message.data.push('\n');
                        }
                        message.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                return Some(message);
            }
        }
    }
}

impl ApiClient {
    /// Opens an event stream at `path` with `account`'s key (and `Last-Event-ID` when
    /// given). Any status is returned: check `status`.
    pub async fn events(
        &self,
        path: &str,
        account: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseStream> {
        let key = self.key_for(account).await?;
        let mut request = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        Ok(SseStream {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: Box::pin(
                response
                    .bytes_stream()
                    .map(|chunk| chunk.map(|bytes| bytes.to_vec())),
            ),
            buffer: String::new(),
            comments: 0,
        })
    }
}
