//! JSON in and out.
//!
//! [`body`] is the only way endpoints should read a request body. Unlike `warp::body::json` it
//! insists on `application/json` (415 otherwise), caps the size whether or not the client sent a
//! `Content-Length` (a chunked upload is counted as it arrives), rejects unknown fields even
//! when the target type forgot `#[serde(deny_unknown_fields)]` (a typo in an optional field must
//! not be silently ignored on a gate command), and reports serde's error with its path, line and
//! column in `details`.
//!
//! [`reply`] serializes an answer with a status code; a serialization failure becomes a 500
//! instead of warp's plain-text fallback.

use std::error::Error as StdError;

use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use warp::http::StatusCode;
use warp::http::header::{CONTENT_TYPE, HeaderValue};
use warp::reply::Response;
use warp::{Buf, Filter, Rejection, Reply};

use crate::error::{ApiError, unsupported_media_type};

/// Default cap on a request body (the server's `max_body_bytes` overrides it). Requests to this
/// API are small commands and configuration documents; 64 KiB is generous for them and keeps a
/// flood of large bodies from holding much memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// The body limit in force for a request; the server puts it in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Reads the request body as JSON into `T`. See the module documentation for the rules.
pub fn body<T>() -> impl Filter<Extract = (T,), Error = Rejection> + Clone
where
    T: DeserializeOwned + Send + 'static,
{
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::ext::optional::<BodyLimit>())
        .and(warp::body::stream())
        .and_then(
            |content_type: Option<String>,
             length: Option<u64>,
             limit: Option<BodyLimit>,
             stream| async move {
                let limit = limit.map_or(DEFAULT_MAX_BODY_BYTES, |BodyLimit(limit)| limit);
                if !content_type.as_deref().is_some_and(is_json) {
                    return Err(Rejection::from(unsupported_media_type()));
                }
                if length.is_some_and(|length| length > limit as u64) {
                    return Err(too_large(limit).into());
                }
                let bytes = collect(stream, limit).await?;
                parse::<T>(&bytes).map_err(Rejection::from)
            },
        )
}

/// A JSON response with `status`.
pub fn reply<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(value).map_err(ApiError::internal)?;
    let mut response = bytes.into_response();
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// `application/json` or any `application/*+json`, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(subtype) => subtype == "json" || subtype.ends_with("+json"),
        None => false,
    }
}

pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is too large",
    )
    .with_details(serde_json::json!({ "limit_bytes": limit }))
}

async fn collect<S, B>(stream: S, limit: usize) -> Result<Vec<u8>, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut stream = std::pin::pin!(stream);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|error| {
            if caused_by_limit(&error) {
                too_large(limit)
            } else {
                tracing::debug!(%error, "reading the request body failed");
                ApiError::bad_request("body_read_error", "the request body could not be read")
            }
        })?;
        // Counted here as well as by the server's body cap, so the filter holds its limit even
        // when used outside `serve`.
        if bytes.len() + chunk.remaining() > limit {
            return Err(too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

fn caused_by_limit(error: &warp::Error) -> bool {
    let mut cause: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(current) = cause {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = current.source();
    }
    false
}

/// Deserializes `bytes`, rejecting syntax errors, type errors and unknown fields.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
    let value = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        &mut deserializer,
        &mut record_unknown,
    ))
    .map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        serde_error(&inner, Some(path))
    })?;
    deserializer
        .end()
        .map_err(|error| serde_error(&error, None))?;
    if let Some(first) = unknown.first() {
        return Err(
            ApiError::bad_request("invalid_body", "the request body has unknown fields")
                .with_details(serde_json::json!({
                    "error": format!("unknown field `{first}`"),
                    "path": first,
                    "unknown_fields": unknown,
                })),
        );
    }
    Ok(value)
}

/// `nested.items[2].name`, as serde_path_to_error writes it; serde_ignored's own rendering
/// marks every `Option` with a `?` that means nothing to a client.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn serde_error(error: &serde_json::Error, path: Option<String>) -> ApiError {
    let (code, message) = match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ("malformed_json", "the request body is not valid JSON")
        }
        Category::Data => (
            "invalid_body",
            "the request body does not match the expected shape",
        ),
    };
    let mut details = serde_json::json!({
        "error": error.to_string(),
        "line": error.line(),
        "column": error.column(),
    });
    // serde_path_to_error says "." for the document itself; that tells a client nothing.
    if let Some(path) = path.filter(|path| path != ".") {
        details["path"] = serde_json::Value::String(path);
    }
    ApiError::bad_request(code, message).with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Command {
        id: String,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        action: u8,
    }

    #[test]
    fn content_types() {
        for good in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(good), "{good}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "text/json",
            "",
            "multipart/form-data",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_without_deny_unknown_fields() {
        let error =
            parse::<Command>(br#"{"id": "a", "nested": {"action": 1, "extra": true}, "typo": 1}"#)
                .err()
                .map(|error| (error.code, error.details));
        let Some((code, details)) = error else {
            panic!("unknown fields were accepted");
        };
        assert_eq!(code, "invalid_body");
        assert_eq!(
            details["unknown_fields"],
            serde_json::json!(["nested.extra", "typo"])
        );
    }

    #[test]
    fn type_errors_name_the_path() {
        let Err(error) = parse::<Command>(br#"{"id": "a", "nested": {"action": "open"}}"#) else {
            panic!("accepted a string for a number");
        };
        assert_eq!(error.code, "invalid_body");
        assert_eq!(error.details["path"], "nested.action");
        assert!(error.details["line"].is_u64());
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_are_malformed() {
        for bad in [&b"{\"id\": "[..], b"", b"{\"id\": \"a\"} x"] {
            let Err(error) = parse::<Command>(bad) else {
                panic!("accepted {:?}", String::from_utf8_lossy(bad));
            };
            assert_eq!(error.code, "malformed_json");
        }
    }
}
