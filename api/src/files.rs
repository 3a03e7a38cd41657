//! Files through the API (reports, maintenance attachments): a download answers with a
//! presigned link (303) where the blob store makes them, else streams the body; an upload
//! streams the request body into the blob store under its size cap. Either way a file is
//! never held whole in memory here.

use std::time::Duration;

use gatehouse_actors::blob::{BlobError, BlobStore};
use warp::http::StatusCode;
use warp::http::header::{CACHE_CONTROL, HeaderValue, LOCATION};
use warp::reply::Response;

use crate::ApiError;

/// 503: this node has no blob store.
pub fn no_store() -> ApiError {
    ApiError::service_unavailable(
        "storage_unavailable",
        "this node keeps no files (no blob store configured)",
    )
}

/// A blob store error in the one error shape.
pub fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge(limit) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the file is larger than {limit} bytes"),
        )
        .with_details(serde_json::json!({ "limit": limit })),
        e if e.is_transient() => ApiError::service_unavailable(
            "storage_unavailable",
            format!("the file store is unavailable; retry ({e})"),
        )
        .with_header(
            warp::http::header::RETRY_AFTER,
            HeaderValue::from_static("5"),
        ),
        e => ApiError::internal(e),
    }
}

/// `?link=true` on a download: answer where to fetch the file instead of redirecting there.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// Answer with the presigned link as JSON ([`DownloadLink`]) rather than a 303: for
    /// clients that cannot read a redirect's target (a browser page under a strict CSP).
    pub link: Option<bool>,
}

/// Where a file can be fetched without credentials.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DownloadLink {
    /// A presigned link to the bucket, or null when this store makes none: then GET the
    /// download path itself (without `link`) for the file.
    pub url: Option<String>,
    /// When the link stops working (Unix milliseconds), if there is one.
    pub expires_at_ms: Option<u64>,
}

/// The blob under `key` as a download named `file_name` (or, with `link`, where to get it);
/// `Err(None)` when it is gone.
pub async fn download(
    blobs: &dyn BlobStore,
    key: &str,
    file_name: &str,
    ttl: Duration,
    query: DownloadQuery,
) -> Result<Response, Option<ApiError>> {
    let presigned = blobs
        .presign_get(key, ttl)
        .await
        .map_err(|e| Some(blob_error(e)))?;
    if query.link == Some(true) {
        if presigned.is_none()
            && blobs
                .get(key)
                .await
                .map_err(|e| Some(blob_error(e)))?
                .is_none()
        {
            return Err(None);
        }
        let expires_at_ms = presigned
            .as_ref()
            .map(|_| gatehouse_actors::clock::wall_ms() + ttl.as_millis() as u64);
        let mut response = crate::json::reply(
            StatusCode::OK,
            &DownloadLink {
                url: presigned,
                expires_at_ms,
            },
        )
        .map_err(Some)?;
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    if let Some(url) = presigned {
        let mut response = Response::new(bytes::Bytes::new().into());
        *response.status_mut() = StatusCode::SEE_OTHER;
        let location = HeaderValue::from_str(&url)
            .map_err(|e| Some(ApiError::internal(format_args!("presigned URL: {e}"))))?;
        response.headers_mut().insert(LOCATION, location);
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let Some((meta, reader)) = blobs.get(key).await.map_err(|e| Some(blob_error(e)))? else {
        return Err(None);
    };
    Ok(crate::server::streamed(
        reader,
        &meta.content_type,
        meta.size,
        file_name,
    ))
}

/// A request body being uploaded, read as it arrives.
pub struct Upload(gatehouse_actors::blob::BlobReader);

impl Upload {
    pub fn into_reader(self) -> gatehouse_actors::blob::BlobReader {
        self.0
    }
}

/// The request body as an [`Upload`] (the server's per-route cap applies as it streams in).
pub fn upload()
-> impl warp::Filter<Extract = (Upload,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    use warp::Filter;
    warp::body::stream().map(to_upload)
}

fn to_upload<S, B>(stream: S) -> Upload
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let chunks = stream.map(|chunk| match chunk {
        Ok(mut buf) => Ok(buf.copy_to_bytes(buf.remaining())),
        Err(e) => Err(std::io::Error::other(e)),
    });
    Upload(Box::pin(tokio_util::io::StreamReader::new(Box::pin(
        chunks,
    ))))
}
