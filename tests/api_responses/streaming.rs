//! Streamed Responses events: framing, order, and reassembly into the non-streamed response.

use super::*;

fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(rest) = line.strip_prefix("event:") {
                    name = Some(rest.trim().to_string());
                } else if let Some(rest) = line.strip_prefix("data:") {
                    data.push_str(rest.trim_start());
                }
            }
            Some((name?, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

async fn stream(addr: std::net::SocketAddr, mut body: Value) -> Vec<(String, Value)> {
    body["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/responses"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(!text.contains("[DONE]"));
    sse_events(&text)
}

/// A response without its generated ids and timestamps.
fn without_ids(response: &Value) -> Value {
    let mut response = response.clone();
    for key in ["id", "created_at"] {
        response[key] = Value::Null;
    }
    for item in response["output"].as_array_mut().unwrap() {
        item["id"] = Value::Null;
        if item["type"] == "function_call" {
            item["call_id"] = Value::Null;
        }
    }
    response
}

/// Rebuilds the output from the item and delta events, as the SDKs do.
fn reassemble(events: &[(String, Value)]) -> Vec<Value> {
    let mut output: Vec<Value> = Vec::new();
    for (_, event) in events {
        let index = event["output_index"].as_u64().unwrap_or(0) as usize;
        match event["type"].as_str().unwrap() {
            "response.output_item.added" => {
                assert_eq!(index, output.len());
                output.push(event["item"].clone());
            }
            "response.content_part.added" => output[index]["content"]
                .as_array_mut()
                .unwrap()
                .push(event["part"].clone()),
            "response.output_text.delta" => {
                let part = &mut output[index]["content"][0]["text"];
                *part = json!(format!(
                    "{}{}",
                    part.as_str().unwrap(),
                    event["delta"].as_str().unwrap()
                ));
            }
            "response.function_call_arguments.delta" => {
                let arguments = &mut output[index]["arguments"];
                *arguments = json!(format!(
                    "{}{}",
                    arguments.as_str().unwrap(),
                    event["delta"].as_str().unwrap()
                ));
            }
            "response.output_item.done" => {
                assert_eq!(event["item"]["id"], output[index]["id"]);
                output[index]["status"] = event["item"]["status"].clone();
            }
            _ => {}
        }
    }
    output
}

fn check_event_framing(events: &[(String, Value)]) {
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "event name and type agree");
        assert_eq!(
            data["sequence_number"], i,
            "sequence numbers count up from 0"
        );
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "response.created");
    assert_eq!(names[1], "response.in_progress");
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(events[0].1["response"]["output"], json!([]));
}

#[tokio::test]
async fn streamed_events_reassemble_into_the_non_streamed_response() {
    let app = app_on(
        FakeConfig {
            token_delay: std::time::Duration::from_millis(1),
            ..FakeConfig::default()
        },
        &[],
        ResponseStore::in_memory(),
        Router::new(),
    )
    .await;
    let addr = spawn_server(app.router.clone()).await;
    let request = ask(json!("tell me something"));
    let events = stream(addr, request.clone()).await;
    check_event_framing(&events);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
    assert!(position("response.output_item.added") < position("response.content_part.added"));
    assert!(position("response.content_part.added") < position("response.output_text.delta"));
    assert!(
        names
            .iter()
            .rposition(|n| *n == "response.output_text.delta")
            .unwrap()
            < position("response.output_text.done")
    );
    assert!(position("response.output_text.done") < position("response.content_part.done"));
    assert!(position("response.content_part.done") < position("response.output_item.done"));
    assert_eq!(*names.last().unwrap(), "response.completed");
    assert!(
        names
            .iter()
            .filter(|n| **n == "response.output_text.delta")
            .count()
            > 5
    );

    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        reassemble(&events),
        completed["output"].as_array().unwrap().clone()
    );
    let done = events
        .iter()
        .find(|(n, _)| n == "response.output_text.done")
        .unwrap();
    assert_eq!(done.1["text"], "You said: tell me something");

    let plain = create(&app.router, request).await;
    assert_eq!(without_ids(completed), without_ids(&plain));
    // Both were logged as turns, and the streamed one is stored.
    assert_eq!(app.sink.turns().len(), 2);
    let id = completed["id"].as_str().unwrap();
    let stored = get(&app.router, &format!("/v1/responses/{id}")).await;
    assert_eq!(stored.json(), *completed);
}

#[tokio::test]
async fn streamed_tool_calls_reassemble_too() {
    let app = app_on(
        tool_calling(),
        &[],
        ResponseStore::in_memory(),
        Router::new(),
    )
    .await;
    let addr = spawn_server(app.router.clone()).await;
    let mut request = ask(json!("Weather in Paris?"));
    request["tools"] = json!([weather_tool()]);
    let events = stream(addr, request.clone()).await;
    check_event_framing(&events);
    let completed = &events.last().unwrap().1["response"];
    let output = completed["output"].as_array().unwrap();
    assert_eq!(output.len(), 2);
    assert_eq!(reassemble(&events), *output);
    let done = events
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(done.1["name"], "get_weather");
    assert_eq!(done.1["arguments"], output[1]["arguments"]);
    let plain = create(&app.router, request).await;
    assert_eq!(without_ids(completed), without_ids(&plain));
}

#[tokio::test]
async fn max_output_tokens_ends_incomplete() {
    let app = app().await;
    let addr = spawn_server(app.router.clone()).await;
    let mut request = ask(json!("a long question"));
    request["max_output_tokens"] = json!(4);
    let body = create(&app.router, request.clone()).await;
    assert_eq!(body["status"], "incomplete");
    assert_eq!(
        body["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(body["max_output_tokens"], 4);
    assert_eq!(output_text(&body), "You ");
    assert_eq!(body["output"][0]["status"], "incomplete");
    let events = stream(addr, request).await;
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(without_ids(&last["response"]), without_ids(&body));
}

#[tokio::test]
async fn a_failing_engine_fails_the_stream() {
    let app = app_on(
        FakeConfig {
            fail_after_tokens: Some(3),
            ..FakeConfig::default()
        },
        &[],
        ResponseStore::in_memory(),
        Router::new(),
    )
    .await;
    let addr = spawn_server(app.router.clone()).await;
    let events = stream(addr, ask(json!("hi"))).await;
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    assert!(
        app.sink.turns().is_empty(),
        "a failed response is not a turn"
    );
    let reply = post(&app.router, "/v1/responses", ask(json!("hi"))).await;
    reply.assert_error(500, "server_error", None, None);
}
