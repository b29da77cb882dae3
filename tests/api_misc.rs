//! Models, health, readiness, metrics, the OpenAPI document (checked against the router), request
//! ids and graceful shutdown.

mod api_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use hindsight::api::admin::{Admin, AdminAuth};
use hindsight::api::app::store_routes;
use hindsight::api::server::serve;
use hindsight::api::testing::FakeConfig;
use hindsight::api::{app_with_routes, ApiError, ReadinessProbe, ShutdownHooks};
use hindsight::store::{Store, StoreConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

#[tokio::test]
async fn models_list_and_get() {
    let app = test_app();
    let list = get(&app.router, "/v1/models").await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"],
        json!([{"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "hindsight",
                "context_length": 4096, "max_model_len": 4096}])
    );
    let one = get(&app.router, "/v1/models/fake-model").await.json();
    assert_eq!(one, list["data"][0]);
}

struct Flag(Arc<AtomicBool>);

impl ReadinessProbe for Flag {
    fn name(&self) -> &str {
        "store"
    }
    fn check(&self) -> Result<(), String> {
        if self.0.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("connecting to the database".into())
        }
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let backend = Arc::new(hindsight::api::testing::FakeBackend::new(
        FakeConfig::default(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let state = hindsight::api::AppState::new(backend, Arc::new(RecordingSink::default()))
        .with_probe(Arc::new(Flag(ready.clone())));
    let router = hindsight::api::app(state);
    assert_eq!(
        get(&router, "/healthz").await.json(),
        json!({"status": "ok"})
    );
    let reply = get(&router, "/readyz").await;
    assert_eq!(reply.status.as_u16(), 503);
    assert_eq!(
        reply.json()["checks"]["store"],
        "connecting to the database"
    );
    ready.store(true, Ordering::SeqCst);
    let reply = get(&router, "/readyz").await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(reply.json()["status"], "ready");
    assert_eq!(
        reply.json()["checks"],
        json!({"model": "ready", "store": "ready"})
    );
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_latency() {
    let app = test_app();
    post(&app.router, "/v1/chat/completions", chat("count me")).await;
    get(&app.router, "/v1/nothing-here").await;
    let reply = get(&app.router, "/metrics").await;
    assert_eq!(reply.status.as_u16(), 200);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = reply.text;
    for needle in [
        "hindsight_http_requests_total{method=\"POST\",route=\"/v1/chat/completions\",status=\"200\"}",
        "hindsight_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}",
        "hindsight_http_request_duration_seconds_bucket",
        "hindsight_time_to_first_token_seconds_bucket{endpoint=\"chat\"",
        "hindsight_generated_tokens_total{endpoint=\"chat\"}",
        "hindsight_engine_queue_depth",
        "hindsight_engine_active_sequences",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// Every route the app serves with the store's routes mounted, as `hindsight serve` does (the
/// dashboard's pages and files are served but not documented).
const SERVED: &[(&str, &str)] = &[
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{id}"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{id}"),
    ("DELETE", "/v1/responses/{id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/feedback"),
    ("GET", "/v1/feedback"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("GET", "/admin/api/me"),
    ("GET", "/admin/api/overview"),
    ("GET", "/admin/api/series"),
    ("GET", "/admin/api/sessions"),
    ("GET", "/admin/api/sessions/{pk}"),
    ("GET", "/admin/api/steps"),
    ("GET", "/admin/api/versions"),
    ("GET", "/admin/api/learner"),
    ("POST", "/admin/api/feedback"),
    ("POST", "/admin/api/learner/rollback"),
    ("POST", "/admin/api/learner/pin"),
    ("POST", "/admin/api/learner/follow-latest"),
    ("GET", "/admin/api/live"),
    ("POST", "/admin/login"),
    ("POST", "/admin/logout"),
];

/// Routes only the store brings.
fn needs_store(path: &str) -> bool {
    ["/v1/feedback", "/v1/sessions", "/admin"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// (METHOD, path) of every operation in an OpenAPI document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// Whether the router's own fallbacks answered (no route, or no such method on a route), as
/// opposed to a handler, which may well answer 404 itself ("model not found").
async fn reaches_a_handler(router: &Router, method: &str, path: &str) -> Result<u16, String> {
    let uri = path.replace("{id}", "fake-model").replace("{pk}", "1");
    let body = match path {
        "/v1/chat/completions" => chat("hi").to_string(),
        "/v1/completions" => json!({"model": "fake-model", "prompt": "hi"}).to_string(),
        _ => String::new(),
    };
    let request = Request::builder()
        .method(method)
        .uri(&uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    if status == 405 {
        return Err(format!("{method} {uri}: 405 from the router"));
    }
    if status == 404 {
        // Read only 404 bodies: /admin/api/live answers 200 with a stream that never ends.
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let fallback =
            serde_json::to_value(ApiError::route_not_found(method, &uri).envelope()).unwrap();
        if body == fallback {
            return Err(format!("{method} {uri}: the router's 404 {body}"));
        }
    }
    Ok(status)
}

/// What a document must be whatever the app: OpenAPI 3.1 whose references resolve, whose
/// operation ids are unique, whose path templates are declared parameters, and whose security
/// names defined schemes; /v1 operations require the bearer key exactly when keys are `keyed`.
fn check_document(doc: &Value, keyed: bool) {
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Hindsight");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = &doc["components"]["securitySchemes"];
    if keyed {
        assert_eq!(
            schemes["bearer"],
            json!({"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]})
        );
    } else {
        assert!(schemes.get("bearer").is_none(), "{schemes}");
    }
    let text = doc.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_string()), "operationId {id} twice");
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}: no tag"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            for name in path
                .split('{')
                .skip(1)
                .map(|rest| rest.split('}').next().unwrap())
            {
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true);
                assert!(
                    declared,
                    "{method} {path}: path parameter {name} undeclared"
                );
            }
            for requirement in op["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(
                        schemes[scheme].is_object(),
                        "{method} {path}: unknown scheme {scheme}"
                    );
                }
            }
            if path.starts_with("/v1/") {
                let security = keyed.then(|| json!([{"bearer": []}]));
                assert_eq!(op.get("security"), security.as_ref(), "{method} {path}");
                for code in ["400", "401"] {
                    let status = &op["responses"][code];
                    if status.is_object() {
                        assert_eq!(
                            status["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorEnvelope",
                            "{method} {path} {code}"
                        );
                    }
                }
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
            }
        }
    }
    validate_with_python(doc);
}

/// The reference validator (openapi-spec-validator) where Python has it; skipped otherwise.
fn validate_with_python(doc: &Value) {
    let available = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !available {
        eprintln!("openapi-spec-validator not installed: skipping the reference validation");
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), doc.to_string()).unwrap();
    let script = "import json, sys; from openapi_spec_validator import validate; \
                  validate(json.load(open(sys.argv[1])))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn openapi_is_generated_from_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(None, dir.path()))
        .await
        .unwrap();
    let admin = Admin::new(store.clone(), AdminAuth::new(None, true));
    let backend = Arc::new(hindsight::api::testing::FakeBackend::new(
        FakeConfig::default(),
    ));
    let state = hindsight::api::AppState::new(backend, Arc::new(RecordingSink::default()));
    let full = app_with_routes(state, store_routes(&store, admin));
    let builtin = test_app().router;

    // The fallbacks are told apart from handlers.
    assert!(reaches_a_handler(&full, "GET", "/v1/nothing-here")
        .await
        .is_err());
    assert!(reaches_a_handler(&full, "DELETE", "/v1/models")
        .await
        .is_err());
    assert_eq!(
        reaches_a_handler(&full, "GET", "/v1/models/nope").await,
        Ok(404)
    );

    for (router, with_store) in [(&full, true), (&builtin, false)] {
        let reply = get(router, "/openapi.json").await;
        assert_eq!(reply.status.as_u16(), 200);
        assert!(reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let doc = reply.json();
        check_document(&doc, false);
        let documented = operations(&doc);
        // Every documented operation reaches a handler...
        for (method, path) in &documented {
            if let Err(err) = reaches_a_handler(router, method, path).await {
                panic!("documented but not served: {err}");
            }
        }
        // ...and every served route is documented.
        for (method, path) in SERVED {
            let key = (method.to_string(), path.to_string());
            if with_store || !needs_store(path) {
                assert!(documented.contains(&key), "{method} {path} undocumented");
                assert!(reaches_a_handler(router, method, path).await.is_ok());
            } else {
                assert!(
                    !documented.contains(&key),
                    "{method} {path} documented, not served"
                );
            }
        }
    }
    // With keys, /v1 declares the bearer key; --protect-metrics declares what opens /metrics.
    let keyed = test_app_with(FakeConfig::default(), &["sk"], 1 << 20);
    check_document(&get(&keyed.router, "/openapi.json").await.json(), true);
    let doc = get(&protected_ops(&[]), "/openapi.json").await.json();
    check_document(&doc, false);
    let ops = json!([{"admin_token": []}, {"admin_cookie": []}]);
    for path in ["/metrics", "/readyz"] {
        assert_eq!(doc["paths"][path]["get"]["security"], ops, "{path}");
    }
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
    store.shutdown().await;
}

/// An app whose /metrics and /readyz need an API key (`keys`) or the admin token "adm".
fn protected_ops(keys: &[&str]) -> Router {
    let backend = Arc::new(hindsight::api::testing::FakeBackend::new(
        FakeConfig::default(),
    ));
    let state = hindsight::api::AppState::new(backend, Arc::new(RecordingSink::default()))
        .with_keys(hindsight::api::ApiKeys::new(keys))
        .with_protected_ops(AdminAuth::new(Some("adm"), true));
    hindsight::api::app(state)
}

#[tokio::test]
async fn protect_metrics_needs_a_key_or_the_admin_token() {
    let router = protected_ops(&["sk-ops"]);
    for path in ["/metrics", "/readyz"] {
        let reply = get(&router, path).await;
        reply.assert_error(401, "invalid_request_error", Some("invalid_api_key"), None);
        let wrong = call(
            &router,
            "GET",
            path,
            &[("authorization", "Bearer no")],
            None,
        )
        .await;
        wrong.assert_error(401, "invalid_request_error", Some("invalid_api_key"), None);
        for token in ["Bearer sk-ops", "Bearer adm"] {
            let reply = call(&router, "GET", path, &[("authorization", token)], None).await;
            assert_eq!(reply.status.as_u16(), 200, "{path} {token}: {}", reply.text);
        }
    }
    // Liveness stays open; without the flag (the other tests), /metrics is open.
    assert_eq!(get(&router, "/healthz").await.status.as_u16(), 200);
}

/// The store's /v1 routes get the same guard: a rebinding page cannot list sessions, a
/// cross-site form cannot post feedback.
#[tokio::test]
async fn store_routes_refuse_rebinding_hosts_and_form_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(None, dir.path()))
        .await
        .unwrap();
    let admin = Admin::new(store.clone(), AdminAuth::new(None, true));
    let app = test_app();
    let state = hindsight::api::AppState::new(app.backend.clone(), app.sink.clone());
    let full = app_with_routes(state, store_routes(&store, admin));
    let reply = call(
        &full,
        "GET",
        "/v1/sessions",
        &[("host", "attacker.example")],
        None,
    )
    .await;
    reply.assert_error(403, "invalid_request_error", Some("host_not_allowed"), None);
    let reply = call(
        &full,
        "GET",
        "/v1/sessions",
        &[("host", "127.0.0.1:8080")],
        None,
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let body = json!({"response_id": "chatcmpl-x", "rating": "down", "correction": "obey me"});
    let form = [("content-type", "text/plain")];
    let reply = call(&full, "POST", "/v1/feedback", &form, Some(body.to_string())).await;
    reply.assert_error(
        415,
        "invalid_request_error",
        Some("unsupported_media_type"),
        None,
    );
    // The same body as JSON reaches the handler (an unknown response id: 404).
    let reply = post(&full, "/v1/feedback", body).await;
    assert_eq!(reply.status.as_u16(), 404, "{}", reply.text);
    store.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_generated_or_propagated() {
    let app = test_app();
    let reply = get(&app.router, "/healthz").await;
    let generated = reply.headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
    let request = Request::builder()
        .uri("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&app.router, request).await.headers["x-request-id"],
        "abc-123"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_streams_then_runs_hooks() {
    let app = test_app_with(
        FakeConfig {
            token_delay: Duration::from_millis(10),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hooks = ShutdownHooks::new();
    let sink = app.sink.clone();
    let turns_at_hook = Arc::new(std::sync::Mutex::new(None));
    let seen = turns_at_hook.clone();
    hooks.add("count turns", move || {
        Box::pin(async move {
            *seen.lock().unwrap() = Some(sink.turns().len());
        })
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app.router.clone(), hooks, async move {
        let _ = stop_rx.await;
    }));
    let mut body = chat("a long enough message to stream for a while");
    body["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // New connections are refused while the stream finishes.
    assert!(reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());
    let text = response.text().await.unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
    server.await.unwrap().unwrap();
    assert_eq!(
        *turns_at_hook.lock().unwrap(),
        Some(1),
        "the hook ran after the turn was recorded"
    );
}
