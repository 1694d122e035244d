//! HTTP and database helpers for talking to a running api, in-process or a real process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// The admin token every test deployment runs with, unless a test sets its own.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// Each log line's code by record index.
pub fn codes(logs: &[Value]) -> std::collections::BTreeMap<u64, String> {
    logs.iter()
        .map(|line| {
            (
                line["index"].as_u64().unwrap_or(u64::MAX),
                line["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The stable `code` of an error body (empty if it is not one).
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// A client of the api that authenticates like a real one: each request carries an API key
/// of the account it is about (the body's or query's `accountId`, or the account of the
/// action in the path; "acme" otherwise), made on first use through the admin api. Tests
/// of authentication itself pass their own `authorization` header to `send`.
#[derive(Clone)]
pub struct ApiClient {
    pub base_url: String,
    pub http: reqwest::Client,
    /// The platform's database, for checking contacts and views directly.
    pub database: Database,
    admin_token: Option<String>,
    /// Account -> API key, shared by clones (and by clients of other api instances).
    keys: Arc<Mutex<HashMap<String, String>>>,
    /// Action -> account, learnt from submissions.
    owners: Arc<Mutex<HashMap<String, String>>>,
}

const DEFAULT_ACCOUNT: &str = "acme";

impl ApiClient {
    pub fn new(base_url: String, database: Database) -> Self {
        Self {
            base_url,
            http: reqwest::Client::new(),
            database,
            admin_token: None,
            keys: Arc::default(),
            owners: Arc::default(),
        }
    }

    /// Makes API keys with this admin token when it needs one.
    pub fn with_admin(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_owned());
        self
    }

    /// The same client (keys and all) talking to another api instance.
    pub fn at(&self, base_url: String) -> Self {
        Self {
            base_url,
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Uses `key` for `account` from now on (e.g. one made by an earlier deployment).
    pub fn use_key(&self, account: &str, key: &str) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(account.to_owned(), key.to_owned());
        }
    }

    /// The API key of `account`, made through the admin api the first time.
    pub async fn key_for(&self, account: &str) -> Result<String> {
        if let Some(key) = self
            .keys
            .lock()
            .ok()
            .and_then(|keys| keys.get(account).cloned())
        {
            return Ok(key);
        }
        let admin = self
            .admin_token
            .as_deref()
            .context("this client has no admin token to make API keys with")?;
        let response = self
            .http
            .post(self.url(&format!("/admin/accounts/{account}/api-keys")))
            .bearer_auth(admin)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != 201 {
            bail!("making an API key for {account}: {status} {body}");
        }
        let key = body["apiKey"].as_str().context("apiKey")?.to_owned();
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(account.to_owned(), key.clone());
        }
        Ok(key)
    }

    /// The account a request is about, as described on the type.
    /// A named account that is not a valid id gets the default account's key, so that the
    /// api, not the client, answers the malformed request.
    fn account_of(&self, path: &str, body: Option<&Value>) -> String {
        let valid = |raw: &str| domain::AccountId::parse(raw).is_ok();
        if let Some(account) = body.and_then(|body| body["accountId"].as_str()) {
            return if valid(account) {
                account
            } else {
                DEFAULT_ACCOUNT
            }
            .to_owned();
        }
        if let Some((_, query)) = path.split_once('?') {
            let named = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("accountId="));
            if let Some(account) = named {
                return if valid(account) {
                    account
                } else {
                    DEFAULT_ACCOUNT
                }
                .to_owned();
            }
        }
        let action = path
            .strip_prefix("/bulk-actions/")
            .map(|rest| rest.split(['/', '?']).next().unwrap_or_default());
        action
            .and_then(|id| self.owners.lock().ok()?.get(id).cloned())
            .unwrap_or_else(|| DEFAULT_ACCOUNT.to_owned())
    }

    fn needs_key(path: &str) -> bool {
        path.starts_with("/bulk-actions")
    }

    async fn authorized(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::RequestBuilder> {
        if !Self::needs_key(path) || self.admin_token.is_none() {
            return Ok(request);
        }
        let key = self.key_for(&self.account_of(path, body)).await?;
        Ok(request.bearer_auth(key))
    }

    /// Records whose action this is, for an action this client did not submit itself.
    pub fn remember_owner(&self, action: &str, account: &str) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.insert(action.to_owned(), account.to_owned());
        }
    }

    /// Remembers whose action a `202` created, to authenticate later requests about it.
    fn learn_owner(&self, path: &str, request: Option<&Value>, status: u16, reply: &Value) {
        let route = path.split('?').next().unwrap_or(path);
        if route == "/bulk-actions" && status == 202 {
            if let Some(action) = reply["actionId"].as_str() {
                self.remember_owner(action, &self.account_of(path, request));
            }
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let request = self.http.post(self.url(path)).json(body);
        let response = self
            .authorized(request, path, Some(body))
            .await?
            .send()
            .await?;
        let status = response.status().as_u16();
        let reply = response.json().await.unwrap_or(Value::Null);
        self.learn_owner(path, Some(body), status, &reply);
        Ok((status, reply))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value)> {
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        let response = self
            .authorized(request, path, parsed.as_ref())
            .await?
            .send()
            .await?;
        let status = response.status().as_u16();
        let reply = response.json().await.unwrap_or(Value::Null);
        self.learn_owner(path, parsed.as_ref(), status, &reply);
        Ok((status, reply))
    }

    /// Any request, with its headers in the answer; `body` goes as JSON. An `authorization`
    /// among `headers` replaces the automatic API key.
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
        self.dispatch(request, path, body, headers).await
    }

    /// Sends `body` as it is (a streamed upload: NDJSON, CSV), the settings in `path`'s
    /// query; authenticated as the query's `accountId`.
    pub async fn upload(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        self.dispatch(request, path, None, headers).await
    }

    /// Authenticates (unless `headers` carry an `authorization`), sends, and learns the
    /// owner of an action it created.
    async fn dispatch(
        &self,
        mut request: reqwest::RequestBuilder,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let explicit = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        if !explicit {
            request = self.authorized(request, path, body).await?;
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let reply = response.json().await.unwrap_or(Value::Null);
        self.learn_owner(path, body, status, &reply);
        Ok(Reply {
            status,
            headers,
            body: reply,
        })
    }

    /// `GET /bulk-actions/{action}`; fails unless it answers 200.
    pub async fn view(&self, action: &str) -> Result<Value> {
        let (status, body) = self.get_json(&format!("/bulk-actions/{action}")).await?;
        if status != 200 {
            bail!("GET {action}: {status} {body}");
        }
        Ok(body)
    }

    /// Reads the action's view until `done` holds; fails after `timeout`.
    pub async fn wait_view(
        &self,
        action: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.view(action).await?;
            if done(&body) {
                return Ok(body);
            }
            if Instant::now() > deadline {
                bail!("{action} did not get there within {timeout:?}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `PATCH /bulk-actions/{action}` with `body`.
    pub async fn patch_action(&self, action: &str, body: &Value) -> Result<(u16, Value)> {
        let reply = self
            .send(
                reqwest::Method::PATCH,
                &format!("/bulk-actions/{action}"),
                Some(body),
                &[],
            )
            .await?;
        Ok((reply.status, reply.body))
    }

    pub async fn get_json(&self, path: &str) -> Result<(u16, Value)> {
        let request = self.http.get(self.url(path));
        let response = self.authorized(request, path, None).await?.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// A `GET` whose answer is text (a result file), with its status and headers. An
    /// `authorization` among `headers` replaces the automatic API key.
    pub async fn get_text(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let mut request = self.http.get(self.url(path));
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            request = self.authorized(request, path, None).await?;
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok((status, headers, response.text().await?))
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
                if let Ok(account) = view.get_str("accountId") {
                    self.remember_owner(action_id, account);
                }
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

    /// Every projected log line of an action, by index, read from the database: paging a
    /// large action's lines through the api would take long.
    pub async fn stored_log_lines(&self, action_id: &str) -> Result<Vec<Document>> {
        use futures::TryStreamExt;
        let buckets: Vec<Document> = self
            .database
            .collection::<Document>(infra::mongo::LOG_VIEWS)
            .find(mongodb::bson::doc! { "actionId": action_id })
            .batch_size(ONE_REPLY)
            .await?
            .try_collect()
            .await?;
        let mut lines = Vec::new();
        for bucket in buckets {
            let stored: infra::views::StoredLogBucket = mongodb::bson::from_document(bucket)?;
            for line in stored.lines()? {
                lines.push(mongodb::bson::to_document(&line)?);
            }
        }
        lines.sort_by_key(|line| line.get_i64("index").unwrap_or(i64::MAX));
        Ok(lines)
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
