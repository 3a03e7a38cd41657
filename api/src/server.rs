//! The HTTP server: binds, accepts, runs the route table's warp filters on each request, and
//! stops gracefully.
//!
//! It runs warp's filters (`warp::service`) on its own hyper accept loop instead of
//! `warp::serve`, for four reasons found in warp 0.4.3's server: it sets no header-read
//! timeout (hyper's only applies with a timer, which warp does not install, so a client that
//! trickles headers holds a connection forever); it offers no hook before the filters run, so a
//! generated request id could not be the same in a handler and in the response header; its
//! graceful shutdown waits for every connection without a deadline; and it logs each client
//! that hangs up as an error. The loop here does what warp's does (HTTP/1 and HTTP/2, upgrades
//! for WebSockets) plus those.
//!
//! Around every request it: chooses the request id; works out the client's address (believing
//! `X-Forwarded-For` only from trusted proxies, see [`resolve_client_ip`]); caps the body;
//! answers CORS preflights; and puts security headers, the request id and CORS headers on
//! every answer, errors included.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;
use warp::http::header::{CACHE_CONTROL, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, VARY};
use warp::http::{Request, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::cors::CorsPolicy;
use crate::error::ApiError;
use crate::json::{BodyLimit, DEFAULT_MAX_BODY_BYTES, too_large};
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::routing::{RouteIndex, RouteTable};

/// CONTRACTS.md, "Configuration": HTTP on 127.0.0.1:8080 unless configured.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// Time a client gets to send a request's headers. Phones on poor links need a few seconds;
/// anything slower is more likely a slow-loris than a person.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Time in-flight requests get to finish after shutdown starts, before connections are cut.
/// Longer than the bounded `?wait=true` of a command, so that one can still answer.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest request head (request line + headers) read from one HTTP/1 connection. hyper's
/// default is ~400 KB; no client of ours needs more than a few KB of headers.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Most headers one request may carry.
const MAX_REQUEST_HEADERS: usize = 64;

/// Pause after an accept error that is not the client's (EMFILE: out of descriptors), so the
/// loop does not spin while connections close.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Headers every answer carries.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

/// API answers are per-user and change with every gate movement: never cache them.
const NO_STORE: &str = "no-store";

/// The API serves JSON, never a document: nothing may load, run, embed or frame it.
const JSON_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// How the API listens and what it trusts.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Port 0 picks a free port; [`serve`] returns the bound address.
    pub listen: SocketAddr,
    /// Cap on every request body, whatever the endpoint.
    pub max_body_bytes: usize,
    /// Browser origins (`https://host[:port]`) allowed to call the API. Empty: no CORS headers
    /// at all, so cross-origin scripts are refused by the browser.
    pub cors_origins: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Routes (by template) whose bodies may be larger than `max_body_bytes`, and their cap:
    /// uploads, which their handlers stream to storage.
    pub large_bodies: Vec<(String, usize)>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: DEFAULT_LISTEN,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            large_bodies: Vec::new(),
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid API configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The client's address as the server worked it out; see [`client_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Extracts the client's address: the peer, or, when the peer is a trusted proxy, the address
/// `X-Forwarded-For` names (see [`resolve_client_ip`]). For rate limits and the audit log.
pub fn client_ip() -> impl Filter<Extract = (IpAddr,), Error = Rejection> + Clone {
    warp::ext::optional::<ClientIp>().and_then(|client: Option<ClientIp>| async move {
        client.map(|ClientIp(ip)| ip).ok_or_else(|| {
            Rejection::from(ApiError::internal(
                "client_ip used on a request that did not come through serve",
            ))
        })
    })
}

/// The client's address for a connection from `peer`.
///
/// Unless `peer` is a trusted proxy, `X-Forwarded-For` is ignored: anyone can send one. From a
/// trusted proxy, the list is read from the right (the hop closest to us) and the first address
/// that is not itself a trusted proxy is the client; entries to its left were written by
/// the client and could be anything. If every hop is trusted, the leftmost is the client. An
/// unparsable entry stops the walk at the last address known to be good.
pub fn resolve_client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        hops.extend(text.split(',').map(str::trim));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !trusted.contains(&ip) {
            return ip;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Binds `config.listen` and serves `routes` until `shutdown` completes; then stops accepting,
/// lets in-flight requests finish for up to `config.shutdown_grace`, and closes the rest.
///
/// Returns the bound address (useful with port 0) and the server task, which ends when the
/// shutdown is complete.
pub async fn serve<S>(
    config: ApiConfig,
    routes: RouteTable,
    shutdown: S,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError>
where
    S: Future<Output = ()> + Send + 'static,
{
    let cors = CorsPolicy::new(&config.cors_origins).map_err(ServeError::Config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;

    let shared = Arc::new(Shared {
        cors,
        trusted_proxies: config
            .trusted_proxies
            .iter()
            .map(IpAddr::to_canonical)
            .collect(),
        max_body_bytes: config.max_body_bytes,
        large_bodies: config.large_bodies.clone(),
        index: routes.index(),
    });
    let app = warp::service(routes.filter());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS);
    builder.http2().timer(TokioTimer::new());

    tracing::info!(%addr, "HTTP API listening");
    let task = tokio::spawn(
        accept_loop(
            listener,
            builder,
            app,
            shared,
            shutdown,
            config.shutdown_grace,
        )
        .instrument(tracing::info_span!("http_server", %addr)),
    );
    Ok((addr, task))
}

/// What every request's wrapper needs.
struct Shared {
    cors: CorsPolicy,
    trusted_proxies: Vec<IpAddr>,
    max_body_bytes: usize,
    large_bodies: Vec<(String, usize)>,
    index: Arc<RouteIndex>,
}

impl Shared {
    /// The body cap of the route `template` names.
    fn body_cap(&self, template: Option<&str>) -> usize {
        template
            .and_then(|t| self.large_bodies.iter().find(|(l, _)| l == t))
            .map_or(self.max_body_bytes, |(_, cap)| *cap)
    }
}

/// What the server sends: warp's answers, or a body streamed from a reader (a download).
pub type ServerBody = http_body_util::combinators::UnsyncBoxBody<
    bytes::Bytes,
    Box<dyn std::error::Error + Send + Sync>,
>;

/// A download: a handler answers with an empty warp body and this extension, and the
/// server streams the reader as the body (warp 0.4 has no public streaming body).
/// (Extensions must be `Clone`: a clone shares the one reader, taken once.)
#[derive(Clone)]
pub struct Streamed(pub Arc<std::sync::Mutex<Option<gatehouse_actors::blob::BlobReader>>>);

/// An answer that streams `reader` with these headers.
pub fn streamed(
    reader: gatehouse_actors::blob::BlobReader,
    content_type: &str,
    size: u64,
    file_name: &str,
) -> Response {
    let mut response = Response::new(bytes::Bytes::new().into());
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(warp::http::header::CONTENT_TYPE, v);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    // The name is ours (`[A-Za-z0-9._-]`), so it needs no quoting rules beyond the quotes.
    let safe: String = file_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        headers.insert(warp::http::header::CONTENT_DISPOSITION, v);
    }
    response
        .extensions_mut()
        .insert(Streamed(Arc::new(std::sync::Mutex::new(Some(reader)))));
    response
}

fn into_server_body(response: Response) -> warp::http::Response<ServerBody> {
    use http_body_util::BodyExt;
    let (mut parts, body) = response.into_parts();
    let reader = parts
        .extensions
        .remove::<Streamed>()
        .and_then(|s| s.0.lock().ok().and_then(|mut r| r.take()));
    let body = match reader {
        Some(reader) => {
            let frames =
                futures::StreamExt::map(tokio_util::io::ReaderStream::new(reader), |chunk| {
                    chunk
                        .map(hyper::body::Frame::data)
                        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                });
            http_body_util::StreamBody::new(frames).boxed_unsync()
        }
        None => body
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            .boxed_unsync(),
    };
    warp::http::Response::from_parts(parts, body)
}

async fn accept_loop<A, S>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    app: A,
    shared: Arc<Shared>,
    shutdown: S,
    grace: Duration,
) where
    A: tower_service::Service<Request<Limited<Incoming>>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    A::Future: Send + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small JSON answers: don't let Nagle hold them back.
                    let _ = stream.set_nodelay(true);
                    let service = HttpService { app: app.clone(), shared: shared.clone(), peer };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            // Clients hanging up mid-request are routine, not server errors.
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                    });
                }
                Err(error) if is_client_error(&error) => {
                    tracing::debug!(%error, "accept failed for one client");
                }
                Err(error) => {
                    tracing::error!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    tracing::info!(
        open = connections.len(),
        "HTTP API stopping: no new connections"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(open = connections.len(), ?grace, "closing connections still busy after the grace period");
            connections.abort_all();
        }
    }
    while connections.join_next().await.is_some() {}
    tracing::info!("HTTP API stopped");
}

fn is_client_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// One connection's hyper service: prepares the request, runs the filters, finishes the answer.
struct HttpService<A> {
    app: A,
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl<A> hyper::service::Service<Request<Incoming>> for HttpService<A>
where
    A: tower_service::Service<Request<Limited<Incoming>>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    A::Future: Send + 'static,
{
    type Response = warp::http::Response<ServerBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<warp::http::Response<ServerBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let shared = self.shared.clone();
        let request_id = RequestId::from_headers(request.headers());
        let client = resolve_client_ip(self.peer.ip(), request.headers(), &shared.trusted_proxies);
        let origin = shared.cors.allowed_origin(request.headers());
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %request.method(),
            path = %request.uri().path(),
            client = %client,
        );

        // Answers that need no filter: a preflight for a path we serve, a declared body over
        // the cap (refused before a byte of it is read).
        let early = match &origin {
            Some(origin) if CorsPolicy::is_preflight(request.method(), request.headers()) => shared
                .index
                .allowed_methods(request.uri().path())
                .map(|methods| CorsPolicy::preflight(origin, &methods)),
            _ => None,
        };
        // Labelled by the route's template, never the raw path, so that the series stay a
        // closed set whatever clients send.
        let template = shared.index.template_of(request.uri().path());
        let cap = shared.body_cap(template.as_deref());
        let early = early.or_else(|| {
            declared_length(request.headers())
                .filter(|length| *length > cap as u64)
                .map(|_| too_large(cap).to_response(&request_id))
        });
        let route = template.map_or_else(|| "unmatched".to_string(), |t| t.to_string());
        let method = method_label(request.method());
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(request_id.clone());
        parts.extensions.insert(ClientIp(client));
        parts.extensions.insert(BodyLimit(cap));
        // A chunked body has no declared length: the cap applies as it streams in.
        let request = Request::from_parts(parts, Limited::new(body, cap));
        let mut app = self.app.clone();

        Box::pin(
            async move {
                let mut response = match early {
                    Some(response) => response,
                    None => match tower_service::Service::call(&mut app, request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                };
                finish(&mut response, &request_id, &shared.cors, origin.as_ref());
                let status = response.status();
                let elapsed = started.elapsed();
                if gatehouse_actors::telemetry::get().is_some() {
                    use gatehouse_actors::telemetry::names;
                    metrics::counter!(
                        names::HTTP_REQUESTS,
                        "route" => route.clone(),
                        "method" => method,
                        "status" => status.as_str().to_owned(),
                    )
                    .increment(1);
                    metrics::histogram!(
                        names::HTTP_REQUEST_DURATION,
                        "route" => route,
                        "method" => method,
                    )
                    .record(elapsed.as_secs_f64());
                }
                let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
                if status.is_server_error() {
                    tracing::warn!(status = status.as_u16(), elapsed_ms, "answered");
                } else {
                    tracing::debug!(status = status.as_u16(), elapsed_ms, "answered");
                }
                Ok(into_server_body(response))
            }
            .instrument(span),
        )
    }
}

/// The method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Headers every answer gets. Handlers may set their own `cache-control` and
/// `content-security-policy` (a future HTML page would); the rest is not negotiable.
fn finish(
    response: &mut Response,
    request_id: &RequestId,
    cors: &CorsPolicy,
    origin: Option<&HeaderValue>,
) {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static(X_REQUEST_ID),
        request_id.header_value(),
    );
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static(NO_STORE));
    headers
        .entry(HeaderName::from_static("content-security-policy"))
        .or_insert(HeaderValue::from_static(JSON_CSP));
    let varies_by_origin = headers.get_all(VARY).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|text| text.to_ascii_lowercase().contains("origin"))
    });
    if cors.is_enabled() && !varies_by_origin {
        // The answer differs by Origin once CORS is on; say so to any cache in between.
        headers.append(VARY, HeaderValue::from_static("origin"));
    }
    // A 101 hands the connection to the WebSocket protocol, where CORS headers mean nothing.
    if let Some(origin) = origin
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        CorsPolicy::decorate(response, origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append("x-forwarded-for", value);
            }
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let trusted = [ip("10.0.0.1")];
        assert_eq!(
            resolve_client_ip(ip("198.51.100.9"), &headers(&["203.0.113.7"]), &trusted),
            ip("198.51.100.9")
        );
        assert_eq!(
            resolve_client_ip(ip("198.51.100.9"), &headers(&["203.0.113.7"]), &[]),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn forwarded_for_is_read_from_the_right() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        // The client claims to be 1.1.1.1; the first proxy saw 203.0.113.7.
        let h = headers(&["1.1.1.1, 203.0.113.7", "10.0.0.2"]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("203.0.113.7")
        );
        // Ports and brackets are tolerated.
        let h = headers(&["[2001:db8::1]:4711"]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("2001:db8::1")
        );
        let h = headers(&["203.0.113.7:1234"]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn garbage_stops_the_walk() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        let h = headers(&["203.0.113.7, garbage, 10.0.0.2"]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("10.0.0.2")
        );
        // All hops trusted: the leftmost.
        let h = headers(&["10.0.0.2"]);
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("10.0.0.2")
        );
        // No header: the proxy itself.
        assert_eq!(
            resolve_client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn mapped_ipv6_peers_count_as_ipv4() {
        let trusted = [ip("10.0.0.1")];
        let h = headers(&["203.0.113.7"]);
        assert_eq!(
            resolve_client_ip(ip("::ffff:10.0.0.1"), &h, &trusted),
            ip("203.0.113.7")
        );
    }
}
