//! The REST API from a client's side, for the end-to-end tests: a JSON client that asserts
//! what every answer must carry (an `x-request-id`, a JSON body or none), the contract's error
//! shape, and the calls the tests make again and again (login, commands, waiting for the live
//! gate list).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use gatehouse_actors::access::UserId;
use gatehouse_sim::Farm;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stack::{Stack, StackSpec, password_of};

/// One HTTP answer: its status, its request id (asserted present and not empty), its
/// `retry-after` header if any, and its JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub request_id: String,
    pub retry_after: Option<String>,
    pub body: Value,
}

/// Sends `request` and reads its answer.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request_id =
        header("x-request-id").unwrap_or_else(|| panic!("a {status} answer without x-request-id"));
    assert!(!request_id.is_empty(), "an empty x-request-id");
    let retry_after = header("retry-after");
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a {status} answer that is not JSON ({e}): {text}"))
    };
    Reply {
        status,
        request_id,
        retry_after,
        body,
    }
}

/// Asserts the status and the contract's error shape with `code`; returns the `error` object.
#[track_caller]
pub fn assert_error(reply: &Reply, status: u16, code: &str) -> Value {
    assert_eq!(reply.status, status, "{reply:?}");
    let error = reply
        .body
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("no `error` in {reply:?}"));
    let keys: BTreeSet<&str> = error
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        BTreeSet::from(["code", "details", "message", "request_id"]),
        "{reply:?}"
    );
    assert_eq!(error["code"], code, "{reply:?}");
    assert!(error["message"].is_string(), "{reply:?}");
    assert!(error["details"].is_object(), "{reply:?}");
    assert_eq!(error["request_id"], reply.request_id.as_str(), "{reply:?}");
    error
}

#[track_caller]
pub fn assert_status(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
}

/// The keys of a JSON object.
pub fn keys_of(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

pub fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

/// The `id`s of a JSON list of objects, sorted.
pub fn ids(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|x| x["id"].as_str().expect("an id").to_owned())
        .collect();
    out.sort();
    out
}

/// A client of one server.
pub struct Http {
    pub client: reqwest::Client,
    base: String,
    /// Bounds every request, and every wait for a state.
    wait: Duration,
}

impl Http {
    /// A client of the server at `addr` (no proxy), every request bounded by `wait`.
    pub fn new(addr: SocketAddr, wait: Duration) -> Http {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(wait)
            .build()
            .expect("the client builds");
        Http {
            client,
            base: format!("http://{addr}"),
            wait,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `method path` with an optional bearer and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request).await
    }

    pub async fn get(&self, token: &str, path: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A `POST` without a bearer (the auth endpoints).
    pub async fn post_anonymous(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, None, Some(body)).await
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, token: &str, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, token: &str, path: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.post_anonymous(
            "/api/v1/auth/login",
            json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Logs `user` in with its stack password; returns its access token.
    pub async fn token(&self, user: &str) -> String {
        let reply = self.login(user, &password_of(user)).await;
        assert_eq!(reply.status, 200, "{user} logs in: {reply:?}");
        reply.body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {reply:?}"))
            .to_owned()
    }

    /// Sends command `id` (`action` on `gate`), waiting for its outcome if `wait`.
    pub async fn command(
        &self,
        token: &str,
        gate: &str,
        id: Uuid,
        action: &str,
        wait: bool,
    ) -> Reply {
        let path = if wait {
            format!("/api/v1/gates/{gate}/commands?wait=true")
        } else {
            format!("/api/v1/gates/{gate}/commands")
        };
        self.post(token, &path, json!({ "id": id, "action": action }))
            .await
    }

    /// GETs `path` until `found` picks something out of the answer (always a 200); gives up
    /// after the client's bound, saying what it `waited` for.
    pub async fn until<T>(
        &self,
        token: &str,
        path: &str,
        waited: &str,
        found: impl Fn(&Value) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let reply = self.get(token, path).await;
            assert_status(&reply, 200);
            if let Some(t) = found(&reply.body) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw {waited}: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the live gate list (what the running fleet runs, as `token` sees it) is
    /// `expected`: gate actors start and stop just after a configuration change answers.
    pub async fn live_gates(&self, token: &str, expected: &[&str]) {
        let waited = format!("the live gates {expected:?}");
        self.until(token, "/api/v1/gates", &waited, |body| {
            (ids(&body["gates"]) == expected).then_some(())
        })
        .await
    }
}

/// What the REST tests run against: a [`Stack`] over an in-process simulator [`Farm`], with
/// an [`Http`] client in front of it (which the rig derefs to).
pub struct RestRig {
    pub farm: Farm,
    pub stack: Stack,
    pub http: Http,
}

impl Deref for RestRig {
    type Target = Http;

    fn deref(&self) -> &Http {
        &self.http
    }
}

impl RestRig {
    /// Starts `spec`'s stack against `farm`; `wait` bounds every request and wait.
    pub async fn start(farm: Farm, spec: StackSpec, wait: Duration) -> RestRig {
        let stack = Stack::start(spec).await.expect("the stack starts");
        let http = Http::new(stack.addr, wait);
        RestRig { farm, stack, http }
    }

    /// The id of stack user `name`.
    pub fn user(&self, name: &str) -> UserId {
        self.stack.users[name].0
    }

    /// Stops the server (asserting it stops within the bound and ends cleanly), the runtime
    /// and the farm.
    pub async fn shutdown(self) {
        self.stack
            .try_shutdown(self.http.wait)
            .await
            .expect("the server stops in time and its task ends cleanly");
        self.farm.shutdown().await;
    }
}
