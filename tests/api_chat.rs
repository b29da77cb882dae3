//! Chat and legacy completions through `app()` on the fake backend: response shape, request
//! conversion, tool calls, logprobs and what is handed to the turn store.

mod api_support;

use std::sync::Arc;

use api_support::*;
use hindsight::api::testing::{FakeConfig, FakeReply};
use hindsight::engine::Constraint;
use hindsight::store::{LinkMethod, TurnType};
use serde_json::{json, Value};

#[tokio::test]
async fn non_streaming_response_has_openai_shape() {
    let app = test_app();
    let reply = post(&app.router, "/v1/chat/completions", chat("hello there")).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    assert!(reply.headers.contains_key("x-request-id"));
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["system_fingerprint"], "hs-v3");
    assert!(body["created"].as_i64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "You said: hello there");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    let expected_prompt = "<|user|>hello there\n<|assistant|>".len();
    assert_eq!(body["usage"]["prompt_tokens"], expected_prompt);
    assert_eq!(
        body["usage"]["completion_tokens"],
        "You said: hello there".len()
    );
    assert_eq!(
        body["usage"]["total_tokens"],
        expected_prompt + "You said: hello there".len()
    );
}

#[tokio::test]
async fn request_fields_reach_the_engine_converted() {
    let app = test_app();
    let body = json!({
        "model": "fake-model",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}
        ],
        "temperature": 0.7, "top_p": 0.9, "seed": 42, "max_tokens": 5, "max_completion_tokens": 7,
        "stop": "END", "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "user": "u1", "metadata": {"k": "v"}, "some_future_field": {"x": 1},
        "session_id": "sess-body"
    });
    let reply = post(&app.router, "/v1/chat/completions", body).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let request = &app.backend.requests()[0];
    assert_eq!(request.sampling.temperature, 0.7);
    assert_eq!(request.sampling.top_p, 0.9);
    assert_eq!(request.sampling.seed, Some(42));
    assert_eq!(request.sampling.presence_penalty, 0.5);
    assert_eq!(request.sampling.frequency_penalty, -0.5);
    assert_eq!(request.stop.max_tokens, 7, "max_completion_tokens wins");
    assert_eq!(request.stop.stop_strings, ["END"]);
    let prompt = &app.backend.prompts()[0];
    assert_eq!(
        prompt.messages,
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "part one\npart two"}),
        ]
    );
    assert_eq!(prompt.tools, None);
    assert!(!String::from_utf8_lossy(
        &request
            .prompt_tokens
            .iter()
            .map(|&t| t as u8)
            .collect::<Vec<_>>()
    )
    .contains("sess-body"));
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "length");
    let turn = &app.sink.turns()[0];
    assert_eq!(turn.session_id.as_deref(), Some("sess-body"));
    assert_eq!(turn.sampling["seed"], 42);
    assert_eq!(turn.sampling["max_tokens"], 7);
}

#[tokio::test]
async fn without_max_tokens_the_rest_of_the_context_is_the_budget() {
    let app = test_app();
    post(&app.router, "/v1/chat/completions", chat("hi")).await;
    let request = &app.backend.requests()[0];
    assert_eq!(request.stop.max_tokens, 4096 - request.prompt_tokens.len());
}

#[tokio::test]
async fn n_choices_use_consecutive_seeds_and_replay() {
    let app = test_app();
    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "story"}],
                      "n": 3, "seed": 7, "temperature": 0.8});
    let first = post(&app.router, "/v1/chat/completions", body.clone())
        .await
        .json();
    let seeds: Vec<_> = app
        .backend
        .requests()
        .iter()
        .map(|r| r.sampling.seed)
        .collect();
    assert_eq!(seeds, [Some(7), Some(8), Some(9)]);
    let texts: Vec<&str> = first["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 3);
    assert_ne!(texts[0], texts[1]);
    let indexes: Vec<_> = first["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].clone())
        .collect();
    assert_eq!(indexes, [json!(0), json!(1), json!(2)]);
    let again = post(&app.router, "/v1/chat/completions", body).await.json();
    assert_eq!(first["choices"], again["choices"]);
    let total: usize = texts.iter().map(|t| t.len()).sum();
    assert_eq!(first["usage"]["completion_tokens"], total);
    assert_eq!(app.sink.turns()[0].choices.len(), 3);
}

#[tokio::test]
async fn logprobs_have_openai_shape() {
    let app = test_app_with(
        FakeConfig {
            reply: FakeReply::Fixed("héllo".into()),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let mut body = chat("x");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let reply = post(&app.router, "/v1/chat/completions", body).await.json();
    let content = reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        content.len(),
        "héllo".len(),
        "one entry per token (bytes here)"
    );
    assert_eq!(content[0]["token"], "h");
    assert_eq!(content[0]["bytes"], json!([104]));
    assert!(content[0]["logprob"].as_f64().unwrap() < 0.0);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(content[0]["top_logprobs"][0]["token"], "h");
    // The first byte of 'é' completes no character; the second carries it.
    assert_eq!(content[1]["token"], "");
    assert_eq!(content[2]["token"], "é");
    assert_eq!(content[2]["bytes"], json!([195, 169]));
    let joined: String = content
        .iter()
        .map(|c| c["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "héllo");
    assert_eq!(app.backend.requests()[0].top_logprobs, 2);
}

fn tool_request() -> Value {
    json!({
        "model": "fake-model",
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
        ]
    })
}

const QWEN_TWO_CALLS: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";

#[tokio::test]
async fn qwen_and_llama_tool_calls_come_back_as_tool_calls() {
    for (output, names) in [
        (QWEN_TWO_CALLS, vec!["get_weather", "get_time"]),
        (
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            vec!["get_weather"],
        ),
        (
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            vec!["get_weather"],
        ),
    ] {
        let app = test_app_with(
            FakeConfig {
                reply: FakeReply::Fixed(output.into()),
                ..FakeConfig::default()
            },
            &[],
            1 << 20,
        );
        let reply = post(&app.router, "/v1/chat/completions", tool_request())
            .await
            .json();
        let choice = &reply["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{output}");
        assert_eq!(choice["message"]["content"], Value::Null);
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        let got: Vec<&str> = calls
            .iter()
            .map(|c| c["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, names);
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(calls[0]["type"], "function");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        // The template saw the tools; the store gets the raw text and the parsed calls.
        let prompt = &app.backend.prompts()[0];
        assert_eq!(prompt.tools.as_ref().unwrap().len(), 2);
        assert_eq!(
            prompt.tools.as_ref().unwrap()[0]["function"]["name"],
            "get_weather"
        );
        let turn = &app.sink.turns()[0];
        assert_eq!(turn.choices[0].text, output);
        assert_eq!(turn.choices[0].finish_reason, "tool_calls");
        assert_eq!(
            turn.choices[0]
                .tool_calls
                .as_ref()
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            names.len()
        );
    }
}

#[tokio::test]
async fn tool_choice_none_hides_tools_and_keeps_text() {
    let app = test_app_with(
        FakeConfig {
            reply: FakeReply::Fixed(QWEN_TWO_CALLS.into()),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let mut body = tool_request();
    body["tool_choice"] = json!("none");
    let reply = post(&app.router, "/v1/chat/completions", body).await.json();
    assert_eq!(app.backend.prompts()[0].tools, None);
    assert_eq!(reply["choices"][0]["message"]["content"], QWEN_TWO_CALLS);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn parallel_tool_calls_false_keeps_the_first_and_named_choice_constrains() {
    let app = test_app_with(
        FakeConfig {
            reply: FakeReply::Fixed(QWEN_TWO_CALLS.into()),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let mut body = tool_request();
    body["parallel_tool_calls"] = json!(false);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let reply = post(&app.router, "/v1/chat/completions", body).await.json();
    let calls = reply["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    // The named call is enforced by the grammar, not asked for in the prompt: one call of
    // get_time only, its arguments under get_time's parameters.
    let request = &app.backend.requests()[0];
    let Some(Constraint::Lark(grammar)) = &request.constraint else {
        panic!(
            "a named tool_choice must constrain decoding: {:?}",
            request.constraint
        )
    };
    assert!(grammar.starts_with("start: calls\n"), "{grammar}");
    assert!(grammar.contains(r#""const":"get_time""#), "{grammar}");
    assert!(!grammar.contains("get_weather"), "{grammar}");
    assert!(!grammar.contains(")*"), "one call only: {grammar}");
    let messages = &app.backend.prompts()[0].messages;
    assert_eq!(messages[0]["role"], "user");
}

#[tokio::test]
async fn tool_modes_become_grammars_and_the_turn_records_them() {
    let app = test_app();
    let mut required = tool_request();
    required["tool_choice"] = json!("required");
    let mut auto = tool_request();
    auto["tool_choice"] = json!("auto");
    let mut none = tool_request();
    none["tool_choice"] = json!("none");
    for body in [required, auto, none] {
        let reply = post(&app.router, "/v1/chat/completions", body).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    }
    let requests = app.backend.requests();
    let grammar = |i: usize| match &requests[i].constraint {
        Some(Constraint::Lark(g)) => g.clone(),
        other => panic!("request {i}: {other:?}"),
    };
    // required: calls only, any of the two tools, several allowed (parallel defaults to true).
    assert!(grammar(0).starts_with("start: calls\n"));
    assert!(grammar(0).contains("anyOf") && grammar(0).contains(")*"));
    // auto: prose or calls.
    assert!(grammar(1).starts_with("start: TEXT | calls\n"));
    assert_eq!(requests[2].constraint, None);
    let turns = app.sink.turns();
    assert_eq!(turns[0].sampling["constraint"]["kind"], "lark");
    assert_eq!(turns[2].sampling["constraint"], Value::Null);
}

#[tokio::test]
async fn response_format_constrains_decoding() {
    let app = test_app();
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"], "additionalProperties": false});
    let formats = [
        json!({"type": "json_object"}),
        json!({"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": true}}),
        json!({"type": "text"}),
    ];
    for format in &formats {
        let mut body = chat("where?");
        body["response_format"] = format.clone();
        let reply = post(&app.router, "/v1/chat/completions", body).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    }
    let requests = app.backend.requests();
    assert_eq!(
        requests[0].constraint,
        Some(Constraint::JsonSchema(json!({"type": "object"})))
    );
    assert_eq!(requests[1].constraint, Some(Constraint::JsonSchema(schema)));
    assert_eq!(requests[2].constraint, None);
    assert_eq!(
        app.sink.turns()[1].sampling["constraint"]["kind"],
        "json_schema"
    );
}

#[tokio::test]
async fn logit_bias_reaches_the_sampler_and_bad_bias_is_a_400() {
    let app = test_app();
    let mut body = chat("hi");
    body["logit_bias"] = json!({"42": 100, "7": -100});
    let reply = post(&app.router, "/v1/chat/completions", body).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let mut bias = app.backend.requests()[0].sampling.logit_bias.clone();
    bias.sort_by_key(|(id, _)| *id);
    assert_eq!(bias, vec![(7, -100.0), (42, 100.0)]);
    for (bad, param) in [
        (json!({"abc": 500}), "logit_bias.abc"),
        (json!({"42": 101}), "logit_bias.42"),
        (json!({"100000": 1}), "logit_bias.100000"),
        (json!({"1": "x"}), "logit_bias.1"),
        (json!([1]), "logit_bias"),
    ] {
        let mut body = chat("hi");
        body["logit_bias"] = bad.clone();
        let reply = post(&app.router, "/v1/chat/completions", body).await;
        reply.assert_error(
            400,
            "invalid_request_error",
            Some("invalid_value"),
            Some(param),
        );
        let mut legacy = json!({"model": "fake-model", "prompt": "hi"});
        legacy["logit_bias"] = bad;
        let reply = post(&app.router, "/v1/completions", legacy).await;
        reply.assert_error(
            400,
            "invalid_request_error",
            Some("invalid_value"),
            Some(param),
        );
    }
}

#[tokio::test]
async fn assistant_tool_calls_and_tool_results_reach_the_template() {
    let app = test_app();
    let body = json!({"model": "fake-model", "messages": [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    ], "response_format": {"type": "json_object"}});
    let reply = post(&app.router, "/v1/chat/completions", body).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let messages = &app.backend.prompts()[0].messages;
    assert_eq!(messages.len(), 4);
    assert!(messages[0]["content"]
        .as_str()
        .unwrap()
        .starts_with("You help.\n\n"));
    assert!(messages[0]["content"]
        .as_str()
        .unwrap()
        .contains("JSON object"));
    assert!(app.backend.requests()[0].constraint.is_some());
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
    );
}

#[tokio::test]
async fn session_hints_of_real_clients_reach_the_turn_record() {
    let app = test_app();
    let send = |body: Value, headers: &'static [(&'static str, &'static str)]| {
        let router = app.router.clone();
        async move {
            let reply = post_raw(&router, "/v1/chat/completions", body.to_string(), headers).await;
            assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
        }
    };
    let mut body = chat("hi");
    body["prompt_cache_key"] = json!("pck");
    body["metadata"] = json!({"session_id": "meta", "conversation_id": "conv"});
    body["user"] = json!("ann");
    // OpenClaw's headers outrank the body's weaker hints; its traceparent is ignored.
    send(
        body.clone(),
        &[("session_id", "oc-1"), ("traceparent", "00-ab-cd-01")],
    )
    .await;
    send(body.clone(), &[("x-session-affinity", "oc-2")]).await;
    send(body.clone(), &[]).await;
    body["prompt_cache_key"] = Value::Null;
    send(body.clone(), &[]).await;
    body["metadata"] = json!({"conversation_id": "conv"});
    send(body.clone(), &[]).await;
    body["metadata"] = json!({"session_id": 7});
    send(body.clone(), &[]).await;
    body["session_id"] = json!("explicit");
    send(body, &[("session_id", "oc-1")]).await;
    let seen: Vec<(Option<String>, Option<LinkMethod>, Option<String>)> = app
        .sink
        .turns()
        .into_iter()
        .map(|t| (t.session_id, t.session_source, t.user))
        .collect();
    let named = |id: &str, method| (Some(id.to_string()), Some(method), Some("ann".to_string()));
    assert_eq!(
        seen,
        [
            named("oc-1", LinkMethod::AffinityHeader),
            named("oc-2", LinkMethod::AffinityHeader),
            named("pck", LinkMethod::PromptCacheKey),
            named("meta", LinkMethod::Metadata),
            named("conv", LinkMethod::Metadata),
            // `user` alone never names a session.
            (None, None, Some("ann".to_string())),
            named("explicit", LinkMethod::Body),
        ]
    );
}

#[tokio::test]
async fn session_headers_and_turn_record() {
    let app = test_app();
    let mut body = chat("remember me");
    body["session_id"] = json!("from-body");
    let reply = post_raw(
        &app.router,
        "/v1/chat/completions",
        body.to_string(),
        &[
            ("x-session-id", "from-header"),
            ("x-turn-type", "side"),
            ("x-session-done", "true"),
        ],
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let turn = &app.sink.turns()[0];
    assert_eq!(turn.response_id, id);
    assert_eq!(turn.session_id.as_deref(), Some("from-header"));
    assert_eq!(turn.session_source, Some(LinkMethod::Header));
    assert_eq!(turn.turn_type, TurnType::Side);
    assert!(turn.session_done);
    assert_eq!(turn.api_key_id, None);
    assert_eq!(turn.endpoint, "chat");
    assert_eq!(turn.model, "fake-model");
    assert_eq!(
        turn.messages,
        json!([{"role": "user", "content": "remember me"}])
    );
    assert_eq!(turn.policy_version, 3);
    assert_eq!(
        turn.prompt_token_ids,
        app.backend.requests()[0].prompt_tokens
    );
    assert_eq!(turn.choices[0].text, "You said: remember me");
    assert_eq!(turn.choices[0].token_ids.len(), turn.completion_tokens);
    assert_eq!(turn.choices[0].logprobs.len(), turn.completion_tokens);
    assert!(turn.time_to_first_token_ms.is_some());
}

#[tokio::test]
async fn legacy_completions() {
    let app = test_app_with(
        FakeConfig {
            reply: FakeReply::Script(Arc::new(|_, prompt| {
                format!("[{prompt}] and more text END tail")
            })),
            ..FakeConfig::default()
        },
        &[],
        1 << 20,
    );
    let reply = post(&app.router, "/v1/completions",
        json!({"model": "fake-model", "prompt": "Once", "max_tokens": 100, "stop": ["END"], "logprobs": 1})).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], "[Once] and more text ");
    assert_eq!(choice["finish_reason"], "stop");
    let logprobs = &choice["logprobs"];
    assert_eq!(
        logprobs["tokens"].as_array().unwrap().len(),
        "[Once] and more text ".len()
    );
    assert_eq!(logprobs["text_offset"][3], 3);
    assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 1);
    assert_eq!(
        app.backend.requests()[0].prompt_tokens,
        b"Once".iter().map(|&b| u32::from(b)).collect::<Vec<_>>()
    );
    // Default max_tokens is 16; token-id prompts and echo.
    let reply = post(
        &app.router,
        "/v1/completions",
        json!({"model": "fake-model", "prompt": [79, 110], "echo": true}),
    )
    .await
    .json();
    assert_eq!(reply["choices"][0]["text"], "On[On] and more te");
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    let turn = &app.sink.turns()[1];
    assert_eq!(turn.endpoint, "completion");
    assert_eq!(turn.messages, json!([{"role": "user", "content": "On"}]));
}
