//! The OpenAPI 3.1 document, made by utoipa from the handlers' `#[utoipa::path]` annotations
//! as collected in the route table, and served at `GET /api/v1/openapi.json`.
//!
//! The document is assembled from [`crate::routing::RouteTable`], not from a separate
//! `#[derive(OpenApi)]` list: a second list is exactly what a later endpoint would forget.
//! It is serialized once when the table is built and served as bytes. No UI is bundled: a
//! swagger-ui crate downloads its assets at build time, which this build must never do.

use std::sync::{Arc, OnceLock};

use utoipa::openapi::path::{PathItem, PathsBuilder};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder};
use utoipa::{PartialSchema, ToSchema};
use warp::Filter;
use warp::Reply;
use warp::http::StatusCode;
use warp::http::header::{CONTENT_TYPE, HeaderValue};

use crate::error::{ApiError, ErrorEnvelope};
use crate::routing::{Outcome, Route};

/// Where the document is served (CONTRACTS.md, "HTTP").
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The serialized document, filled by the table right after it is built.
pub(crate) type DocumentSlot = Arc<OnceLock<Vec<u8>>>;

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi_document",
    summary = "This API's OpenAPI 3.1 document",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json"),
    ),
)]
async fn openapi_document(document: DocumentSlot) -> Outcome {
    let bytes = document.get().ok_or_else(|| {
        ApiError::internal("the OpenAPI document was served before the table was built")
    })?;
    let mut response = bytes.clone().into_response();
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The document's own route and the slot its bytes go into.
pub(crate) fn route() -> (Route, DocumentSlot) {
    let slot: DocumentSlot = Arc::new(OnceLock::new());
    let served = slot.clone();
    let route = Route::new::<__path_openapi_document, _>(move |_params| {
        warp::any()
            .map(move || served.clone())
            .then(openapi_document)
    });
    (route, slot)
}

/// The document for `routes`.
/// The `default` response of every operation: any other status, in the error shape.
fn error_response() -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description("Any other outcome: an error in the error shape (400 malformed, 401, 403, 404, 409, 413, 415, 422, 429 with Retry-After, 500, 503 with Retry-After)")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorEnvelope::name())))
                .build(),
        )
        .build()
        .into()
}

pub(crate) fn document(routes: &[Route]) -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut schemas = Vec::new();
    for route in routes {
        let mut operation = route.operation().clone();
        // Whatever else an endpoint answers (400 for a malformed request, 401, 413, 415, 429,
        // 503 while the database is away, 500) comes in the one error shape: said once, for
        // every operation, so that a client or a schema-driven test knows every answer.
        operation
            .responses
            .responses
            .entry("default".to_string())
            .or_insert_with(error_response);
        paths = paths.path(
            route.path(),
            PathItem::from_http_methods(route.doc_methods().iter().cloned(), operation),
        );
        schemas.extend(route.schemas().iter().cloned());
    }
    // The error shape is part of every endpoint's contract even where an annotation does not
    // reference it.
    schemas.push((ErrorEnvelope::name().into_owned(), ErrorEnvelope::schema()));
    {
        use crate::wire::names::{ActionName, ParityName, RoleName, StatusName, TransportName};
        schemas.push((ActionName::name().into_owned(), ActionName::schema()));
        schemas.push((RoleName::name().into_owned(), RoleName::schema()));
        schemas.push((StatusName::name().into_owned(), StatusName::schema()));
        schemas.push((TransportName::name().into_owned(), TransportName::schema()));
        schemas.push((ParityName::name().into_owned(), ParityName::schema()));
    }
    <ErrorEnvelope as ToSchema>::schemas(&mut schemas);

    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Gatehouse API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Supervision of physical gates. Every error answers \
                     {\"error\": {\"code\", \"message\", \"details\", \"request_id\"}} and every \
                     response carries x-request-id.",
                ))
                .license(Some(
                    LicenseBuilder::new()
                        .name("Apache-2.0")
                        .identifier(Some("Apache-2.0"))
                        .build(),
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(
            ComponentsBuilder::new().schemas_from_iter(schemas).build(),
        ))
        .build()
}
