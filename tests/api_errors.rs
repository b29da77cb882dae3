//! Every bad input gets OpenAI's error envelope with the right status, type, code and param,
//! and the server keeps serving afterwards.

mod api_support;

use std::time::Duration;

use api_support::*;
use hindsight::api::testing::FakeConfig;
use serde_json::{json, Value};

const INVALID: &str = "invalid_request_error";

fn with(field: &str, value: Value) -> Value {
    let mut body = chat("hi");
    body[field] = value;
    body
}

#[tokio::test]
async fn out_of_range_and_wrong_typed_fields_name_the_param() {
    let app = test_app();
    let cases: Vec<(Value, &str)> = vec![
        (with("temperature", json!(2.5)), "temperature"),
        (with("temperature", json!(-0.1)), "temperature"),
        (with("temperature", json!("hot")), "temperature"),
        (with("top_p", json!(1.5)), "top_p"),
        (with("n", json!(0)), "n"),
        (with("n", json!(129)), "n"),
        (with("n", json!(-1)), "n"),
        (with("n", json!(1.5)), "n"),
        (with("max_tokens", json!(0)), "max_tokens"),
        (
            with("max_completion_tokens", json!(0)),
            "max_completion_tokens",
        ),
        (with("max_tokens", json!("many")), "max_tokens"),
        (with("presence_penalty", json!(-2.5)), "presence_penalty"),
        (with("frequency_penalty", json!(3)), "frequency_penalty"),
        (with("stop", json!(["a", "b", "c", "d", "e"])), "stop"),
        (with("stop", json!(42)), "stop"),
        (with("stop", json!([""])), "stop"),
        (with("stop", json!(["ok", 1])), "stop"),
        (with("seed", json!("abc")), "seed"),
        (
            with("logprobs", json!(true)).merged("top_logprobs", json!(21)),
            "top_logprobs",
        ),
        (with("top_logprobs", json!(3)), "top_logprobs"),
        (with("stream", json!("yes")), "stream"),
        (
            with("stream_options", json!({"include_usage": true})),
            "stream_options",
        ),
        (with("messages", json!([])), "messages"),
        (with("messages", json!("hello")), "messages"),
        (
            with("messages", json!([{"content": "no role"}])),
            "messages[0].role",
        ),
        (
            with("messages", json!([{"role": "wizard", "content": "x"}])),
            "messages[0].role",
        ),
        (
            with("messages", json!([{"role": "user", "content": 5}])),
            "messages[0].content",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
            ),
            "messages[0].content[0].type",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": "a"}, {"role": "tool", "content": "42"}]),
            ),
            "messages[1].tool_call_id",
        ),
        (
            with("messages", json!([{"role": "assistant"}])),
            "messages[0].content",
        ),
        (
            with(
                "tools",
                json!([{"type": "retrieval", "function": {"name": "f"}}]),
            ),
            "tools[0].type",
        ),
        (
            with("tools", json!([{"type": "function"}])),
            "tools[0].function",
        ),
        (with("tool_choice", json!("required")), "tool_choice"),
        (with("tool_choice", json!("sometimes")), "tool_choice"),
        (
            with(
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            )
            .merged(
                "tool_choice",
                json!({"type": "function", "function": {"name": "g"}}),
            ),
            "tool_choice",
        ),
        (
            with("response_format", json!({"type": "xml"})),
            "response_format.type",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
    ];
    for (body, param) in cases {
        let reply = post(&app.router, "/v1/chat/completions", body.clone()).await;
        assert_eq!(reply.status.as_u16(), 400, "{body} → {}", reply.text);
        let error = &reply.json()["error"];
        assert_eq!(error["type"], INVALID, "{body} → {}", reply.text);
        assert_eq!(error["param"], param, "{body} → {}", reply.text);
    }
    assert!(
        app.backend.requests().is_empty(),
        "nothing invalid reached the engine"
    );
    assert_still_serving(&app.router).await;
}

trait Merge {
    fn merged(self, field: &str, value: Value) -> Value;
}

impl Merge for Value {
    fn merged(mut self, field: &str, value: Value) -> Value {
        self[field] = value;
        self
    }
}

#[tokio::test]
async fn image_parts_are_refused_with_a_clear_message() {
    let app = test_app();
    let body = with(
        "messages",
        json!([{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
    );
    let reply = post(&app.router, "/v1/chat/completions", body).await;
    reply.assert_error(
        400,
        INVALID,
        Some("invalid_value"),
        Some("messages[0].content[1].type"),
    );
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("text only"));
    assert_still_serving(&app.router).await;
}

#[tokio::test]
async fn malformed_json_and_non_object_bodies() {
    let app = test_app();
    for body in [
        "{\"model\": ",
        "not json",
        "[1,2]",
        "",
        "{\"model\":\"fake-model\"} extra",
    ] {
        let reply = post_raw(&app.router, "/v1/chat/completions", body.into(), &[]).await;
        assert_eq!(reply.status.as_u16(), 400, "{body:?} → {}", reply.text);
        assert_eq!(reply.json()["error"]["type"], INVALID);
    }
    let reply = post_raw(&app.router, "/v1/completions", "{oops".into(), &[]).await;
    reply.assert_error(400, INVALID, None, None);
    assert_still_serving(&app.router).await;
}

#[tokio::test]
async fn unknown_model_route_and_method() {
    let app = test_app();
    let reply = post(
        &app.router,
        "/v1/chat/completions",
        with("model", json!("gpt-4o")),
    )
    .await;
    reply.assert_error(404, INVALID, Some("model_not_found"), Some("model"));
    let reply = post(
        &app.router,
        "/v1/completions",
        json!({"model": "nope", "prompt": "hi"}),
    )
    .await;
    reply.assert_error(404, INVALID, Some("model_not_found"), Some("model"));
    let reply = get(&app.router, "/v1/models/nope").await;
    reply.assert_error(404, INVALID, Some("model_not_found"), Some("model"));
    let reply = get(&app.router, "/v1/embeddings").await;
    reply.assert_error(404, INVALID, None, None);
    let reply = get(&app.router, "/v1/chat/completions").await;
    reply.assert_error(405, INVALID, Some("method_not_allowed"), None);
    let reply = post(&app.router, "/v1/models", json!({})).await;
    reply.assert_error(405, INVALID, Some("method_not_allowed"), None);
    assert_still_serving(&app.router).await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = test_app_with(FakeConfig::default(), &[], 1024);
    let body = chat(&"x".repeat(4096)).to_string();
    let reply = post_raw(&app.router, "/v1/chat/completions", body, &[]).await;
    reply.assert_error(413, INVALID, Some("payload_too_large"), None);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1024"));
    assert_still_serving(&app.router).await;
}

#[tokio::test]
async fn full_queue_gives_429_with_retry_after() {
    let app = test_app_with(
        FakeConfig {
            max_in_flight: Some(1),
            token_delay: Duration::from_millis(20),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let router = app.router.clone();
    let slow =
        tokio::spawn(async move { post(&router, "/v1/chat/completions", chat("slow")).await });
    while app.backend.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let reply = post(&app.router, "/v1/chat/completions", chat("refused")).await;
    reply.assert_error(429, "rate_limit_error", Some("rate_limit_exceeded"), None);
    assert_eq!(reply.headers["retry-after"], "1");
    // n=2 with room for one: the first choice is cancelled when the second is refused.
    assert_eq!(slow.await.unwrap().status.as_u16(), 200);
    let reply = post(&app.router, "/v1/chat/completions", with("n", json!(2))).await;
    assert_eq!(reply.status.as_u16(), 429, "{}", reply.text);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        app.backend.in_flight(),
        0,
        "the queued first choice was cancelled"
    );
    assert_still_serving(&app.router).await;
}

#[tokio::test]
async fn context_too_long_is_400_context_length_exceeded() {
    let app = test_app_with(
        FakeConfig {
            context_length: 64,
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let reply = post(
        &app.router,
        "/v1/chat/completions",
        chat(&"long ".repeat(30)),
    )
    .await;
    reply.assert_error(
        400,
        INVALID,
        Some("context_length_exceeded"),
        Some("messages"),
    );
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("64"));
    let reply = post(
        &app.router,
        "/v1/chat/completions",
        with("max_tokens", json!(60)),
    )
    .await;
    reply.assert_error(
        400,
        INVALID,
        Some("context_length_exceeded"),
        Some("messages"),
    );
    let reply = post(
        &app.router,
        "/v1/completions",
        json!({"model": "fake-model", "prompt": "x".repeat(80)}),
    )
    .await;
    reply.assert_error(
        400,
        INVALID,
        Some("context_length_exceeded"),
        Some("messages"),
    );
    let reply = post(&app.router, "/v1/chat/completions", chat("ok")).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
}

#[tokio::test]
async fn engine_failure_is_a_500_without_internals() {
    let app = test_app_with(
        FakeConfig {
            fail_after_tokens: Some(2),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let reply = post(&app.router, "/v1/chat/completions", chat("boom")).await;
    reply.assert_error(500, "server_error", None, None);
    assert!(
        !reply.text.contains("fake engine failure"),
        "{}",
        reply.text
    );
    assert!(
        app.sink.turns().is_empty(),
        "failed responses are not recorded"
    );
}

#[tokio::test]
async fn auth_missing_or_wrong_key_is_401_and_right_key_passes() {
    let app = test_app_with(FakeConfig::default(), &["sk-right"], 1 << 20);
    let body = chat("hi").to_string();
    let reply = post_raw(&app.router, "/v1/chat/completions", body.clone(), &[]).await;
    reply.assert_error(401, INVALID, Some("invalid_api_key"), None);
    for header in ["Bearer sk-wrong", "Bearer ", "Basic sk-right", "sk-right"] {
        let reply = post_raw(
            &app.router,
            "/v1/chat/completions",
            body.clone(),
            &[("authorization", header)],
        )
        .await;
        reply.assert_error(401, INVALID, Some("invalid_api_key"), None);
    }
    let reply = get(&app.router, "/v1/models").await;
    reply.assert_error(401, INVALID, Some("invalid_api_key"), None);
    assert!(app.backend.requests().is_empty());
    // Operational routes stay open.
    assert_eq!(get(&app.router, "/healthz").await.status.as_u16(), 200);
    let reply = post_raw(
        &app.router,
        "/v1/chat/completions",
        body,
        &[("authorization", "Bearer sk-right")],
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let turns = app.sink.turns();
    assert_eq!(turns.len(), 1);
    let key_id = hindsight::api::ApiKeys::key_id("sk-right");
    assert_eq!(key_id.len(), 16);
    assert_eq!(turns[0].api_key_id.as_deref(), Some(key_id.as_str()));
}

#[tokio::test]
async fn bad_session_headers_are_400() {
    let app = test_app();
    let body = chat("hi").to_string();
    let reply = post_raw(
        &app.router,
        "/v1/chat/completions",
        body.clone(),
        &[("x-turn-type", "sideways")],
    )
    .await;
    reply.assert_error(400, INVALID, Some("invalid_value"), Some("X-Turn-Type"));
    let reply = post_raw(
        &app.router,
        "/v1/chat/completions",
        body,
        &[("x-session-done", "maybe")],
    )
    .await;
    reply.assert_error(400, INVALID, Some("invalid_value"), Some("X-Session-Done"));
    assert_still_serving(&app.router).await;
}

#[tokio::test]
async fn session_ids_over_256_bytes_are_refused() {
    let app = test_app();
    let long = "s".repeat(257);
    let fits = "s".repeat(256);
    for (name, header) in [
        ("X-Session-Id", "x-session-id"),
        ("session_id", "session_id"),
        ("x-session-affinity", "x-session-affinity"),
    ] {
        let reply = post_raw(
            &app.router,
            "/v1/chat/completions",
            chat("hi").to_string(),
            &[(header, long.as_str())],
        )
        .await;
        reply.assert_error(400, INVALID, Some("invalid_value"), Some(name));
        let reply = post_raw(
            &app.router,
            "/v1/chat/completions",
            chat("hi").to_string(),
            &[(header, fits.as_str())],
        )
        .await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    }
    let fields = [
        ("session_id", json!(long), "session_id"),
        ("prompt_cache_key", json!(long), "prompt_cache_key"),
        (
            "metadata",
            json!({"session_id": long}),
            "metadata.session_id",
        ),
        (
            "metadata",
            json!({"conversation_id": long}),
            "metadata.conversation_id",
        ),
        ("user", json!(long), "user"),
    ];
    for (field, value, param) in fields {
        let mut body = chat("hi");
        body[field] = value;
        let reply = post(&app.router, "/v1/chat/completions", body).await;
        reply.assert_error(400, INVALID, Some("invalid_value"), Some(param));
    }
    // Legacy completions and the Responses API apply the same cap.
    let body = json!({"model": "fake-model", "prompt": "hi", "session_id": long});
    post(&app.router, "/v1/completions", body)
        .await
        .assert_error(400, INVALID, Some("invalid_value"), Some("session_id"));
    let body = json!({"model": "fake-model", "input": "hi", "prompt_cache_key": long});
    post(&app.router, "/v1/responses", body).await.assert_error(
        400,
        INVALID,
        Some("invalid_value"),
        Some("prompt_cache_key"),
    );
    assert!(
        app.sink.turns().len() == 3,
        "only the 256-byte ids were served"
    );
    assert_still_serving(&app.router).await;
}

#[tokio::test]
async fn legacy_completion_bad_inputs() {
    let app = test_app();
    let base = json!({"model": "fake-model", "prompt": "hi"});
    let cases = [
        ("prompt", json!(5), "prompt"),
        ("prompt", json!(["a", "b"]), "prompt"),
        // Token ids outside the vocabulary (the fake's is 100000 ids) or negative.
        ("prompt", json!([100_000]), "prompt"),
        ("prompt", json!([1, -1]), "prompt"),
        ("prompt", json!([4_294_967_296u64]), "prompt"),
        ("logprobs", json!(6), "logprobs"),
        ("suffix", json!("end"), "suffix"),
        ("best_of", json!(3), "best_of"),
        ("max_tokens", json!(0), "max_tokens"),
        ("temperature", json!(9), "temperature"),
    ];
    for (field, value, param) in cases {
        let mut body = base.clone();
        body[field] = value;
        let reply = post(&app.router, "/v1/completions", body.clone()).await;
        assert_eq!(reply.status.as_u16(), 400, "{body} → {}", reply.text);
        assert_eq!(
            reply.json()["error"]["param"],
            param,
            "{body} → {}",
            reply.text
        );
    }
    let body = json!({"model": "fake-model", "prompt": [5, 200_000]});
    let reply = post(&app.router, "/v1/completions", body).await;
    reply.assert_error(400, INVALID, Some("invalid_value"), Some("prompt"));
    assert!(reply.text.contains("'prompt[1]'") && reply.text.contains("vocabulary"));
    let body = json!({"model": "fake-model", "prompt": [104, 99_999], "max_tokens": 2});
    let reply = post(&app.router, "/v1/completions", body).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    assert_still_serving(&app.router).await;
}

// The cross-site and rebinding guard of /v1 (issue 15).
#[path = "api_errors/guard.rs"]
mod guard;
