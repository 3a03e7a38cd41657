//! Request ids: every request gets exactly one, chosen when the request arrives, and it is the
//! same id in the `x-request-id` response header, in an error body, in the request's log span
//! and in whatever a handler records (audit rows, command traces).
//!
//! A caller's own `x-request-id` is kept when it is a sane token, so that a reverse proxy or a
//! client can correlate its logs with ours; anything else (too long, odd characters, not
//! UTF-8) is replaced by a fresh UUID rather than trusted, because the id ends up in log lines
//! and JSON and must not carry injected text.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use warp::Filter;
use warp::http::{HeaderMap, HeaderValue};

/// The header that carries the id both ways.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Longest caller-supplied id we keep. 64 is enough for a UUID, a ULID or a trace id with a
/// prefix, and short enough that nobody smuggles a payload through it.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// The id of one request. Cheap to clone: handlers may keep it in spans and messages.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A new random id (UUID v4, hyphenated).
    pub fn generate() -> Self {
        RequestId(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    /// The caller's `x-request-id` when it is sane, otherwise a new id.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(X_REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|candidate| is_sane(candidate))
            .map(|sane| RequestId(Arc::from(sane)))
            .unwrap_or_else(Self::generate)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a header value. Only sane text is ever stored, so this cannot fail; the
    /// fallback exists so that no request path has to unwrap.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

/// Whether a caller-supplied id may be kept: 1 to [`MAX_REQUEST_ID_LEN`] characters from
/// `[A-Za-z0-9._-]`.
pub fn is_sane(candidate: &str) -> bool {
    !candidate.is_empty()
        && candidate.len() <= MAX_REQUEST_ID_LEN
        && candidate
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Extracts the request's id.
///
/// The server chooses the id before any filter runs and puts it in the request's extensions,
/// so every filter of one request sees the same id. Outside [`crate::server::serve`] (a filter
/// tested on its own) there is none, and a fresh one is made.
pub fn request_id() -> impl Filter<Extract = (RequestId,), Error = Infallible> + Clone {
    warp::ext::optional::<RequestId>()
        .map(|id: Option<RequestId>| id.unwrap_or_else(RequestId::generate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("edge-1.abc_DEF-09"));
        assert_eq!(
            RequestId::from_headers(&headers).as_str(),
            "edge-1.abc_DEF-09"
        );
    }

    #[test]
    fn insane_ids_are_replaced() {
        let too_long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in [
            "",
            "has space",
            "semi;colon",
            "quote\"",
            "ünïcode",
            too_long.as_str(),
        ] {
            assert!(!is_sane(bad), "{bad:?} should not be sane");
        }
        assert!(is_sane(&"a".repeat(MAX_REQUEST_ID_LEN)));

        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("<script>"));
        let id = RequestId::from_headers(&headers);
        assert!(
            uuid::Uuid::parse_str(id.as_str()).is_ok(),
            "{id} should be a new UUID"
        );
    }

    #[test]
    fn a_missing_id_is_generated() {
        let id = RequestId::from_headers(&HeaderMap::new());
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
        assert!(is_sane(id.as_str()));
    }
}
