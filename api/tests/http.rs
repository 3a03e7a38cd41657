//! The HTTP skeleton over real TCP: error shapes, request ids, security headers, CORS, probes,
//! client addresses and shutdown, each against a server on 127.0.0.1:0.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, assert_error_shape, body_json, test_table};
use gatehouse_api::{ApiConfig, ApiState, Check, Readiness, route_table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

fn request_id_of(response: &reqwest::Response) -> String {
    header(response, "x-request-id")
        .expect("every response has x-request-id")
        .to_owned()
}

#[tokio::test]
async fn unknown_route_is_404_in_the_error_shape() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let response = server
        .client
        .get(server.url("/api/v1/nope"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let id = request_id_of(&response);
    assert_error_shape(&body_json(response).await, "not_found", &id);

    // A trailing slash is a different path.
    let response = server
        .client
        .get(server.url("/healthz/"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let response = server
        .client
        .delete(server.url("/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 405);
    assert_eq!(header(&response, "allow"), Some("GET"));
    let id = request_id_of(&response);
    assert_error_shape(&body_json(response).await, "method_not_allowed", &id);

    // With a path parameter too.
    let response = server
        .client
        .post(server.url("/api/v1/test/items/7"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 405);
    assert_eq!(header(&response, "allow"), Some("GET"));
    server.stop().await;
}

#[tokio::test]
async fn json_bodies_are_strict() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let url = server.url("/api/v1/test/echo");

    let ok = server
        .client
        .post(&url)
        .json(&serde_json::json!({"name": "north"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(ok.status(), 200);
    assert_eq!(
        body_json(ok).await,
        serde_json::json!({"name": "north", "count": 0})
    );

    let unknown = server
        .client
        .post(&url)
        .json(&serde_json::json!({"name": "north", "cuont": 3}))
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 400);
    let id = request_id_of(&unknown);
    let error = assert_error_shape(&body_json(unknown).await, "invalid_body", &id);
    assert_eq!(error["details"]["path"], "cuont");
    assert!(
        error["details"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cuont")),
        "{error}"
    );

    let wrong_type = server
        .client
        .post(&url)
        .json(&serde_json::json!({"name": "north", "count": "three"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong_type.status(), 400);
    let id = request_id_of(&wrong_type);
    let error = assert_error_shape(&body_json(wrong_type).await, "invalid_body", &id);
    assert_eq!(error["details"]["path"], "count");
    assert!(
        error["details"]["line"].is_u64() && error["details"]["column"].is_u64(),
        "{error}"
    );

    let malformed = server
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("answer");
    assert_eq!(malformed.status(), 400);
    let id = request_id_of(&malformed);
    assert_error_shape(&body_json(malformed).await, "malformed_json", &id);
    server.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let url = server.url("/api/v1/test/echo");
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = server.client.post(&url).body(r#"{"name": "north"}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("answer");
        assert_eq!(response.status(), 415, "{content_type:?}");
        let id = request_id_of(&response);
        assert_error_shape(&body_json(response).await, "unsupported_media_type", &id);
    }
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let config = ApiConfig {
        max_body_bytes: 1024,
        ..ApiConfig::default()
    };
    let mut server = TestServer::start(config, test_table()).await;
    let big = serde_json::json!({"name": "x".repeat(4096)});

    // Declared by Content-Length: refused before the body is read.
    let response = server
        .client
        .post(server.url("/api/v1/test/echo"))
        .json(&big)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 413);
    let id = request_id_of(&response);
    let error = assert_error_shape(&body_json(response).await, "payload_too_large", &id);
    assert_eq!(error["details"]["limit_bytes"], 1024);

    // Even to a path that does not exist: the cap comes first.
    let response = server
        .client
        .post(server.url("/api/v1/nope"))
        .json(&big)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 413);

    // Chunked, with no Content-Length: counted as it streams in.
    let body = big.to_string();
    let chunk = format!("{:x}\r\n{}\r\n0\r\n\r\n", body.len(), body);
    let request = format!(
        "POST /api/v1/test/echo HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n{chunk}",
        server.addr
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(common::TEST_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn handler_errors_and_path_parameters() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;

    let response = server
        .client
        .get(server.url("/api/v1/test/items/42"))
        .send()
        .await
        .expect("answer");
    assert_eq!(body_json(response).await, serde_json::json!({"item": 42}));

    let response = server
        .client
        .get(server.url("/api/v1/test/items/forty-two"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 400);
    let id = request_id_of(&response);
    let error = assert_error_shape(&body_json(response).await, "invalid_path_parameter", &id);
    assert_eq!(error["details"]["parameter"], "item");

    let response = server
        .client
        .get(server.url("/api/v1/test/conflict"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 409);
    let id = request_id_of(&response);
    let error = assert_error_shape(&body_json(response).await, "gate_busy", &id);
    assert_eq!(error["details"]["gate"], "north");

    // A 500 says nothing about its cause.
    let response = server
        .client
        .get(server.url("/api/v1/test/fail"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 500);
    let id = request_id_of(&response);
    let body = body_json(response).await;
    assert_error_shape(&body, "internal_error", &id);
    let text = body.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("10.0.0.5") && !text.contains("postgres"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;

    // A sane id is kept, in the header, the error body and the handler alike.
    let response = server
        .client
        .get(server.url("/api/v1/nope"))
        .header("x-request-id", "edge-7f3a.1_b")
        .send()
        .await
        .expect("answer");
    assert_eq!(request_id_of(&response), "edge-7f3a.1_b");
    assert_error_shape(&body_json(response).await, "not_found", "edge-7f3a.1_b");

    let response = server
        .client
        .get(server.url("/api/v1/test/whoami"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("answer");
    assert_eq!(request_id_of(&response), "abc-123");
    assert_eq!(body_json(response).await["request_id"], "abc-123");

    // No id, or one that is not a sane token: a new UUID, the same one everywhere.
    for sent in [
        None,
        Some("has space"),
        Some("x".repeat(65).as_str()),
        Some("a;b"),
    ] {
        let mut request = server.client.get(server.url("/api/v1/test/whoami"));
        if let Some(sent) = sent {
            request = request.header("x-request-id", sent);
        }
        let response = request.send().await.expect("answer");
        let id = request_id_of(&response);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{sent:?} gave {id}");
        assert_eq!(body_json(response).await["request_id"], id.as_str());
    }
    server.stop().await;
}

#[tokio::test]
async fn security_headers_on_every_answer() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    for path in [
        "/healthz",
        "/api/v1/test/items/1",
        "/api/v1/nope",
        "/api/v1/test/fail",
    ] {
        let response = server
            .client
            .get(server.url(path))
            .send()
            .await
            .expect("answer");
        assert_eq!(
            header(&response, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(header(&response, "x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            header(&response, "referrer-policy"),
            Some("no-referrer"),
            "{path}"
        );
        assert_eq!(
            header(&response, "cache-control"),
            Some("no-store"),
            "{path}"
        );
        let csp = header(&response, "content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(header(&response, "x-request-id").is_some(), "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn no_cors_headers_unless_configured() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let response = server
        .client
        .get(server.url("/api/v1/test/items/1"))
        .header("origin", "https://console.example")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-"))
    );

    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/api/v1/test/echo"))
        .header("origin", "https://console.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("answer");
    assert_eq!(preflight.status(), 405);
    assert!(
        preflight
            .headers()
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-"))
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_for_a_configured_origin() {
    let config = ApiConfig {
        cors_origins: vec!["https://console.example".to_owned()],
        ..ApiConfig::default()
    };
    let mut server = TestServer::start(config, test_table()).await;

    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/api/v1/test/echo"))
        .header("origin", "https://console.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .expect("answer");
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        header(&preflight, "access-control-allow-origin"),
        Some("https://console.example")
    );
    assert_eq!(
        header(&preflight, "access-control-allow-methods"),
        Some("POST")
    );
    let allowed = header(&preflight, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("content-type") && allowed.contains("authorization"),
        "{allowed}"
    );
    assert!(header(&preflight, "access-control-allow-credentials").is_none());
    assert!(header(&preflight, "x-request-id").is_some());

    // The actual request, and an error, both readable by the console.
    for (path, status) in [("/api/v1/test/items/1", 200), ("/api/v1/nope", 404)] {
        let response = server
            .client
            .get(server.url(path))
            .header("origin", "https://console.example")
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), status);
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            Some("https://console.example")
        );
        assert!(
            header(&response, "access-control-expose-headers")
                .is_some_and(|h| h.contains("x-request-id"))
        );
    }

    // Another origin gets nothing (the browser refuses), but is not turned away: the request is
    // answered as for any non-browser client.
    let response = server
        .client
        .get(server.url("/api/v1/test/items/1"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    assert!(header(&response, "access-control-allow-origin").is_none());
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/api/v1/test/echo"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("answer");
    assert_ne!(preflight.status(), 204);
    assert!(header(&preflight, "access-control-allow-origin").is_none());
    server.stop().await;
}

#[tokio::test]
async fn misconfigured_cors_origin_refuses_to_start() {
    let config = ApiConfig {
        cors_origins: vec!["*".to_owned()],
        ..ApiConfig::default()
    };
    let result = gatehouse_api::serve(config, test_table(), std::future::pending()).await;
    assert!(matches!(result, Err(gatehouse_api::ServeError::Config(_))));
}

struct Flag(Arc<AtomicBool>);

impl Readiness for Flag {
    fn checks(&self) -> Vec<Check> {
        if self.0.load(Ordering::SeqCst) {
            vec![Check::ready("store"), Check::ready("event_log")]
        } else {
            vec![
                Check::ready("store"),
                Check::not_ready("event_log", "writer is 3 s behind"),
            ]
        }
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let ready = Arc::new(AtomicBool::new(true));
    let state = ApiState {
        readiness: Arc::new(Flag(ready.clone())),
        app: None,
        metrics: None,
        console: Default::default(),
    };
    let table = route_table(&state).expect("the production table is valid");
    let mut server = TestServer::start(ApiConfig::default(), table).await;

    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        body_json(response).await,
        serde_json::json!({"status": "ok"})
    );

    let response = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    assert_eq!(body_json(response).await["status"], "ready");

    ready.store(false, Ordering::SeqCst);
    let response = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 503);
    let body = body_json(response).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(
        body["checks"],
        serde_json::json!([
            {"name": "store", "ready": true},
            {"name": "event_log", "ready": false, "reason": "writer is 3 s behind"},
        ])
    );
    // Liveness does not depend on readiness.
    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    server.stop().await;
}

async fn whoami(server: &TestServer, forwarded_for: &str) -> IpAddr {
    let response = server
        .client
        .get(server.url("/api/v1/test/whoami"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .expect("answer");
    let body = body_json(response).await;
    body["ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("an address")
}

#[tokio::test]
async fn client_ip_believes_forwarded_for_only_from_trusted_proxies() {
    let localhost: IpAddr = "127.0.0.1".parse().expect("address");
    let forwarded: IpAddr = "203.0.113.7".parse().expect("address");

    let mut untrusting = TestServer::start(ApiConfig::default(), test_table()).await;
    assert_eq!(whoami(&untrusting, "203.0.113.7").await, localhost);
    untrusting.stop().await;

    let config = ApiConfig {
        trusted_proxies: vec![localhost],
        ..ApiConfig::default()
    };
    let mut trusting = TestServer::start(config, test_table()).await;
    assert_eq!(whoami(&trusting, "203.0.113.7").await, forwarded);
    // The client's own claim to the left of what our proxy saw is not believed.
    assert_eq!(whoami(&trusting, "1.2.3.4, 203.0.113.7").await, forwarded);
    trusting.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_ends_the_task() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let addr = server.addr;
    // `stop` fails the test if the task does not end in time, idle keep-alive connection and all.
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn in_flight_requests_finish_during_shutdown() {
    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let client = server.client.clone();
    let url = server.url("/api/v1/test/slow/300");
    let pending =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop().await;
    assert_eq!(pending.await.expect("request task").expect("answered"), 200);
}

#[tokio::test]
async fn shutdown_grace_cuts_hung_requests() {
    let config = ApiConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ApiConfig::default()
    };
    let mut server = TestServer::start(config, test_table()).await;
    let client = server.client.clone();
    let url = server.url("/api/v1/test/slow/60000");
    let pending =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        pending.await.expect("request task").is_err(),
        "the hung request was answered"
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut server = TestServer::start(ApiConfig::default(), test_table()).await;
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let url = format!("ws://{}/api/v1/test/ws", server.addr);
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("handshake");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));
    socket
        .send(Message::text("open north"))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(common::TEST_TIMEOUT, socket.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(echoed.into_text().expect("text").as_str(), "open north");
    let _ = socket.close(None).await;

    // Without the upgrade headers warp's `ws()` names the header it missed.
    let response = server
        .client
        .get(server.url("/api/v1/test/ws"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 400);
    let id = request_id_of(&response);
    let body = body_json(response).await;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        code == "missing_header" || code == "invalid_header",
        "{body}"
    );
    let error = assert_error_shape(&body, &code, &id);
    assert!(error["details"]["header"].is_string(), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn binding_a_busy_port_is_an_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = ApiConfig {
        listen: taken.local_addr().expect("address"),
        ..ApiConfig::default()
    };
    let result = gatehouse_api::serve(config, test_table(), std::future::pending()).await;
    assert!(matches!(
        result,
        Err(gatehouse_api::ServeError::Bind { .. })
    ));
}

fn with_metrics(metrics: Option<gatehouse_api::metrics::MetricsExport>) -> ApiState {
    ApiState {
        readiness: Arc::new(Vec::<Check>::new),
        app: None,
        metrics,
        console: Default::default(),
    }
}

fn export(token: Option<&str>) -> gatehouse_api::metrics::MetricsExport {
    gatehouse_api::metrics::MetricsExport {
        render: Arc::new(|| "# HELP up_probe A probe\n# TYPE up_probe gauge\nup_probe 1\n".into()),
        token: token.map(str::to_owned),
    }
}

#[tokio::test]
async fn metrics_are_open_or_behind_their_token_or_off() {
    // Open by default, as Prometheus expects.
    let table = route_table(&with_metrics(Some(export(None)))).expect("valid");
    let server = TestServer::start(ApiConfig::default(), table).await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        response.headers()
    );
    assert!(response.text().await.expect("text").contains("up_probe 1"));

    // With a token: refused without it or with another, served with it.
    let token = "a-metrics-token-0123456789";
    let table = route_table(&with_metrics(Some(export(Some(token))))).expect("valid");
    let server = TestServer::start(ApiConfig::default(), table).await;
    let url = server.url("/metrics");
    let response = server.client.get(&url).send().await.expect("answer");
    assert_eq!(response.status(), 401);
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_error_shape(&body_json(response).await, "unauthenticated", &id);
    let wrong = server
        .client
        .get(&url)
        .bearer_auth("a-metrics-token-0123456788");
    assert_eq!(wrong.send().await.expect("answer").status(), 401);
    let right = server
        .client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .expect("answer");
    assert_eq!(right.status(), 200);

    // Turned off: not found, in the error shape.
    let table = route_table(&with_metrics(None)).expect("valid");
    let server = TestServer::start(ApiConfig::default(), table).await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 404);
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_error_shape(&body_json(response).await, "metrics_disabled", &id);
}

#[tokio::test]
async fn the_console_is_a_page_with_its_own_policy_and_the_root_leads_there() {
    let table = route_table(&with_metrics(None)).expect("valid");
    let server = TestServer::start(ApiConfig::default(), table).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let response = client.get(server.url("/")).send().await.expect("answer");
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/console");

    let response = client
        .get(server.url("/console"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html"))
    );
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self' ws://"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(headers.contains_key("x-request-id"));
    let page = response.text().await.expect("text");
    assert!(page.contains("app.js"), "the page loads its module");

    let script = client
        .get(server.url("/console/app.js"))
        .send()
        .await
        .expect("answer");
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/javascript"))
    );

    for missing in [
        "/console/nope.js",
        "/console/../Cargo.toml",
        "/console/app.js/x",
    ] {
        let response = client
            .get(server.url(missing))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 404, "{missing}");
    }
    // The console is not part of the API's document.
    let doc: serde_json::Value = client
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"].get("/console").is_none());
    assert!(doc["paths"].get("/metrics").is_some());
}
