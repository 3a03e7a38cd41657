//! CONTRACTS.md, "HTTP": a test fails when a route exists that the OpenAPI document lacks, or
//! the other way round. Checked three ways against the served document: its (method, path)
//! pairs equal the route table's; every table entry is answered by the running filter tree (not
//! 404, not 405); and every `$ref` in it resolves. Plus the table's own refusals.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{TestServer, body_json, test_table};
use gatehouse_api::routing::document_entries;
use gatehouse_api::{
    ApiConfig, ApiState, Check, Outcome, Route, RouteError, RouteTable, route_table,
};
use warp::Filter;

fn production_table() -> RouteTable {
    let state = ApiState {
        readiness: Arc::new(Vec::<Check>::new),
        // The application routes need a fleet and a store; their parity is checked where
        // those exist (tests/tests/rest_api.rs).
        app: None,
        // Served, so that the probe of `/metrics` reaches its handler (off, it answers 404).
        metrics: Some(gatehouse_api::metrics::MetricsExport {
            render: Arc::new(String::new),
            token: None,
        }),
        console: Default::default(),
    };
    route_table(&state).expect("the production table is valid")
}

/// A concrete path for a template: every `{param}` becomes `1`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn collect_refs(value: &serde_json::Value, refs: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", serde_json::Value::String(target)) => {
                        refs.insert(target.clone());
                    }
                    _ => collect_refs(value, refs),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_refs(item, refs)),
        _ => {}
    }
}

async fn check_parity(table: RouteTable) {
    let entries: Vec<(String, String)> = table
        .entries()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_owned(), path))
        .collect();
    assert!(entries.contains(&("GET".to_owned(), "/api/v1/openapi.json".to_owned())));
    let mut server = TestServer::start(ApiConfig::default(), table).await;

    let response = server
        .client
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let document = body_json(response).await;
    let version = document["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi version {version:?}");

    // Same routes in the document and the table, both ways.
    let documented = document_entries(&document);
    let only_served: Vec<_> = entries.iter().filter(|e| !documented.contains(e)).collect();
    let only_documented: Vec<_> = documented.iter().filter(|e| !entries.contains(e)).collect();
    assert!(
        only_served.is_empty(),
        "served but not documented: {only_served:?}"
    );
    assert!(
        only_documented.is_empty(),
        "documented but not served: {only_documented:?}"
    );

    // Every entry reaches its endpoint through the running filter tree.
    for (method, path) in &entries {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = server
            .client
            .request(method.clone(), server.url(&concrete(path)))
            .send()
            .await
            .expect("answer");
        let status = response.status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path} answered {status}: not routed"
        );
    }

    // Every reference resolves within the document.
    let mut refs = BTreeSet::new();
    collect_refs(&document, &mut refs);
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external reference {reference}"));
        assert!(
            document.pointer(pointer).is_some(),
            "dangling reference {reference}"
        );
    }
    assert!(
        document
            .pointer("/components/schemas/ErrorEnvelope")
            .is_some()
    );
    server.stop().await;
}

#[tokio::test]
async fn production_routes_match_the_document() {
    let table = production_table();
    // Every production operation is grouped under a tag (the annotation's `tag = ...`).
    let document = serde_json::to_value(table.document()).expect("document serializes");
    for (method, path) in document_entries(&document) {
        let tags = &document["paths"][&path][method.to_ascii_lowercase()]["tags"];
        assert!(
            tags.as_array().is_some_and(|tags| !tags.is_empty()),
            "{method} {path} has no tag"
        );
    }
    check_parity(table).await;
}

#[tokio::test]
async fn test_routes_match_the_document() {
    check_parity(test_table()).await;
}

#[utoipa::path(get, path = "/api/v1/things/{thing}", params(("thing" = String, Path)), responses((status = 200)))]
async fn thing() -> Outcome {
    Err(gatehouse_api::ApiError::not_found("no thing"))
}

#[utoipa::path(get, path = "/api/v1/things/search", responses((status = 200)))]
async fn search() -> Outcome {
    Err(gatehouse_api::ApiError::not_found("nothing"))
}

#[utoipa::path(get, path = "/api/v1/undocumented/{param}", responses((status = 200)))]
async fn undocumented_param() -> Outcome {
    Err(gatehouse_api::ApiError::not_found("nothing"))
}

#[utoipa::path(get, path = "/elsewhere", responses((status = 200)))]
async fn elsewhere() -> Outcome {
    Err(gatehouse_api::ApiError::not_found("nothing"))
}

#[utoipa::path(get, path = "/api/v1/bad//path", responses((status = 200)))]
async fn bad_path() -> Outcome {
    Err(gatehouse_api::ApiError::not_found("nothing"))
}

#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "again", responses((status = 200)))]
async fn duplicate() -> Outcome {
    Err(gatehouse_api::ApiError::not_found("nothing"))
}

#[test]
fn the_table_refuses_mistakes() {
    let refused = |routes: Vec<Route>| RouteTable::new(routes).err();

    let overlap = refused(vec![
        Route::new::<__path_thing, _>(|_| warp::any().then(thing)),
        Route::new::<__path_search, _>(|_| warp::any().then(search)),
    ]);
    assert!(
        matches!(overlap, Some(RouteError::Overlap { .. })),
        "{overlap:?}"
    );

    let undocumented = refused(vec![Route::new::<__path_undocumented_param, _>(|_| {
        warp::any().then(undocumented_param)
    })]);
    assert!(
        matches!(undocumented, Some(RouteError::Parameter { .. })),
        "{undocumented:?}"
    );

    let outside = refused(vec![Route::new::<__path_elsewhere, _>(|_| {
        warp::any().then(elsewhere)
    })]);
    assert!(
        matches!(outside, Some(RouteError::OutsidePrefix { .. })),
        "{outside:?}"
    );

    let bad = refused(vec![Route::new::<__path_bad_path, _>(|_| {
        warp::any().then(bad_path)
    })]);
    assert!(
        matches!(bad, Some(RouteError::InvalidPath { .. })),
        "{bad:?}"
    );

    // The document's own route is added by the table; a second one is an overlap.
    let twice = refused(vec![Route::new::<__path_duplicate, _>(|_| {
        warp::any().then(duplicate)
    })]);
    assert!(
        matches!(twice, Some(RouteError::Overlap { .. })),
        "{twice:?}"
    );
}
