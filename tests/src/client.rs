//! HTTP and database helpers for talking to a running api, in-process or a real process.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mongodb::bson::Document;
use mongodb::Database;
use serde_json::Value;

/// A batch size that fits the test's reads in one reply (the server caps replies at 16 MB):
/// FerretDB drops a cursor with the connection that opened it, and a pool cleared by an
/// outage would then fail the `getMore`.
pub const ONE_REPLY: u32 = 1_000_000;

/// An answer with its headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

#[derive(Clone)]
pub struct ApiClient {
    pub base_url: String,
    pub http: reqwest::Client,
    /// The platform's database, for checking contacts and views directly.
    pub database: Database,
}

impl ApiClient {
    pub fn new(base_url: String, database: Database) -> Self {
        Self {
            base_url,
            http: reqwest::Client::new(),
            database,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self.http.post(self.url(path)).json(body).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value)> {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Any request, with its headers in the answer; `body` goes as JSON.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok(Reply {
            status,
            headers,
            body: response.json().await.unwrap_or(Value::Null),
        })
    }

    pub async fn get_json(&self, path: &str) -> Result<(u16, Value)> {
        let response = self.http.get(self.url(path)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Submits an action and returns its id; fails unless the api answered 202.
    pub async fn submit(&self, body: &Value) -> Result<String> {
        let (status, view) = self.post_json("/bulk-actions", body).await?;
        if status != 202 {
            bail!("expected 202, got {status}: {view}");
        }
        view["actionId"]
            .as_str()
            .map(str::to_owned)
            .context("no actionId")
    }

    /// Waits until the action's projected view (the list, not the read-your-writes path)
    /// says it is terminal, so that stats, logs and list are all settled.
    pub async fn wait_projected_terminal(
        &self,
        action_id: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self
                .database
                .collection::<Document>(infra::mongo::ACTION_VIEWS)
                .find_one(mongodb::bson::doc! { "_id": action_id })
                .await?;
            if let Some(view) = view {
                let status = view.get_str("status").unwrap_or_default();
                if matches!(status, "completed" | "failed" | "cancelled") {
                    let (code, body) = self.get_json(&format!("/bulk-actions/{action_id}")).await?;
                    if code == 200 {
                        return Ok(body);
                    }
                }
            }
            if Instant::now() > deadline {
                let (_, body) = self.get_json(&format!("/bulk-actions/{action_id}")).await?;
                bail!("action {action_id} not terminal after {timeout:?}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every log line of an action, following cursors.
    pub async fn all_logs(&self, action_id: &str) -> Result<Vec<Value>> {
        let mut lines = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("/bulk-actions/{action_id}/logs?limit=1000"),
                Some(cursor) => {
                    format!("/bulk-actions/{action_id}/logs?limit=1000&cursor={cursor}")
                }
            };
            let (status, page) = self.get_json(&path).await?;
            if status != 200 {
                bail!("logs returned {status}: {page}");
            }
            lines.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(lines),
            }
        }
    }

    pub fn contacts(&self) -> mongodb::Collection<Document> {
        self.database.collection(infra::mongo::CONTACTS)
    }

    /// Every document of a collection, by `_id`: for comparing views before and after replay.
    pub async fn all_docs(&self, collection: &str) -> Result<Vec<Document>> {
        use futures::TryStreamExt;
        let options = mongodb::options::FindOptions::builder()
            .sort(mongodb::bson::doc! { "_id": 1 })
            .batch_size(ONE_REPLY)
            .build();
        Ok(self
            .database
            .collection::<Document>(collection)
            .find(mongodb::bson::doc! {})
            .with_options(options)
            .await?
            .try_collect()
            .await?)
    }
}
