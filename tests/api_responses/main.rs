//! The Responses API on the fake backend: conversion to the chat path, output items, streamed
//! events (and that they reassemble into the non-streamed response), stored responses and
//! `previous_response_id`, GET/DELETE, errors, and persistence across a restart on the real
//! store.

#[path = "../api_support/mod.rs"]
mod api_support;
#[path = "../store_support/mod.rs"]
mod store_support;

mod persistence;
mod streaming;

use std::sync::Arc;

use api_support::*;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::{Extension, Router};
use hindsight::api::testing::{FakeBackend, FakeConfig, FakeReply};
use hindsight::api::{app_with_routes, ApiKeys, AppState};
use hindsight::store::responses::ResponseStore;
use hindsight::store::{LinkMethod, TurnSink};
use serde_json::{json, Value};

struct App {
    router: Router,
    backend: Arc<FakeBackend>,
    sink: Arc<RecordingSink>,
}

/// `app_with_routes(state, extra)`, which serves the Responses routes itself, on `store` (None:
/// the routes' own in-memory store), which comes in as an outer extension as `hindsight serve`
/// does it.
async fn with_responses(state: AppState, store: Option<ResponseStore>, extra: Router) -> Router {
    let router = app_with_routes(state, extra);
    match store {
        Some(store) => router.layer(Extension(store)),
        None => router,
    }
}

/// The app with the Responses routes and the given store.
async fn app_on(config: FakeConfig, keys: &[&str], store: ResponseStore, extra: Router) -> App {
    let backend = Arc::new(FakeBackend::new(config));
    let sink = Arc::new(RecordingSink::default());
    let state = AppState::new(backend.clone(), sink.clone()).with_keys(ApiKeys::new(keys));
    App {
        router: with_responses(state, Some(store), extra).await,
        backend,
        sink,
    }
}

async fn app() -> App {
    app_on(
        FakeConfig::default(),
        &[],
        ResponseStore::in_memory(),
        Router::new(),
    )
    .await
}

/// Replies with a tool call when tools are offered, else echoes.
fn tool_calling() -> FakeConfig {
    FakeConfig {
        reply: FakeReply::Script(Arc::new(|request, prompt| {
            if prompt.starts_with("<|tools|>") && !prompt.contains("<|tool|>") {
                "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>".into()
            } else {
                hindsight::api::testing::echo_or_seeded(request, prompt)
            }
        })),
        ..FakeConfig::default()
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
}

fn ask(input: Value) -> Value {
    json!({"model": "fake-model", "temperature": 0, "input": input})
}

async fn create(router: &Router, body: Value) -> Value {
    let reply = post(router, "/v1/responses", body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()
}

async fn delete(router: &Router, path: &str, key: Option<&str>) -> Reply {
    let mut builder = Request::builder().method(Method::DELETE).uri(path);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    send(router, builder.body(Body::empty()).unwrap()).await
}

async fn get_as(router: &Router, path: &str, key: &str) -> Reply {
    let request = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    send(router, request).await
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().clone())
        .filter_map(|part| part["text"].as_str().map(str::to_string))
        .collect()
}

/// The last prompt the fake backend rendered.
fn last_prompt(app: &App) -> Vec<Value> {
    app.backend.prompts().last().unwrap().messages.clone()
}

#[tokio::test]
async fn string_input_gives_a_message_and_a_logged_turn() {
    let app = app().await;
    let body = create(&app.router, ask(json!("hello there"))).await;
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["error"], Value::Null);
    assert_eq!(body["incomplete_details"], Value::Null);
    assert_eq!(body["store"], true);
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["tools"], json!([]));
    assert_eq!(body["text"]["format"]["type"], "text");
    assert_eq!(body["metadata"], json!({}));
    let output = body["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    let message = &output[0];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["status"], "completed");
    assert_eq!(
        message["content"],
        json!([{"type": "output_text", "text": "You said: hello there", "annotations": [], "logprobs": []}])
    );
    let usage = &body["usage"];
    let output_tokens = "You said: hello there".len();
    assert_eq!(usage["output_tokens"], output_tokens);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap() + output_tokens as u64
    );
    assert_eq!(usage["input_tokens_details"], json!({"cached_tokens": 0}));
    assert_eq!(
        usage["output_tokens_details"],
        json!({"reasoning_tokens": 0})
    );

    let turns = app.sink.turns();
    assert_eq!(turns.len(), 1);
    let turn = &turns[0];
    assert_eq!(turn.endpoint, "responses");
    assert_eq!(turn.response_id, id);
    assert_eq!(
        turn.messages,
        json!([{"role": "user", "content": "hello there"}])
    );
    assert_eq!(turn.choices[0].text, "You said: hello there");
    assert!(turn.session_id.as_deref().unwrap().starts_with("sess_"));
}

#[tokio::test]
async fn instructions_lead_the_prompt_and_are_echoed() {
    let app = app().await;
    let mut request =
        ask(json!([{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]));
    request["instructions"] = json!("Answer in French.");
    request["metadata"] = json!({"topic": "greeting"});
    request["user"] = json!("u-1");
    let body = create(&app.router, request).await;
    assert_eq!(body["instructions"], "Answer in French.");
    assert_eq!(body["metadata"], json!({"topic": "greeting"}));
    assert_eq!(body["user"], "u-1");
    assert_eq!(
        last_prompt(&app),
        vec![
            json!({"role": "system", "content": "Answer in French."}),
            json!({"role": "user", "content": "hi"}),
        ]
    );
    assert_eq!(app.sink.turns()[0].messages[0]["role"], "system");
}

#[tokio::test]
async fn function_calls_round_trip_through_input_items() {
    let app = app_on(
        tool_calling(),
        &[],
        ResponseStore::in_memory(),
        Router::new(),
    )
    .await;
    let mut request = ask(json!("Weather in Paris?"));
    request["tools"] = json!([weather_tool()]);
    let first = create(&app.router, request.clone()).await;
    let output = first["output"].as_array().unwrap();
    assert_eq!(output.len(), 2, "{first}");
    assert_eq!(output_text(&first), "Checking.");
    let call = &output[1];
    assert_eq!(call["type"], "function_call");
    assert!(call["id"].as_str().unwrap().starts_with("fc_"));
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["status"], "completed");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    assert_eq!(first["tools"][0]["name"], "get_weather");
    assert_eq!(first["tools"][0]["type"], "function");
    let turn = &app.sink.turns()[0];
    assert_eq!(turn.choices[0].finish_reason, "tool_calls");
    assert_eq!(
        turn.tools.as_ref().unwrap()[0]["function"]["name"],
        "get_weather"
    );

    // The client sends the whole exchange back, with the function's output.
    let call_id = call["call_id"].as_str().unwrap();
    let mut input = vec![json!({"role": "user", "content": "Weather in Paris?"})];
    input.extend(output.iter().cloned());
    input.push(
        json!({"type": "function_call_output", "call_id": call_id, "output": "{\"temp\": 21}"}),
    );
    request["input"] = json!(input);
    let second = create(&app.router, request).await;
    assert_eq!(output_text(&second), "You said: Weather in Paris?");
    let prompt = last_prompt(&app);
    assert_eq!(prompt.len(), 3, "{prompt:?}");
    assert_eq!(prompt[1]["role"], "assistant");
    assert_eq!(prompt[1]["content"], "Checking.");
    assert_eq!(prompt[1]["tool_calls"][0]["id"], call_id);
    assert_eq!(
        prompt[1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        prompt[2],
        json!({"role": "tool", "tool_call_id": call_id, "content": "{\"temp\": 21}"})
    );
}

#[tokio::test]
async fn tool_choice_and_text_format_reach_the_chat_path() {
    let app = app().await;
    let mut request = ask(json!("hi"));
    request["tools"] = json!([weather_tool()]);
    request["tool_choice"] = json!({"type": "function", "name": "get_weather"});
    let body = create(&app.router, request).await;
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "name": "get_weather"})
    );
    let sampling = &app.sink.turns()[0].sampling;
    assert!(
        !sampling["constraint"].is_null(),
        "a forced call is constrained: {sampling}"
    );

    let mut request = ask(json!("hi"));
    let schema =
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
    request["text"] = json!({"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": true}});
    let body = create(&app.router, request).await;
    assert_eq!(
        body["text"]["format"],
        json!({"type": "json_schema", "name": "thing", "schema": schema, "strict": true})
    );
    let sampling = &app.sink.turns()[1].sampling;
    assert!(
        !sampling["constraint"].is_null(),
        "json_schema is constrained: {sampling}"
    );
}

/// `(event name, data)` of each SSE event.
#[tokio::test]
async fn previous_response_id_replays_the_conversation_in_one_session() {
    let app = app().await;
    let mut first = ask(json!("my name is Ann"));
    first["instructions"] = json!("Be kind.");
    let r1 = create(&app.router, first).await;
    let mut second = ask(json!("what is my name?"));
    second["previous_response_id"] = r1["id"].clone();
    let r2 = create(&app.router, second).await;
    assert_eq!(r2["previous_response_id"], r1["id"]);
    assert_eq!(r2["instructions"], Value::Null);
    // Instructions are not inherited; the earlier exchange is.
    assert_eq!(
        last_prompt(&app),
        vec![
            json!({"role": "user", "content": "my name is Ann"}),
            json!({"role": "assistant", "content": "You said: my name is Ann"}),
            json!({"role": "user", "content": "what is my name?"}),
        ]
    );
    let mut third = ask(json!("and again?"));
    third["previous_response_id"] = r2["id"].clone();
    third["instructions"] = json!("Be brief.");
    create(&app.router, third).await;
    let prompt = last_prompt(&app);
    assert_eq!(prompt.len(), 6, "{prompt:?}");
    assert_eq!(prompt[0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(
        prompt[4],
        json!({"role": "assistant", "content": "You said: what is my name?"})
    );

    let turns = app.sink.turns();
    assert_eq!(turns.len(), 3);
    let session = turns[0].session_id.clone().unwrap();
    assert!(turns
        .iter()
        .all(|t| t.session_id.as_deref() == Some(session.as_str())));
    assert_eq!(turns[1].messages.as_array().unwrap().len(), 3);
    let sources: Vec<_> = turns.iter().map(|t| t.session_source).collect();
    assert_eq!(
        sources,
        [
            Some(LinkMethod::New),
            Some(LinkMethod::PreviousResponseId),
            Some(LinkMethod::PreviousResponseId)
        ]
    );
    // An explicit session id outranks previous_response_id.
    let mut fourth = ask(json!("elsewhere"));
    fourth["previous_response_id"] = r2["id"].clone();
    fourth["prompt_cache_key"] = json!("pck");
    let reply = post_raw(
        &app.router,
        "/v1/responses",
        fourth.to_string(),
        &[("x-session-id", "mine")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let last = app.sink.turns().pop().unwrap();
    assert_eq!(
        (last.session_id.as_deref(), last.session_source),
        (Some("mine"), Some(LinkMethod::Header))
    );
}

#[tokio::test]
async fn session_hints_name_the_session() {
    let app = app().await;
    let mut request = ask(json!("hi"));
    request["metadata"] = json!({"session_id": "from-metadata"});
    create(&app.router, request.clone()).await;
    let reply = post_raw(
        &app.router,
        "/v1/responses",
        request.to_string(),
        &[("x-session-id", "from-header")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let turns = app.sink.turns();
    assert_eq!(turns[0].session_id.as_deref(), Some("from-metadata"));
    assert_eq!(turns[0].session_source, Some(LinkMethod::Metadata));
    assert_eq!(turns[1].session_id.as_deref(), Some("from-header"));
    assert_eq!(turns[1].session_source, Some(LinkMethod::Header));
    // A client that resends the history itself is linked by the store, not given a new name.
    let history = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "You said: hi"},
        {"role": "user", "content": "more"},
    ]);
    create(&app.router, ask(history)).await;
    assert_eq!(app.sink.turns()[2].session_id, None);
}

#[tokio::test]
async fn get_and_delete_stored_responses() {
    let app = app().await;
    let created = create(&app.router, ask(json!("keep me"))).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/responses/{id}");
    let fetched = get(&app.router, &path).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), created);
    let deleted = delete(&app.router, &path, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(
        deleted.json(),
        json!({"id": id, "object": "response", "deleted": true})
    );
    get(&app.router, &path)
        .await
        .assert_error(404, "invalid_request_error", None, None);
    delete(&app.router, &path, None)
        .await
        .assert_error(404, "invalid_request_error", None, None);
    let mut follow = ask(json!("again"));
    follow["previous_response_id"] = json!(id);
    post(&app.router, "/v1/responses", follow)
        .await
        .assert_error(
            400,
            "invalid_request_error",
            Some("previous_response_not_found"),
            Some("previous_response_id"),
        );
}

#[tokio::test]
async fn unknown_ids_and_other_keys_get_404() {
    let app = app_on(
        FakeConfig::default(),
        &["key-a", "key-b"],
        ResponseStore::in_memory(),
        Router::new(),
    )
    .await;
    let missing = get_as(&app.router, "/v1/responses/resp_nope", "key-a").await;
    missing.assert_error(404, "invalid_request_error", None, None);
    assert!(missing.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("resp_nope"));
    let reply = post_raw(
        &app.router,
        "/v1/responses",
        ask(json!("mine")).to_string(),
        &[("authorization", "Bearer key-a")],
    )
    .await;
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let path = format!("/v1/responses/{id}");
    assert_eq!(get_as(&app.router, &path, "key-a").await.status, 200);
    get_as(&app.router, &path, "key-b").await.assert_error(
        404,
        "invalid_request_error",
        None,
        None,
    );
    delete(&app.router, &path, Some("key-b"))
        .await
        .assert_error(404, "invalid_request_error", None, None);
    let mut follow = ask(json!("again"));
    follow["previous_response_id"] = json!(id);
    let reply = post_raw(
        &app.router,
        "/v1/responses",
        follow.to_string(),
        &[("authorization", "Bearer key-b")],
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(get_as(&app.router, &path, "key-a").await.status, 200);
}

#[tokio::test]
async fn store_false_is_served_and_logged_but_not_kept() {
    let app = app().await;
    let mut request = ask(json!("forget me"));
    request["store"] = json!(false);
    let body = create(&app.router, request).await;
    assert_eq!(body["store"], false);
    let id = body["id"].as_str().unwrap();
    get(&app.router, &format!("/v1/responses/{id}"))
        .await
        .assert_error(404, "invalid_request_error", None, None);
    let mut follow = ask(json!("again"));
    follow["previous_response_id"] = json!(id);
    assert_eq!(post(&app.router, "/v1/responses", follow).await.status, 400);
    assert_eq!(app.sink.turns().len(), 1);
}

#[tokio::test]
async fn invalid_requests_get_a_400_naming_the_field() {
    let app = app().await;
    let cases = [
        (json!({"stop": "x"}), "stop", Some("unknown_parameter")),
        (
            json!({"temperature": 3}),
            "temperature",
            Some("invalid_value"),
        ),
        (
            json!({"temperature": "hot"}),
            "temperature",
            Some("invalid_value"),
        ),
        (json!({"input": 5}), "input", Some("invalid_value")),
        (json!({"input": []}), "input", Some("invalid_value")),
        (
            json!({"input": [{"type": "reasoning", "summary": []}]}),
            "input[0].type",
            Some("unsupported_parameter"),
        ),
        (
            json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
            Some("unsupported_parameter"),
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}),
            "input[0].content[0].type",
            Some("unsupported_parameter"),
        ),
        (
            json!({"input": [{"role": "critic", "content": "x"}]}),
            "input[0].role",
            Some("invalid_value"),
        ),
        (
            json!({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}),
            "input[0].call_id",
            Some("invalid_value"),
        ),
        (
            json!({"tools": [{"type": "web_search"}]}),
            "tools[0].type",
            Some("unsupported_parameter"),
        ),
        (
            json!({"tools": [{"type": "function", "name": "f", "parameters": 3}]}),
            "tools[0].parameters",
            Some("invalid_value"),
        ),
        (
            json!({"tool_choice": {"type": "function", "name": "nope"}, "tools": [weather_tool()]}),
            "tool_choice",
            Some("invalid_value"),
        ),
        (
            json!({"text": {"format": {"type": "yaml"}}}),
            "text.format.type",
            Some("invalid_value"),
        ),
        (
            json!({"text": {"format": {"type": "json_schema", "name": "n"}}}),
            "text.format.schema",
            Some("missing_required_parameter"),
        ),
        (
            json!({"max_output_tokens": 0}),
            "max_output_tokens",
            Some("invalid_value"),
        ),
        (
            json!({"include": ["message.output_text.logprobs"]}),
            "include",
            Some("unsupported_parameter"),
        ),
        (
            json!({"background": true}),
            "background",
            Some("unsupported_parameter"),
        ),
        (
            json!({"metadata": {"n": 1}}),
            "metadata.n",
            Some("invalid_value"),
        ),
    ];
    for (patch, param, code) in cases {
        let mut body = ask(json!("hi"));
        for (key, value) in patch.as_object().unwrap() {
            body[key] = value.clone();
        }
        let reply = post(&app.router, "/v1/responses", body.clone()).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        reply.assert_error(400, "invalid_request_error", code, Some(param));
    }
    let mut body = ask(json!("hi"));
    body["model"] = json!("gpt-4o");
    post(&app.router, "/v1/responses", body).await.assert_error(
        404,
        "invalid_request_error",
        Some("model_not_found"),
        Some("model"),
    );
    let reply = post_raw(&app.router, "/v1/responses", "{not json".into(), &[]).await;
    assert_eq!(reply.status, 400);
    assert!(app.sink.turns().is_empty());
    assert!(app.backend.requests().is_empty());
}
