//! GET /openapi.json: a hand-maintained OpenAPI 3.1 description of what this server serves.
//! A test requests every documented path and checks every served route is documented.

use axum::routing::get;
use axum::Json;
use axum::Router;
use serde_json::{json, Value};

pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// (method, path) of every route `app()` serves, as documented.
pub fn documented_routes() -> Vec<(String, String)> {
    let doc = document();
    let mut routes = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().map(|m| m.keys()).into_iter().flatten() {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        out.insert(
            (*code).to_string(),
            json!({"description": error_description(code), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(out)
}

fn error_description(code: &str) -> &'static str {
    match code {
        "400" => {
            "Invalid request (malformed JSON, wrong type, value out of range, context too long)"
        }
        "401" => "Missing or wrong API key",
        "404" => "Unknown model",
        "413" => "Request body too large",
        "429" => "The engine queue is full; retry later",
        _ => "Server error",
    }
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

fn json_body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn generation_responses(schema: &str, chunk: &str) -> Value {
    merge(
        json!({"200": {
            "description": "The completion, or with `stream: true` a text/event-stream of chunks ending with `data: [DONE]`",
            "content": {
                "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
                "text/event-stream": {"schema": {"$ref": format!("#/components/schemas/{chunk}")}}
            }
        }}),
        error_responses(&["400", "401", "404", "413", "429", "500"]),
    )
}

fn session_headers() -> Value {
    json!([
        {"name": "X-Session-Id", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Links this turn to a conversation"},
        {"name": "X-Turn-Type", "in": "header", "required": false, "schema": {"type": "string", "enum": ["main", "side"]}, "description": "side turns are logged but never trained on"},
        {"name": "X-Session-Done", "in": "header", "required": false, "schema": {"type": "string", "enum": ["true", "false"]}, "description": "Marks the last turn of the session"}
    ])
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hindsight",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An OpenAI-compatible server for a local model that learns from being used."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        },
        "paths": paths()
    })
}

fn schemas() -> Value {
    merge(common_schemas(), request_schemas())
}

fn common_schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]}
                }
            }}
        },
        "Usage": {"type": "object", "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"}
        }},
        "Message": {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"oneOf": [
                {"type": "string"},
                {"type": "null"},
                {"type": "array", "items": {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}
            ]},
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": {"$ref": "#/components/schemas/ToolCall"}},
            "tool_call_id": {"type": "string"}
        }},
        "ToolCall": {"type": "object", "properties": {
            "id": {"type": "string"},
            "type": {"const": "function"},
            "function": {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "string", "description": "JSON object as a string"}}}
        }},
        "Tool": {"type": "object", "required": ["type", "function"], "properties": {
            "type": {"const": "function"},
            "function": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "description": {"type": "string"}, "parameters": {"type": "object"}, "strict": {"type": "boolean"}
            }}
        }},
        "Stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "StreamOptions": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}
    })
}

fn request_schemas() -> Value {
    let number = |min: f64, max: f64| json!({"type": "number", "minimum": min, "maximum": max});
    json!({
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string"},
                "messages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Message"}},
                "temperature": number(0.0, 2.0),
                "top_p": number(0.0, 1.0),
                "max_tokens": {"type": "integer", "minimum": 1},
                "max_completion_tokens": {"type": "integer", "minimum": 1},
                "stop": {"$ref": "#/components/schemas/Stop"},
                "seed": {"type": "integer", "description": "Choice i of n is sampled with seed + i"},
                "n": {"type": "integer", "minimum": 1, "maximum": 128},
                "stream": {"type": "boolean"},
                "stream_options": {"$ref": "#/components/schemas/StreamOptions"},
                "logprobs": {"type": "boolean"},
                "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
                "presence_penalty": number(-2.0, 2.0),
                "frequency_penalty": number(-2.0, 2.0),
                "tools": {"type": "array", "items": {"$ref": "#/components/schemas/Tool"}},
                "tool_choice": {"oneOf": [
                    {"type": "string", "enum": ["none", "auto", "required"]},
                    {"type": "object", "properties": {"type": {"const": "function"}, "function": {"type": "object", "properties": {"name": {"type": "string"}}}}}
                ]},
                "parallel_tool_calls": {"type": "boolean"},
                "user": {"type": "string"},
                "metadata": {"type": "object"},
                "response_format": {"type": "object", "properties": {"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]}}},
                "session_id": {"type": "string", "description": "Hindsight extension: conversation id, never shown to the model"}
            }
        },
        "ChatCompletion": {"type": "object", "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string", "description": "hs-v<policy version>"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"},
                "message": {"$ref": "#/components/schemas/Message"},
                "logprobs": {"type": ["object", "null"]},
                "finish_reason": {"type": "string", "enum": ["stop", "length", "tool_calls"]}
            }}},
            "usage": {"$ref": "#/components/schemas/Usage"}
        }},
        "ChatCompletionChunk": {"type": "object", "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion.chunk"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"},
                "delta": {"type": "object", "properties": {
                    "role": {"type": "string"},
                    "content": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {"type": "object"}}
                }},
                "logprobs": {"type": ["object", "null"]},
                "finish_reason": {"type": ["string", "null"]}
            }}},
            "usage": {"$ref": "#/components/schemas/Usage"}
        }},
        "CompletionRequest": {
            "type": "object",
            "required": ["model", "prompt"],
            "properties": {
                "model": {"type": "string"},
                "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 1}, {"type": "array", "items": {"type": "integer"}}]},
                "max_tokens": {"type": "integer", "minimum": 1, "default": 16},
                "temperature": number(0.0, 2.0),
                "top_p": number(0.0, 1.0),
                "n": {"type": "integer", "minimum": 1, "maximum": 128},
                "stream": {"type": "boolean"},
                "stream_options": {"$ref": "#/components/schemas/StreamOptions"},
                "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
                "echo": {"type": "boolean"},
                "stop": {"$ref": "#/components/schemas/Stop"},
                "presence_penalty": number(-2.0, 2.0),
                "frequency_penalty": number(-2.0, 2.0),
                "seed": {"type": "integer"},
                "user": {"type": "string"},
                "session_id": {"type": "string"}
            }
        },
        "Completion": {"type": "object", "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "text": {"type": "string"},
                "index": {"type": "integer"},
                "logprobs": {"type": ["object", "null"]},
                "finish_reason": {"type": ["string", "null"]}
            }}},
            "usage": {"$ref": "#/components/schemas/Usage"}
        }},
        "Model": {"type": "object", "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"}
        }}
    })
}

fn paths() -> Value {
    json!({
        "/v1/chat/completions": {"post": {
            "summary": "Create a chat completion",
            "security": [{"bearer": []}],
            "parameters": session_headers(),
            "requestBody": json_body("ChatCompletionRequest"),
            "responses": generation_responses("ChatCompletion", "ChatCompletionChunk")
        }},
        "/v1/completions": {"post": {
            "summary": "Create a text completion (legacy)",
            "security": [{"bearer": []}],
            "parameters": session_headers(),
            "requestBody": json_body("CompletionRequest"),
            "responses": generation_responses("Completion", "Completion")
        }},
        "/v1/models": {"get": {
            "summary": "List the served model",
            "security": [{"bearer": []}],
            "responses": merge(
                json!({"200": {"description": "The model list", "content": {"application/json": {"schema": {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}}}}}),
                error_responses(&["401"])
            )
        }},
        "/v1/models/{id}": {"get": {
            "summary": "Describe a model",
            "security": [{"bearer": []}],
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": merge(
                json!({"200": {"description": "The model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}}}),
                error_responses(&["401", "404"])
            )
        }},
        "/healthz": {"get": {
            "summary": "Liveness",
            "responses": {"200": {"description": "The process answers", "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"const": "ok"}}}}}}}
        }},
        "/readyz": {"get": {
            "summary": "Readiness: model loaded and every dependency ready",
            "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}, "model": {"type": "string"}, "policy_version": {"type": "integer"}, "checks": {"type": "object"}}}}}},
                "503": {"description": "A dependency is not ready"}
            }
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}
        }},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}
    })
}

/// GET /openapi.json.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/openapi.json", get(openapi_json))
}
