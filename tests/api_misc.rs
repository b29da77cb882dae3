//! Models, health, readiness, metrics, the OpenAPI document, request ids and graceful shutdown.

mod api_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use axum::body::Body;
use axum::http::Request;
use hindsight::api::openapi::documented_routes;
use hindsight::api::server::serve;
use hindsight::api::testing::FakeConfig;
use hindsight::api::{ReadinessProbe, ShutdownHooks};
use serde_json::json;

#[tokio::test]
async fn models_list_and_get() {
    let app = test_app();
    let list = get(&app.router, "/v1/models").await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"],
        json!([{"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "hindsight"}])
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

#[tokio::test]
async fn openapi_describes_exactly_what_is_served() {
    let app = test_app();
    let doc = get(&app.router, "/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = documented_routes();
    let served = [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{id}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ];
    for (method, path) in served {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} undocumented"
        );
    }
    assert_eq!(documented.len(), served.len(), "{documented:?}");
    for (method, path) in documented {
        let uri = path.replace("{id}", "fake-model");
        let body = match path.as_str() {
            "/v1/chat/completions" => Body::from(chat("hi").to_string()),
            "/v1/completions" => {
                Body::from(json!({"model": "fake-model", "prompt": "hi"}).to_string())
            }
            _ => Body::empty(),
        };
        let request = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .body(body)
            .unwrap();
        let reply = send(&app.router, request).await;
        assert!(
            reply.status.is_success(),
            "{method} {uri}: {}",
            reply.status
        );
    }
    // Every $ref points at a defined schema.
    let text = doc.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
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
