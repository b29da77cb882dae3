//! Shared helpers of the HTTP-layer tests: an app on the fake backend, a recording turn sink,
//! one-shot calls and a real TCP server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use hindsight::api::testing::{FakeBackend, FakeConfig};
use hindsight::api::{app, ApiKeys, AppState, ServerConfig};
use hindsight::store::{CapturedTurn, TurnSink};
use serde_json::{json, Value};
use tower::ServiceExt;

#[derive(Default)]
pub struct RecordingSink(Mutex<Vec<CapturedTurn>>);

impl TurnSink for RecordingSink {
    fn record(&self, turn: CapturedTurn) {
        self.0.lock().unwrap().push(turn);
    }
}

impl RecordingSink {
    pub fn turns(&self) -> Vec<CapturedTurn> {
        self.0.lock().unwrap().clone()
    }
}

pub struct TestApp {
    pub router: Router,
    pub backend: Arc<FakeBackend>,
    pub sink: Arc<RecordingSink>,
}

pub fn test_app_with(config: FakeConfig, keys: &[&str], max_body_bytes: usize) -> TestApp {
    let backend = Arc::new(FakeBackend::new(config));
    let sink = Arc::new(RecordingSink::default());
    let state = AppState::new(backend.clone(), sink.clone())
        .with_keys(ApiKeys::new(keys))
        .with_config(ServerConfig { max_body_bytes });
    TestApp {
        router: app(state),
        backend,
        sink,
    }
}

pub fn test_app() -> TestApp {
    test_app_with(FakeConfig::default(), &[], 8 * 1024 * 1024)
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text))
    }

    /// Asserts OpenAI's error envelope with this status, type, code and param.
    pub fn assert_error(&self, status: u16, kind: &str, code: Option<&str>, param: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert_eq!(error["type"], kind, "{body}");
        assert_eq!(error["code"], json!(code), "{body}");
        assert_eq!(error["param"], json!(param), "{body}");
        let keys: Vec<&String> = error.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "exactly message/type/param/code: {body}");
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn post(router: &Router, path: &str, body: Value) -> Reply {
    post_raw(router, path, body.to_string(), &[]).await
}

pub async fn post_raw(
    router: &Router,
    path: &str,
    body: String,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(router, builder.body(Body::from(body)).unwrap()).await
}

/// A request with exactly these headers (no Content-Type unless given).
pub async fn call(
    router: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = body.map(Body::from).unwrap_or_else(Body::empty);
    send(router, builder.body(body).unwrap()).await
}

pub async fn get(router: &Router, path: &str) -> Reply {
    send(
        router,
        Request::builder().uri(path).body(Body::empty()).unwrap(),
    )
    .await
}

pub fn chat(content: &str) -> Value {
    json!({"model": "fake-model", "temperature": 0, "messages": [{"role": "user", "content": content}]})
}

/// The server still answers normally after a failure.
pub async fn assert_still_serving(router: &Router) {
    let reply = post(router, "/v1/chat/completions", chat("still there?")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "You said: still there?"
    );
}

pub async fn spawn_server(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            line.strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
        })
        .map(str::to_string)
        .collect()
}

/// The JSON chunks of an SSE body (without `[DONE]`).
pub fn sse_chunks(text: &str) -> Vec<Value> {
    sse_data(text)
        .iter()
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}
