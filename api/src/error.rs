//! The one error shape of the API (CONTRACTS.md, "HTTP"):
//! `{"error": {"code", "message", "details", "request_id"}}`.
//!
//! Handlers return [`ApiError`]; warp's own rejections (unknown route, wrong method, body too
//! large, wrong content type, bad query) are translated by [`from_rejection`], so a client never
//! sees warp's plain-text answers. `code` is the stable, machine-readable part; `message` is for
//! people and may change. A 500 never shows its message or details: they are logged with the
//! request id instead, because internal errors can carry SQL, paths or addresses.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::request_id::RequestId;

/// What a client sees for any 500, whatever went wrong.
const INTERNAL_MESSAGE: &str = "internal error; the request id identifies it in the server log";

/// An error answer: status, stable snake_case code, human message, structured details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub details: Value,
    /// Headers the answer needs (`Allow` on a 405, `Retry-After` on a 503). Boxed: rarely
    /// present, and `Result<_, ApiError>` is returned everywhere, so the error stays small.
    headers: Option<Box<HeaderMap>>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        debug_assert!(is_snake_case(code), "error code {code:?} is not snake_case");
        ApiError {
            status,
            code,
            message: message.into(),
            details: Value::Object(Map::new()),
            headers: None,
        }
    }

    /// Replaces the details. Non-object values are wrapped as `{"value": ...}` so that clients
    /// can always index `details` by key.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = match details {
            Value::Object(_) => details,
            Value::Null => Value::Object(Map::new()),
            other => serde_json::json!({ "value": other }),
        };
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers
            .get_or_insert_with(Box::default)
            .insert(name, value);
        self
    }

    /// Extra response headers, if any.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.headers.as_deref()
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn service_unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// A 500. `cause` is logged (with the request id, by the request's span) and never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            INTERNAL_MESSAGE,
        )
    }

    /// The complete response for this error.
    pub fn to_response(&self, request_id: &RequestId) -> Response {
        let hide = self.status == StatusCode::INTERNAL_SERVER_ERROR;
        if hide && (self.message != INTERNAL_MESSAGE || !is_empty_object(&self.details)) {
            // Someone built a 500 by hand; keep its text in the log, not on the wire.
            tracing::error!(code = self.code, message = %self.message, details = %self.details, "internal error");
        }
        let body = ErrorEnvelope {
            error: ErrorObject {
                code: if hide { "internal_error" } else { self.code },
                message: if hide {
                    INTERNAL_MESSAGE
                } else {
                    &self.message
                },
                details: if hide {
                    Value::Object(Map::new())
                } else {
                    self.details.clone()
                },
                request_id: request_id.as_str(),
            },
        };
        let mut response = match serde_json::to_vec(&body) {
            Ok(bytes) => bytes.into_response(),
            // Serializing strings and a JSON value cannot fail; answer something valid anyway.
            Err(_) => br#"{"error":{"code":"internal_error","message":"internal error","details":{},"request_id":""}}"#
                .to_vec()
                .into_response(),
        };
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers.iter().flat_map(|headers| headers.iter()) {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }
}

/// Lets handlers and filters reject with an `ApiError` (warp then provides
/// `From<ApiError> for Rejection`); [`from_rejection`] finds it again.
impl warp::reject::Reject for ApiError {}

/// The error body as documented in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorObject<'a>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject<'a> {
    /// Stable, snake_case, machine-readable.
    #[schema(example = "not_found")]
    pub code: &'a str,
    /// For people; may change between versions.
    pub message: &'a str,
    /// Structured context; always an object, `{}` when there is none.
    #[schema(value_type = Object)]
    pub details: Value,
    /// The same id as the `x-request-id` response header.
    pub request_id: &'a str,
}

/// Marks "the path exists, the method does not": the router adds the `Allow` header.
#[derive(Debug)]
pub(crate) struct WrongMethod;

impl warp::reject::Reject for WrongMethod {}

/// Translates any rejection into an [`ApiError`]. Our own errors win over warp's, and a more
/// specific warp rejection over "not found", because a combined rejection carries the causes of
/// every route that was tried.
pub fn from_rejection(rejection: &Rejection) -> ApiError {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingCookie,
        MissingHeader, PayloadTooLarge, UnsupportedMediaType,
    };

    if let Some(error) = rejection.find::<ApiError>() {
        return error.clone();
    }
    if rejection.is_not_found() {
        return ApiError::not_found("no such resource");
    }
    if rejection.find::<WrongMethod>().is_some() || rejection.find::<MethodNotAllowed>().is_some() {
        return method_not_allowed();
    }
    if rejection.find::<PayloadTooLarge>().is_some() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        );
    }
    if rejection.find::<LengthRequired>().is_some() {
        return ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a content-length header is required",
        );
    }
    if rejection.find::<UnsupportedMediaType>().is_some() {
        return unsupported_media_type();
    }
    if rejection.find::<InvalidQuery>().is_some() {
        return ApiError::bad_request("invalid_query", "the query string is invalid");
    }
    if let Some(missing) = rejection.find::<MissingHeader>() {
        return ApiError::bad_request("missing_header", "a required header is missing")
            .with_details(serde_json::json!({ "header": missing.name() }));
    }
    if let Some(invalid) = rejection.find::<InvalidHeader>() {
        return ApiError::bad_request("invalid_header", "a header is invalid")
            .with_details(serde_json::json!({ "header": invalid.name() }));
    }
    if let Some(missing) = rejection.find::<MissingCookie>() {
        return ApiError::bad_request("missing_cookie", "a required cookie is missing")
            .with_details(serde_json::json!({ "cookie": missing.name() }));
    }
    if let Some(error) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        // Only reached when an endpoint used `warp::body::json` instead of `crate::json::body`.
        return ApiError::bad_request("invalid_body", "the request body could not be read as JSON")
            .with_details(serde_json::json!({ "error": error.to_string() }));
    }
    if rejection
        .find::<warp::filters::ws::MissingConnectionUpgrade>()
        .is_some()
    {
        return ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this resource needs a WebSocket upgrade",
        );
    }
    if rejection
        .find::<warp::filters::cors::CorsForbidden>()
        .is_some()
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cors_forbidden",
            "cross-origin request not allowed",
        );
    }
    ApiError::internal(format_args!("unhandled rejection: {rejection:?}"))
}

/// 405; the router adds `Allow`, which needs the path.
pub(crate) fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not support the request's method",
    )
}

pub(crate) fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "the request body must be application/json",
    )
}

fn is_empty_object(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.is_empty())
}

fn is_snake_case(code: &str) -> bool {
    !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !code.starts_with('_')
        && !code.ends_with('_')
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response) -> Value {
        use http_body_util::BodyExt;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn renders_the_contract_shape() {
        let id = RequestId::generate();
        let response = ApiError::conflict("already_open", "the gate is open")
            .with_details(serde_json::json!({ "gate": "g1" }))
            .to_response(&id);
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = body_json(response).await;
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "code": "already_open",
                "message": "the gate is open",
                "details": {"gate": "g1"},
                "request_id": id.as_str(),
            }})
        );
    }

    #[tokio::test]
    async fn a_500_never_shows_its_text() {
        let id = RequestId::generate();
        let leaky = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "db_down",
            "connection to 10.0.0.5:5432 refused",
        )
        .with_details(serde_json::json!({ "sql": "SELECT secret" }));
        let body = body_json(leaky.to_response(&id)).await;
        let text = body.to_string();
        assert!(
            !text.contains("10.0.0.5") && !text.contains("SELECT"),
            "{text}"
        );
        assert_eq!(body["error"]["code"], "internal_error");
        assert_eq!(body["error"]["details"], serde_json::json!({}));
    }

    #[test]
    fn details_are_always_an_object() {
        let error = ApiError::bad_request("x", "y").with_details(serde_json::json!([1, 2]));
        assert_eq!(error.details, serde_json::json!({ "value": [1, 2] }));
        let error = ApiError::bad_request("x", "y").with_details(Value::Null);
        assert_eq!(error.details, serde_json::json!({}));
    }

    #[test]
    fn snake_case_codes() {
        assert!(is_snake_case("payload_too_large"));
        assert!(is_snake_case("e2"));
        for bad in ["", "Bad", "kebab-case", "_x", "x_", "with space"] {
            assert!(!is_snake_case(bad), "{bad}");
        }
    }
}
