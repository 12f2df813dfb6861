//! `docs/openapi.yaml` against the router: every served route is documented, every
//! documented operation is served, and answers carry the documented required fields.

use std::collections::BTreeSet;

use super::*;

const OPENAPI: &str = include_str!("../../../../../docs/openapi.yaml");
/// The files whose `.route(...)` calls make up the router.
const ROUTER_SOURCES: [&str; 3] = [
    include_str!("../../api.rs"),
    include_str!("../../secrets_api.rs"),
    include_str!("../../volumes_api.rs"),
];

fn document() -> Value {
    serde_norway::from_str(OPENAPI).unwrap()
}

/// Every (METHOD, path) the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// Every (METHOD, path) `router` registers, read from its `.route(...)` calls (axum cannot
/// list a router's routes).
fn served() -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    let calls = ROUTER_SOURCES
        .iter()
        .flat_map(|source| source.split(".route(").skip(1));
    for call in calls {
        let (path, rest) = call
            .trim_start()
            .strip_prefix('"')
            .and_then(|c| c.split_once('"'))
            .unwrap();
        let handlers = rest.split_once(")\n").map_or(rest, |(h, _)| h);
        for method in ["get", "post", "put", "delete", "patch"] {
            let calls = handlers.matches(&format!("{method}(")).count()
                - handlers.matches(&format!("_{method}(")).count();
            if calls > 0 {
                operations.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    operations
}

/// Follows a `$ref` into the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').unwrap();
            resolve(doc, doc.pointer(pointer).unwrap())
        }
        None => schema,
    }
}

/// The 200/201 JSON schema of an operation.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &doc["paths"][path][method];
    let responses = operation["responses"].as_object().unwrap();
    let ok = responses
        .iter()
        .find(|(code, _)| code.starts_with('2'))
        .unwrap()
        .1;
    resolve(doc, &ok["content"]["application/json"]["schema"])
}

/// Checks that `value` has every field `schema` requires, recursing into arrays and
/// object properties that are present.
fn check_required(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(all_of) = schema["allOf"].as_array() {
        if !value.is_null() {
            for part in all_of {
                check_required(doc, part, value, at);
            }
        }
        return;
    }
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_required(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Value::Object(fields) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap();
                assert!(fields.contains_key(name), "{at} lacks `{name}`: {value}");
            }
            for (name, field) in fields {
                if let Some(property) = schema["properties"].get(name) {
                    check_required(doc, property, field, &format!("{at}.{name}"));
                }
            }
        }
        _ => {}
    }
}

#[test]
fn every_served_route_is_documented_and_every_documented_one_served() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let served = served();
    assert!(served.len() >= 10, "routes read from api.rs: {served:?}");
    let documented = documented(&doc);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/openapi.yaml: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not routed: {unserved:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn every_documented_operation_answers() {
    let doc = document();
    let api = api();
    api.seed(2, 2, &[]).await;
    for (method, path) in documented(&doc) {
        let uri = path.replace("{app}", "shop");
        let body = (method != "GET").then_some("{}");
        let (status, answer) = api.call(&method, &uri, body, Some(TOKEN)).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !(status == StatusCode::NOT_FOUND && answer["error"] == "no such API endpoint"),
            "{method} {path} is not routed"
        );
        let documented_codes: Vec<&String> = doc["paths"][&path][method.to_lowercase()]
            ["responses"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert!(
            documented_codes.contains(&&status.as_str().to_owned()),
            "{method} {path} answered {status}, documented: {documented_codes:?}"
        );
        let (status, _) = api.call(&method, &uri, body, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        // A method the document gives no path is refused.
        let (status, _) = api.call("PATCH", &uri, None, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "PATCH {path}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn answers_have_the_documented_required_fields() {
    let doc = document();
    let api = api();
    api.seed(2, 2, &[]).await;
    api.post(
        "/v1/apps/shop/scale",
        r#"{"service": "web", "replicas": 2}"#,
    )
    .await;
    // Events are stored in the background.
    for _ in 0..200 {
        let (_, events) = api.get("/v1/apps/shop/events").await;
        if !events.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let checks = [
        ("get", "/v1/apps", "/v1/apps"),
        ("get", "/v1/apps/{app}", "/v1/apps/shop"),
        ("get", "/v1/apps/{app}/releases", "/v1/apps/shop/releases"),
        ("get", "/v1/apps/{app}/events", "/v1/apps/shop/events"),
    ];
    for (method, path, uri) in checks {
        let (status, answer) = api.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {answer}");
        check_required(&doc, response_schema(&doc, method, path), &answer, uri);
    }
    let (status, answer) = api.post("/v1/apps/shop/rollback", "").await;
    assert_eq!(status, StatusCode::OK);
    let schema = response_schema(&doc, "post", "/v1/apps/{app}/rollback");
    check_required(&doc, schema, &answer, "rollback");
    assert!(!answer["from"].is_null());
}
