//! Shared by the HTTP tests: a server on 127.0.0.1:0 with a shutdown switch, a plain-HTTP
//! client, and a handful of test endpoints that exercise bodies, path parameters, handler
//! errors and the client address.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gatehouse_api::{ApiConfig, ApiError, Outcome, PathParams, RequestId, Route, RouteTable, json};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use utoipa::ToSchema;
use warp::Filter;
use warp::http::StatusCode;

/// Bounds every wait in these tests, so that a hang fails instead of stalling CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(mut config: ApiConfig, table: RouteTable) -> TestServer {
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, task) = gatehouse_api::serve(config, table, async move {
            let _ = stopped.await;
        })
        .await
        .expect("server starts");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(TEST_TIMEOUT)
            .build()
            .expect("client builds");
        TestServer {
            addr,
            client,
            shutdown: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TEST_TIMEOUT, task)
                .await
                .expect("server stops in time")
                .expect("server task ends cleanly");
        }
    }
}

pub async fn body_json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.expect("a JSON body")
}

/// Asserts the contract's error shape and returns the `error` object.
pub fn assert_error_shape(
    body: &serde_json::Value,
    code: &str,
    request_id: &str,
) -> serde_json::Value {
    let error = body
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("no `error` in {body}"));
    let keys: Vec<&str> = error
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys.len(),
        4,
        "error object has exactly code, message, details, request_id: {body}"
    );
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].is_string(), "{body}");
    assert!(error["details"].is_object(), "{body}");
    assert_eq!(error["request_id"], request_id, "{body}");
    error
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Echo {
    pub name: String,
    #[serde(default)]
    pub count: u32,
}

#[utoipa::path(
    post,
    path = "/api/v1/test/echo",
    operation_id = "test_echo",
    request_body = Echo,
    responses((status = 200, description = "The body back", body = Echo)),
)]
async fn echo(body: Echo) -> Outcome {
    json::reply(StatusCode::OK, &body)
}

#[utoipa::path(
    get,
    path = "/api/v1/test/items/{item}",
    operation_id = "test_item",
    params(("item" = u32, Path, description = "An item number")),
    responses((status = 200, description = "The item")),
)]
async fn item(params: PathParams) -> Outcome {
    let item: u32 = params.parse("item")?;
    json::reply(StatusCode::OK, &serde_json::json!({ "item": item }))
}

#[utoipa::path(
    get,
    path = "/api/v1/test/whoami",
    operation_id = "test_whoami",
    responses((status = 200, description = "The caller's address and the request id")),
)]
async fn whoami(ip: IpAddr, id: RequestId) -> Outcome {
    json::reply(
        StatusCode::OK,
        &serde_json::json!({ "ip": ip.to_string(), "request_id": id.as_str() }),
    )
}

#[utoipa::path(
    get,
    path = "/api/v1/test/conflict",
    operation_id = "test_conflict",
    responses((status = 409, description = "Always", body = gatehouse_api::error::ErrorEnvelope)),
)]
async fn conflict() -> Outcome {
    Err(ApiError::conflict("gate_busy", "the gate is busy")
        .with_details(serde_json::json!({ "gate": "north" })))
}

#[utoipa::path(
    get,
    path = "/api/v1/test/fail",
    operation_id = "test_fail",
    responses((status = 500, description = "Always")),
)]
async fn fail() -> Outcome {
    Err(ApiError::internal(
        "connection to postgres://admin:hunter2@10.0.0.5 refused",
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/test/slow/{ms}",
    operation_id = "test_slow",
    params(("ms" = u64, Path, description = "How long to take")),
    responses((status = 200, description = "After the wait")),
)]
async fn slow(params: PathParams) -> Outcome {
    let ms: u64 = params.parse("ms")?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    json::reply(StatusCode::OK, &serde_json::json!({ "slept_ms": ms }))
}

#[utoipa::path(
    get,
    path = "/api/v1/test/ws",
    operation_id = "test_ws",
    responses((status = 101, description = "A WebSocket that echoes text")),
)]
fn ws_echo(ws: warp::ws::Ws) -> Outcome {
    use futures::{SinkExt, StreamExt};
    use warp::Reply;
    Ok(ws
        .on_upgrade(|socket| async move {
            let (mut tx, mut rx) = socket.split();
            while let Some(Ok(message)) = rx.next().await {
                if message.is_text() && tx.send(message).await.is_err() {
                    break;
                }
            }
        })
        .into_response())
}

/// The test endpoints.
pub fn test_routes() -> Vec<Route> {
    vec![
        Route::new::<__path_echo, _>(|_| json::body::<Echo>().then(echo)),
        Route::new::<__path_item, _>(|params| params.then(item)),
        Route::new::<__path_whoami, _>(|_| {
            gatehouse_api::client_ip()
                .and(gatehouse_api::request_id())
                .then(whoami)
        }),
        Route::new::<__path_conflict, _>(|_| warp::any().then(conflict)),
        Route::new::<__path_fail, _>(|_| warp::any().then(fail)),
        Route::new::<__path_slow, _>(|params| params.then(slow)),
        Route::new::<__path_ws_echo, _>(|_| warp::ws().map(ws_echo)),
    ]
}

/// The production routes (always ready) plus the test endpoints.
pub fn test_table() -> RouteTable {
    let always_ready: std::sync::Arc<dyn gatehouse_api::Readiness> =
        std::sync::Arc::new(Vec::<gatehouse_api::Check>::new);
    let mut routes = gatehouse_api::health::routes(always_ready);
    routes.extend(test_routes());
    RouteTable::new(routes).expect("the test table is valid")
}
