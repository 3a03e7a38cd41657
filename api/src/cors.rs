//! Cross-origin access for browser clients served from another origin (a console on its own
//! host). With no configured origins the API sends no CORS header at all, so browsers keep
//! other sites' scripts out entirely.
//!
//! This is applied by the server around the warp filters rather than with `warp::cors()`,
//! because warp's filter answers 403 to any request whose `Origin` is not listed, which breaks
//! same-origin browser POSTs (browsers send `Origin` on those too) and leaves the error bodies
//! of listed origins without CORS headers, unreadable by the calling script. Here an unlisted
//! origin simply gets no CORS headers and the browser does the refusing; a listed origin gets
//! them on every answer, errors included. Preflights are answered only for paths that exist,
//! with the methods the route table has there. Credentials (cookies) are not allowed: the API
//! authenticates with bearer tokens.

use warp::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    HeaderMap, HeaderValue, ORIGIN, VARY,
};
use warp::http::{Method, StatusCode};
use warp::reply::Response;

/// Request headers a cross-origin script may send.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-request-id";

/// Response headers a cross-origin script may read (besides the CORS-safelisted ones).
const EXPOSED_HEADERS: &str = "x-request-id, retry-after";

/// How long a browser may cache a preflight answer. Ten minutes: long enough to spare most
/// preflights, short enough that a changed route table is seen soon.
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, Default)]
pub(crate) struct CorsPolicy {
    /// Normalized (lowercase) `scheme://host[:port]`.
    origins: Vec<String>,
}

impl CorsPolicy {
    /// Checks and normalizes the configured origins. A wildcard is refused on purpose: the
    /// console's origin is known, and `*` would let any site drive gates with a stolen token.
    pub(crate) fn new(origins: &[String]) -> Result<CorsPolicy, String> {
        let origins = origins
            .iter()
            .map(|origin| {
                normalize_origin(origin)
                    .map_err(|reason| format!("CORS origin {origin:?}: {reason}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CorsPolicy { origins })
    }

    /// The request's `Origin`, when it is one of ours.
    pub(crate) fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.origins.is_empty() {
            return None;
        }
        let origin = headers.get(ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(text))
            .then(|| origin.clone())
    }

    /// An `OPTIONS` carrying `Access-Control-Request-Method` is a browser's preflight.
    pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight from an allowed origin for a path with these methods.
    pub(crate) fn preflight(origin: &HeaderValue, methods: &[Method]) -> Response {
        let mut response = Response::default();
        *response.status_mut() = StatusCode::NO_CONTENT;
        let allow = methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Ok(allow) = HeaderValue::from_str(&allow) {
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, allow);
        }
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
        );
        headers.append(
            VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        response
    }

    /// Marks an ordinary answer as readable by `origin`.
    pub(crate) fn decorate(response: &mut Response, origin: &HeaderValue) {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }

    pub(crate) fn is_enabled(&self) -> bool {
        !self.origins.is_empty()
    }
}

/// `scheme://host[:port]`, lowercase, http or https, nothing after the authority.
fn normalize_origin(origin: &str) -> Result<String, &'static str> {
    let lower = origin.trim().to_ascii_lowercase();
    let (scheme, authority) = lower
        .split_once("://")
        .ok_or("must look like https://host[:port]")?;
    if scheme != "http" && scheme != "https" {
        return Err("the scheme must be http or https");
    }
    if authority.is_empty() {
        return Err("the host is missing");
    }
    if authority.contains(['/', '?', '#', '@', '*', ' ']) {
        return Err("an origin has no path, query, user or wildcard (and no trailing '/')");
    }
    let host = match authority.rsplit_once(':') {
        // A port, unless the colon belongs to a bracketed IPv6 address.
        Some((host, port)) if !port.contains(']') => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err("the port must be a number");
            }
            host
        }
        _ => authority,
    };
    if host.is_empty() {
        return Err("the host is missing");
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        for good in [
            "https://console.example",
            "http://localhost:5173",
            "HTTPS://Console.Example",
            "http://[::1]:8080",
        ] {
            assert!(normalize_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "*",
            "null",
            "console.example",
            "ftp://x",
            "https://",
            "https://x/",
            "https://x/path",
            "https://x:port",
            "https://user@x",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let policy = CorsPolicy::new(&["https://Console.example".to_owned()]).unwrap_or_default();
        let mut headers = HeaderMap::new();
        assert!(policy.allowed_origin(&headers).is_none());
        headers.insert(ORIGIN, HeaderValue::from_static("https://console.example"));
        assert!(policy.allowed_origin(&headers).is_some());
        headers.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(policy.allowed_origin(&headers).is_none());
        assert!(CorsPolicy::default().allowed_origin(&headers).is_none());
    }
}
