//! Streaming over a real TCP connection: SSE framing, chunk order, usage, tool-call deltas,
//! mid-stream errors and cancellation when the client disconnects.

mod api_support;

use std::time::Duration;

use api_support::*;
use futures::StreamExt;
use hindsight::api::testing::{FakeConfig, FakeReply};
use serde_json::{json, Value};

async fn stream_text(addr: std::net::SocketAddr, path: &str, body: Value) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (status, content_type, response.text().await.unwrap())
}

fn content_of(chunks: &[Value], index: usize) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"] == index)
        .filter_map(|c| c["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn streamed_chunks_concatenate_to_the_non_streamed_text() {
    let app = test_app_with(
        FakeConfig {
            token_delay: Duration::from_millis(1),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let addr = spawn_server(app.router.clone()).await;
    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "tell me"}],
                      "temperature": 0.7, "seed": 1234, "n": 2,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (status, content_type, text) =
        stream_text(addr, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = sse_chunks(&text);
    // The first chunk of each choice announces the role; ids and fingerprints are stable.
    for index in 0..2 {
        let first = chunks
            .iter()
            .find(|c| c["choices"][0]["index"] == index)
            .unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    }
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert!(chunks.iter().all(|c| c["id"] == id
        && c["object"] == "chat.completion.chunk"
        && c["system_fingerprint"] == "hs-v3"));
    // Token by token: many content chunks, not one.
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    // The usage chunk comes last, with no choices.
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let finish: Vec<_> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| !c["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 2);

    let mut plain = body;
    plain["stream"] = json!(false);
    plain.as_object_mut().unwrap().remove("stream_options");
    let whole = post(&app.router, "/v1/chat/completions", plain)
        .await
        .json();
    for index in 0..2 {
        assert_eq!(
            content_of(&chunks, index),
            whole["choices"][index]["message"]["content"]
                .as_str()
                .unwrap()
        );
    }
    assert_eq!(usage_chunk["usage"], whole["usage"]);
    // Streamed turns are recorded too.
    assert_eq!(app.sink.turns().len(), 2);
    assert_eq!(app.sink.turns()[0].choices[0].text, content_of(&chunks, 0));
}

#[tokio::test]
async fn streamed_tool_calls_arrive_as_deltas_before_the_end() {
    let output = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let app = test_app_with(
        FakeConfig {
            reply: FakeReply::Fixed(output.into()),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let addr = spawn_server(app.router.clone()).await;
    let body = json!({"model": "fake-model", "stream": true,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}},
                  {"type": "function", "function": {"name": "get_time"}}]});
    let (_, _, text) = stream_text(addr, "/v1/chat/completions", body).await;
    let chunks = sse_chunks(&text);
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .collect();
    assert_eq!(deltas.len(), 2);
    let first = &deltas[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["type"], "function");
    assert!(first["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(first["function"]["name"], "get_weather");
    assert_eq!(first["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(
        deltas[1]["choices"][0]["delta"]["tool_calls"][0]["index"],
        1
    );
    // No markup leaked as content, and the finish reason says tool_calls.
    assert_eq!(content_of(&chunks, 0), "");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn streamed_logprobs_cover_every_token() {
    let app = test_app_with(
        FakeConfig {
            reply: FakeReply::Fixed("naïve".into()),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let addr = spawn_server(app.router.clone()).await;
    let mut body = chat("x");
    body["stream"] = json!(true);
    body["logprobs"] = json!(true);
    let (_, _, text) = stream_text(addr, "/v1/chat/completions", body).await;
    let tokens: Vec<Value> = sse_chunks(&text)
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(tokens.len(), "naïve".len());
    let joined: String = tokens
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "naïve");
}

#[tokio::test]
async fn a_failure_mid_stream_sends_an_error_event() {
    let app = test_app_with(
        FakeConfig {
            fail_after_tokens: Some(3),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let addr = spawn_server(app.router.clone()).await;
    let mut body = chat("hello");
    body["stream"] = json!(true);
    let (status, _, text) = stream_text(addr, "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(!text.contains("fake engine failure"));
    assert!(!data.contains(&"[DONE]".to_string()));
    assert_eq!(
        content_of(&sse_chunks(&text[..text.rfind("data:").unwrap()]), 0),
        "You"
    );
    assert!(app.sink.turns().is_empty());
    // This fake fails every generation; the server itself still answers.
    assert_eq!(get(&app.router, "/v1/models").await.status.as_u16(), 200);
}

#[tokio::test]
async fn client_disconnect_cancels_generation() {
    let app = test_app_with(
        FakeConfig {
            reply: FakeReply::Fixed("x".repeat(2000)),
            token_delay: Duration::from_millis(5),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let addr = spawn_server(app.router.clone()).await;
    for stream in [true, false] {
        let cancelled_before = app.backend.cancelled();
        let mut body = chat("go");
        body["stream"] = json!(stream);
        let client = reqwest::Client::new();
        let request = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&body)
            .send();
        if stream {
            let response = request.await.unwrap();
            let mut bytes = response.bytes_stream();
            bytes.next().await.unwrap().unwrap();
            drop(bytes);
        } else {
            // Give up on the response while it is being generated.
            let _ = tokio::time::timeout(Duration::from_millis(100), request).await;
        }
        drop(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while app.backend.cancelled() == cancelled_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "generation kept running (stream={stream})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(app.backend.completed(), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while app.backend.in_flight() > 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        app.sink.turns().is_empty(),
        "abandoned responses are not recorded"
    );
}

#[tokio::test]
async fn legacy_completion_streams() {
    let app = test_app();
    let addr = spawn_server(app.router.clone()).await;
    let body = json!({"model": "fake-model", "prompt": "abc", "max_tokens": 50, "temperature": 0,
                      "stream": true, "logprobs": 2, "stream_options": {"include_usage": true}});
    let (status, _, text) = stream_text(addr, "/v1/completions", body).await;
    assert_eq!(status, 200, "{text}");
    let chunks = sse_chunks(&text);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, "You said: abc");
    let offsets: Vec<u64> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["text_offset"]
                .as_array()
                .cloned()
        })
        .flatten()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..streamed.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        streamed.len()
    );
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
}
