//! The operator console (CONTRACTS.md, "HTTP"): a browser page at `/console`, with `/`
//! redirecting there. It is outside the OpenAPI document, like the probes' neighbours, and it is
//! a client of the same API as everyone else (REST login, `gatehouse.v1` WebSocket, the tree
//! endpoint): it has no private door into the runtime.
//!
//! The page is plain HTML, CSS and JavaScript modules under `api/console/`, embedded in the
//! binary at build time: nothing is downloaded or bundled. With `[http] console_dir` set, the
//! files are read from that directory instead at each request (for working on the page without
//! rebuilding); only names of the embedded set's form are served from it.
//!
//! Unlike the API's `default-src 'none'`, the page's Content-Security-Policy lets it load its
//! own scripts and styles and talk to its own origin over HTTP and WebSocket, and nothing else:
//! no inline script, no third-party origin, no framing.

use std::path::PathBuf;
use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderValue, LOCATION};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

/// The console's files: name under `/console/` and content (its type follows the name).
const FILES: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../console/index.html")),
    ("app.js", include_bytes!("../console/app.js")),
    ("api.js", include_bytes!("../console/api.js")),
    ("live.js", include_bytes!("../console/live.js")),
    ("views.js", include_bytes!("../console/views.js")),
    ("account.js", include_bytes!("../console/account.js")),
    (
        "maintenance.js",
        include_bytes!("../console/maintenance.js"),
    ),
    ("reports.js", include_bytes!("../console/reports.js")),
    ("style.css", include_bytes!("../console/style.css")),
];

/// The path templates the console answers, for the HTTP metrics' `route` label.
pub const TEMPLATES: &[&str] = &["/", "/console", "/console/{file}"];

/// Where the console's files come from.
#[derive(Debug, Clone, Default)]
pub struct ConsoleFiles {
    /// Read from here at each request instead of the embedded copy (development).
    pub dir: Option<PathBuf>,
}

impl ConsoleFiles {
    fn content_type(name: &str) -> Option<&'static str> {
        let (_, extension) = name.rsplit_once('.')?;
        match extension {
            "html" => Some("text/html; charset=utf-8"),
            "js" => Some("text/javascript; charset=utf-8"),
            "css" => Some("text/css; charset=utf-8"),
            "svg" => Some("image/svg+xml"),
            _ => None,
        }
    }

    /// A file's content type and bytes, or `None` for a name the console does not have.
    fn load(&self, name: &str) -> Option<(&'static str, Vec<u8>)> {
        let plain = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
            })
            && !name.starts_with('.')
            && !name.contains("..");
        if !plain {
            return None;
        }
        let content_type = Self::content_type(name)?;
        let bytes = match &self.dir {
            Some(dir) => std::fs::read(dir.join(name)).ok()?,
            None => FILES
                .iter()
                .find(|(file, _)| *file == name)
                .map(|(_, bytes)| bytes.to_vec())?,
        };
        Some((content_type, bytes))
    }
}

/// The page's policy: its own scripts, styles and images, its own origin for `fetch` and the
/// WebSocket (named explicitly for `ws:`/`wss:`, which older engines do not count as 'self').
fn content_security_policy(host: Option<&str>) -> HeaderValue {
    let sockets = host
        .filter(|h| {
            !h.is_empty()
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{sockets}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

fn page(name: &str, files: &ConsoleFiles, headers: &HeaderMap) -> Option<Response> {
    let (content_type, bytes) = files.load(name)?;
    let mut response = bytes.into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate each time: a new binary brings a new page, and it is small.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    h.insert("content-security-policy", content_security_policy(host));
    Some(response)
}

/// `GET /` (redirect), `GET /console` (the page) and `GET /console/{file}`. Anything else is
/// rejected as not found, for the route table's own 404.
pub fn filter(files: ConsoleFiles) -> BoxedFilter<(Response,)> {
    let files = Arc::new(files);
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(
            move |method: Method, full: warp::path::FullPath, headers: HeaderMap| {
                let files = files.clone();
                async move {
                    if method != Method::GET && method != Method::HEAD {
                        return Err(warp::reject::not_found());
                    }
                    let path = full.as_str();
                    let answer = match path {
                        "/" => {
                            let mut response = StatusCode::FOUND.into_response();
                            response
                                .headers_mut()
                                .insert(LOCATION, HeaderValue::from_static("/console"));
                            Some(response)
                        }
                        "/console" | "/console/" => page("index.html", &files, &headers),
                        _ => path
                            .strip_prefix("/console/")
                            .and_then(|name| page(name, &files, &headers)),
                    };
                    answer.ok_or_else(warp::reject::not_found)
                }
            },
        )
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_served() {
        let files = ConsoleFiles::default();
        assert!(files.load("app.js").is_some());
        for page in ["account.js", "maintenance.js", "reports.js"] {
            assert!(files.load(page).is_some(), "{page} is embedded");
        }
        assert!(files.load("index.html").is_some());
        for bad in [
            "../Cargo.toml",
            ".hidden",
            "",
            "a/b.js",
            "APP.JS",
            "nope.js",
        ] {
            assert!(files.load(bad).is_none(), "{bad:?} must not be served");
        }
    }

    #[test]
    fn a_directory_serves_only_known_kinds() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("x.js"), "export {}").expect("write");
        std::fs::write(dir.path().join("secret.toml"), "k = 1").expect("write");
        let files = ConsoleFiles {
            dir: Some(dir.path().to_owned()),
        };
        assert_eq!(
            files.load("x.js").map(|(t, _)| t),
            Some("text/javascript; charset=utf-8")
        );
        assert!(files.load("secret.toml").is_none());
    }

    #[test]
    fn the_policy_names_the_socket_of_its_own_host_only() {
        let p = content_security_policy(Some("127.0.0.1:8080"));
        let p = p.to_str().expect("ascii");
        assert!(p.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"));
        assert!(p.contains("script-src 'self';"));
        let evil = content_security_policy(Some("x; script-src *"));
        assert!(!evil.to_str().expect("ascii").contains("script-src *"));
    }
}
