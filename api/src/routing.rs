//! The route table: the single list from which both the warp filter tree and the OpenAPI
//! document are made, so that a route cannot be served undocumented or documented unserved.
//!
//! A [`Route`] is built from the type that `#[utoipa::path]` generates for a handler
//! (`__path_<handler>`): the method and the path template are read from the annotation, never
//! written a second time, and the route's filter is made to match exactly them. The endpoint
//! code only supplies what happens once they matched. [`RouteTable::new`] then checks the table
//! as a whole (well-formed templates, no two routes that could answer the same request, path
//! parameters documented, everything under `/api/v1` except the probes) and builds the
//! document; the parity test compares the served document with [`RouteTable::entries`] and
//! probes every entry over HTTP.
//!
//! Path templates use OpenAPI's `{name}` syntax and are matched here rather than with warp's
//! `path!` macro, because a typed warp path cannot be derived from a string at run time.
//! Matching is exact (no trailing slash, no prefix match); parameters are percent-decoded.
//! Once a route's method and path matched, the route always answers: its errors are rendered
//! right there and never fall through to other routes, so a failing handler cannot turn into
//! a 404 or 405 from an unrelated route.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use utoipa::openapi::RefOr;
use utoipa::openapi::path::{HttpMethod, Operation, ParameterIn};
use utoipa::openapi::schema::Schema;
use warp::filters::BoxedFilter;
use warp::filters::path::FullPath;
use warp::http::header::{ALLOW, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::error::{ApiError, WrongMethod, from_rejection};
use crate::request_id::{RequestId, request_id};

/// Everything the API serves lives under this prefix (CONTRACTS.md, "HTTP")…
pub const API_PREFIX: &str = "/api/v1/";

/// …except these, which probes and scrapers expect at the root.
pub const ROOT_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// What an endpoint's filter produces: an answer or an error to render.
pub type Outcome = Result<Response, ApiError>;

/// A filter that yields the matched route's path parameters; handed to each endpoint.
pub type Params = BoxedFilter<(PathParams,)>;

/// The percent-decoded path parameters of the matched route, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams(Vec<(Arc<str>, String)>);

impl PathParams {
    /// The raw (decoded) value of a parameter. A name the template lacks is a programming
    /// error, answered as a 500 rather than a panic.
    pub fn get(&self, name: &str) -> Result<&str, ApiError> {
        self.0
            .iter()
            .find(|(key, _)| &**key == name)
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| {
                ApiError::internal(format_args!(
                    "path parameter {name:?} is not in the route's template"
                ))
            })
    }

    /// A parameter parsed as `T`; a value that does not parse is the client's error (400).
    pub fn parse<T: FromStr>(&self, name: &str) -> Result<T, ApiError> {
        let raw = self.get(name)?;
        raw.parse().map_err(|_| {
            ApiError::bad_request("invalid_path_parameter", "a path parameter is not valid")
                .with_details(serde_json::json!({ "parameter": name }))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (&**key, value.as_str()))
    }
}

/// Why a route table was refused. These are programming errors, found at start-up (and by
/// the crate's tests), never while serving.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route {path:?}: invalid path template: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("route {path:?}: the OpenAPI annotation names no method")]
    NoMethod { path: String },
    #[error("route {path:?} is neither under {API_PREFIX:?} nor one of {ROOT_PATHS:?}")]
    OutsidePrefix { path: String },
    #[error("{method} {first:?} and {method} {second:?} can match the same request")]
    Overlap {
        method: Method,
        first: String,
        second: String,
    },
    #[error("route {path:?}: path parameter {name:?} is {problem}")]
    Parameter {
        path: String,
        name: String,
        problem: &'static str,
    },
    #[error("operation id {operation_id:?} is used by more than one route")]
    DuplicateOperationId { operation_id: String },
    #[error("the OpenAPI document cannot be serialized: {0}")]
    Document(#[from] serde_json::Error),
}

/// One endpoint: its documentation and the filter that serves it.
pub struct Route {
    path: String,
    doc_methods: Vec<HttpMethod>,
    methods: Arc<[Method]>,
    template: Result<Arc<PathTemplate>, &'static str>,
    operation: Operation,
    schemas: Vec<(String, RefOr<Schema>)>,
    filter: BoxedFilter<(Response,)>,
}

impl Route {
    /// A route for the handler whose `#[utoipa::path]` generated `P`.
    ///
    /// `endpoint` receives a filter yielding the path parameters and returns the filter that
    /// answers once method and path matched, for example
    /// `|params| params.and(json::body::<Command>()).and(with_state).then(handler)`.
    /// It may reject (warp's filters do); the rejection is rendered in the error shape.
    ///
    /// The schema and tag lists come from utoipa's `__dev` traits, which its own framework
    /// integrations (utoipa-axum's `routes!`) use the same way; utoipa is pinned to 5.x.
    pub fn new<P, F>(endpoint: impl FnOnce(Params) -> F) -> Route
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences + utoipa::__dev::Tags<'static>,
        F: Filter<Extract = (Outcome,)> + Send + Sync + 'static,
        F::Error: Into<Rejection>,
    {
        let path = P::path();
        let doc_methods = P::methods();
        let methods: Arc<[Method]> = doc_methods.iter().map(http_method).collect();
        let template = PathTemplate::parse(&path).map(Arc::new);
        // A route with a bad template never serves (the table refuses it); it still needs a
        // filter to exist until then.
        let matching = template
            .clone()
            .unwrap_or_else(|_| Arc::new(PathTemplate::never()));

        let params: Params = {
            let template = matching.clone();
            warp::path::full()
                .map(move |full: FullPath| template.capture(full.as_str()).unwrap_or_default())
                .boxed()
        };
        let endpoint = endpoint(params)
            .boxed()
            .map(Ok::<Outcome, Rejection>)
            .or_else(|rejection| async move { Ok::<_, Rejection>((Err(rejection),)) });
        let filter = matcher(matching, methods.clone())
            .and(request_id())
            .and(endpoint)
            .map(
                |id: RequestId, outcome: Result<Outcome, Rejection>| match outcome {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => error.to_response(&id),
                    Err(rejection) => from_rejection(&rejection).to_response(&id),
                },
            )
            .boxed();

        let mut schemas = Vec::new();
        <P as utoipa::__dev::SchemaReferences>::schemas(&mut schemas);
        // utoipa keeps an annotation's `tag` outside `operation()` (its derive adds it when it
        // assembles a document); this table assembles the document, so it adds it here.
        let mut operation = P::operation();
        let tags = <P as utoipa::__dev::Tags<'static>>::tags();
        if operation.tags.is_none() && !tags.is_empty() {
            operation.tags = Some(tags.into_iter().map(str::to_owned).collect());
        }
        Route {
            path,
            doc_methods,
            methods,
            template,
            operation,
            schemas,
            filter,
        }
    }

    /// The path template, as documented.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    pub(crate) fn doc_methods(&self) -> &[HttpMethod] {
        &self.doc_methods
    }

    pub(crate) fn operation(&self) -> &Operation {
        &self.operation
    }

    pub(crate) fn schemas(&self) -> &[(String, RefOr<Schema>)] {
        &self.schemas
    }
}

/// Path + method → nothing, "not found" or "wrong method".
fn matcher(
    template: Arc<PathTemplate>,
    methods: Arc<[Method]>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and(warp::method())
        .and_then(move |full: FullPath, method: Method| {
            let verdict = if !template.matches(full.as_str()) {
                Err(warp::reject::not_found())
            } else if methods.contains(&method) {
                Ok(())
            } else {
                Err(warp::reject::custom(WrongMethod))
            };
            std::future::ready(verdict)
        })
        .untuple_one()
}

/// The checked routes, their OpenAPI document, and the filter serving them.
pub struct RouteTable {
    routes: Vec<Route>,
    /// Pages outside the document (the console), tried after the routes.
    pages: Vec<BoxedFilter<(Response,)>>,
    index: Arc<RouteIndex>,
    document: utoipa::openapi::OpenApi,
}

impl RouteTable {
    /// Checks `routes` as a whole, adds `GET /api/v1/openapi.json` (which serves the document of
    /// this very table), and builds the document.
    pub fn new(mut routes: Vec<Route>) -> Result<RouteTable, RouteError> {
        let (openapi_route, document_slot) = crate::openapi::route();
        routes.push(openapi_route);

        let mut seen: Vec<(&Method, &Arc<PathTemplate>, &str)> = Vec::new();
        let mut operation_ids = HashSet::new();
        for route in &routes {
            let path = route.path.clone();
            let template = route
                .template
                .as_ref()
                .map_err(|reason| RouteError::InvalidPath {
                    path: path.clone(),
                    reason,
                })?;
            if route.methods.is_empty() {
                return Err(RouteError::NoMethod { path });
            }
            if !path.starts_with(API_PREFIX) && !ROOT_PATHS.contains(&path.as_str()) {
                return Err(RouteError::OutsidePrefix { path });
            }
            check_parameters(&path, template, &route.operation)?;
            if let Some(operation_id) = &route.operation.operation_id
                && !operation_ids.insert(operation_id.clone())
            {
                return Err(RouteError::DuplicateOperationId {
                    operation_id: operation_id.clone(),
                });
            }
            for method in route.methods.iter() {
                if let Some((_, _, first)) = seen.iter().find(|(other, other_template, _)| {
                    *other == method && other_template.overlaps(template)
                }) {
                    return Err(RouteError::Overlap {
                        method: method.clone(),
                        first: first.to_string(),
                        second: path,
                    });
                }
                seen.push((method, template, &route.path));
            }
        }

        let index = Arc::new(RouteIndex {
            entries: routes
                .iter()
                .filter_map(|route| {
                    let template = route.template.as_ref().ok()?;
                    Some((template.clone(), route.methods.clone()))
                })
                .collect(),
            labels: routes
                .iter()
                .filter_map(|route| {
                    let template = route.template.as_ref().ok()?;
                    Some((template.clone(), Arc::from(route.path.as_str())))
                })
                .collect(),
        });
        let document = crate::openapi::document(&routes);
        let serialized = document.to_json()?;
        // Filled once, here, before anything can serve: the route only reads it.
        let _ = document_slot.set(serialized.into_bytes());
        Ok(RouteTable {
            routes,
            pages: Vec::new(),
            index,
            document,
        })
    }

    /// Adds pages that are not part of the API and not in its document (the console): a
    /// filter that answers or rejects as not found, and the path templates it answers, for
    /// the HTTP metrics' route label.
    pub fn with_pages(
        mut self,
        filter: BoxedFilter<(Response,)>,
        templates: &[&str],
    ) -> Result<RouteTable, RouteError> {
        let mut labels = Vec::new();
        for raw in templates {
            let template = PathTemplate::parse(raw).map_err(|reason| RouteError::InvalidPath {
                path: raw.to_string(),
                reason,
            })?;
            labels.push((Arc::new(template), Arc::from(*raw)));
        }
        let index = Arc::make_mut(&mut self.index);
        index.labels.extend(labels);
        self.pages.push(filter);
        Ok(self)
    }

    /// Every (method, path template) the table serves, sorted. The parity test compares this
    /// with the document.
    pub fn entries(&self) -> Vec<(Method, String)> {
        let mut entries: Vec<(Method, String)> = self
            .routes
            .iter()
            .flat_map(|route| {
                route
                    .methods
                    .iter()
                    .map(|method| (method.clone(), route.path.clone()))
            })
            .collect();
        entries.sort_by(|a, b| (&a.1, a.0.as_str()).cmp(&(&b.1, b.0.as_str())));
        entries
    }

    /// The OpenAPI document of this table.
    pub fn document(&self) -> &utoipa::openapi::OpenApi {
        &self.document
    }

    /// The methods served at a concrete request path, if any route's template matches it.
    pub fn allowed_methods(&self, path: &str) -> Option<Vec<Method>> {
        self.index.allowed_methods(path)
    }

    pub(crate) fn index(&self) -> Arc<RouteIndex> {
        self.index.clone()
    }

    /// The whole filter tree: every route, then "not found" / "method not allowed" (with
    /// `Allow`) rendered in the error shape. It never rejects.
    pub fn filter(&self) -> BoxedFilter<(Response,)> {
        let chain = self
            .routes
            .iter()
            .map(|route| route.filter.clone())
            .chain(self.pages.iter().cloned())
            .reduce(|first, second| first.or(second).unify().boxed())
            .unwrap_or_else(|| {
                warp::any()
                    .and_then(|| async { Err::<Response, Rejection>(warp::reject::not_found()) })
                    .boxed()
            });
        let index = self.index.clone();
        warp::path::full()
            .and(request_id())
            .and(
                chain
                    .map(Ok::<Response, Rejection>)
                    .or_else(|rejection| async move { Ok::<_, Rejection>((Err(rejection),)) }),
            )
            .map(
                move |full: FullPath, id: RequestId, outcome: Result<Response, Rejection>| {
                    match outcome {
                        Ok(response) => response,
                        Err(rejection) => {
                            let mut error = from_rejection(&rejection);
                            if error.status == StatusCode::METHOD_NOT_ALLOWED
                                && let Some(allow) = index.allow_header(full.as_str())
                            {
                                error = error.with_header(ALLOW, allow);
                            }
                            error.to_response(&id)
                        }
                    }
                },
            )
            .boxed()
    }
}

/// Which methods exist at which template: for `Allow` and CORS preflights.
#[derive(Clone)]
pub(crate) struct RouteIndex {
    entries: Vec<(Arc<PathTemplate>, Arc<[Method]>)>,
    /// Every template served (routes and pages) with its spelling, for metric labels.
    labels: Vec<(Arc<PathTemplate>, Arc<str>)>,
}

impl RouteIndex {
    /// The template that `path` matched (`/api/v1/gates/{gate}`), never the raw path: label
    /// values stay a closed set whatever clients send.
    pub(crate) fn template_of(&self, path: &str) -> Option<Arc<str>> {
        self.labels
            .iter()
            .find(|(template, _)| template.matches(path))
            .map(|(_, label)| label.clone())
    }

    pub(crate) fn allowed_methods(&self, path: &str) -> Option<Vec<Method>> {
        let methods: BTreeSet<&str> = self
            .entries
            .iter()
            .filter(|(template, _)| template.matches(path))
            .flat_map(|(_, methods)| methods.iter().map(Method::as_str))
            .collect();
        if methods.is_empty() {
            return None;
        }
        Some(
            methods
                .into_iter()
                .filter_map(|method| Method::from_str(method).ok())
                .collect(),
        )
    }

    pub(crate) fn allow_header(&self, path: &str) -> Option<HeaderValue> {
        let methods = self.allowed_methods(path)?;
        let joined = methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        HeaderValue::from_str(&joined).ok()
    }
}

fn check_parameters(
    path: &str,
    template: &PathTemplate,
    operation: &Operation,
) -> Result<(), RouteError> {
    let documented: BTreeSet<&str> = operation
        .parameters
        .iter()
        .flatten()
        .filter(|parameter| matches!(parameter.parameter_in, ParameterIn::Path))
        .map(|parameter| parameter.name.as_str())
        .collect();
    let in_template: BTreeSet<&str> = template.parameter_names().collect();
    let problem = |name: &str, problem| RouteError::Parameter {
        path: path.to_owned(),
        name: name.to_owned(),
        problem,
    };
    if let Some(name) = in_template.difference(&documented).next() {
        return Err(problem(
            name,
            "in the template but not documented in `params(...)`",
        ));
    }
    if let Some(name) = documented.difference(&in_template).next() {
        return Err(problem(name, "documented but not in the template"));
    }
    Ok(())
}

pub(crate) fn http_method(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(Arc<str>),
}

/// A parsed OpenAPI path template such as `/api/v1/gates/{gate}/commands`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    segments: Vec<Segment>,
    /// Set only for the stand-in of a template that did not parse.
    never: bool,
}

impl PathTemplate {
    pub(crate) fn parse(raw: &str) -> Result<PathTemplate, &'static str> {
        let rest = raw.strip_prefix('/').ok_or("must start with '/'")?;
        if rest.is_empty() {
            return Ok(PathTemplate {
                segments: Vec::new(),
                never: false,
            });
        }
        let mut segments = Vec::new();
        let mut names = BTreeSet::new();
        for segment in rest.split('/') {
            if segment.is_empty() {
                return Err("empty segment (double or trailing '/')");
            }
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err("a parameter name must be [A-Za-z0-9_]+");
                }
                if !names.insert(name) {
                    return Err("a parameter name appears twice");
                }
                segments.push(Segment::Param(Arc::from(name)));
            } else if segment.contains(['{', '}']) {
                return Err("a parameter must fill a whole segment");
            } else if segment.contains(['%', '?', '#']) {
                return Err("literal segments are plain text");
            } else {
                segments.push(Segment::Literal(segment.to_owned()));
            }
        }
        Ok(PathTemplate {
            segments,
            never: false,
        })
    }

    /// A template that matches nothing.
    fn never() -> PathTemplate {
        PathTemplate {
            segments: Vec::new(),
            never: true,
        }
    }

    pub(crate) fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Param(name) => Some(&**name),
            Segment::Literal(_) => None,
        })
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        self.capture(path).is_some()
    }

    /// The parameters if `path` (without query) matches.
    pub(crate) fn capture(&self, path: &str) -> Option<PathParams> {
        if self.never {
            return None;
        }
        let rest = path.strip_prefix('/')?;
        // "/" has no segments; elsewhere an empty segment (a double or trailing slash) stays in
        // and matches nothing.
        let mut parts = (!rest.is_empty())
            .then(|| rest.split('/'))
            .into_iter()
            .flatten();
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) => {
                    if part != literal {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = percent_decode(part)?;
                    if value.is_empty() {
                        return None;
                    }
                    params.push((name.clone(), value));
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(PathParams(params))
    }

    /// Whether some path could match both templates.
    pub(crate) fn overlaps(&self, other: &PathTemplate) -> bool {
        !self.never
            && !other.never
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    _ => true,
                })
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or text that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// Sorted (method, path) pairs of an OpenAPI document, for comparing with
/// [`RouteTable::entries`]. Accepts the served JSON so that the test checks what clients get.
pub fn document_entries(document: &serde_json::Value) -> Vec<(String, String)> {
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut entries: BTreeMap<(String, String), ()> = BTreeMap::new();
    if let Some(paths) = document.get("paths").and_then(serde_json::Value::as_object) {
        for (path, item) in paths {
            for method in METHODS {
                if item.get(*method).is_some() {
                    entries.insert((path.clone(), method.to_ascii_uppercase()), ());
                }
            }
        }
    }
    entries
        .into_keys()
        .map(|(path, method)| (method, path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(raw: &str) -> PathTemplate {
        match PathTemplate::parse(raw) {
            Ok(template) => template,
            Err(reason) => panic!("{raw}: {reason}"),
        }
    }

    #[test]
    fn parses_and_captures() {
        let t = template("/api/v1/gates/{gate}/commands");
        assert_eq!(t.parameter_names().collect::<Vec<_>>(), ["gate"]);
        let params = t.capture("/api/v1/gates/north%20gate/commands");
        assert_eq!(
            params.as_ref().and_then(|p| p.get("gate").ok()),
            Some("north gate")
        );
        for miss in [
            "/api/v1/gates/commands",
            "/api/v1/gates//commands",
            "/api/v1/gates/x/commands/",
            "/api/v1/gates/x/commands/y",
            "/api/v1/gates/%zz/commands",
            "/api/v1/gates/%ff/commands",
            "api/v1/gates/x/commands",
        ] {
            assert!(t.capture(miss).is_none(), "{miss}");
        }
        assert!(template("/healthz").matches("/healthz"));
        assert!(!template("/healthz").matches("/healthz/"));
        assert!(template("/").matches("/"));
        assert!(!template("/").matches("/x"));
    }

    #[test]
    fn refuses_bad_templates() {
        for bad in [
            "healthz",
            "/a//b",
            "/a/",
            "/a/{}",
            "/a/{x}/{x}",
            "/a/x{y}",
            "/a/{x-y}",
            "/a/%20",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap() {
        let a = template("/api/v1/gates/{gate}");
        assert!(a.overlaps(&template("/api/v1/gates/search")));
        assert!(a.overlaps(&template("/api/v1/gates/{id}")));
        assert!(!a.overlaps(&template("/api/v1/gates")));
        assert!(!a.overlaps(&template("/api/v1/sites/{site}")));
        assert!(!PathTemplate::never().overlaps(&PathTemplate::never()));
    }

    #[test]
    fn parse_params() {
        let params = PathParams(vec![
            (Arc::from("n"), "12".to_owned()),
            (Arc::from("s"), "x".to_owned()),
        ]);
        assert_eq!(params.parse::<u32>("n").ok(), Some(12));
        assert_eq!(
            params.parse::<u32>("s").err().map(|e| e.code),
            Some("invalid_path_parameter")
        );
        assert_eq!(
            params.get("missing").err().map(|e| e.status),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
    }
}
