//! The feedback and sessions HTTP routes on both backends: envelopes, key isolation, deletes.

mod store_support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::{Extension, Router};
use hindsight::api::caller::Caller;
use hindsight::api::testing::{FakeBackend, FakeConfig};
use hindsight::api::{app_with_routes, feedback, sessions, AppState};
use hindsight::store::{Store, TurnSink};
use serde_json::{json, Value};
use store_support::{settle, user, Conversation, TestDb};
use tower::ServiceExt;

fn app(store: &Store, key: Option<&str>) -> Router {
    feedback::router(store.clone())
        .merge(sessions::router(store.clone()))
        .layer(Extension(Caller {
            key_id: key.map(str::to_string),
        }))
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Vec<u8>>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, value)
}

fn assert_envelope(body: &Value, param: Option<&str>) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("code").is_some() && error.get("param").is_some(),
        "{body}"
    );
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
}

async fn feedback_api(db: &TestDb) {
    let store = db.open().await;
    let alice = app(&store, Some("alice"));
    let bob = app(&store, Some("bob"));
    let mut conversation = Conversation::new(Some("alice"), "sys");
    let first = conversation.say("q1", "a1");
    store.record(first.clone());
    // Feedback right behind a turn that may still be queued: accepted, never lost.
    let body = json!({"response_id": first.response_id, "rating": "up"}).to_string();
    let (status, created) = call(&alice, "POST", "/v1/feedback", Some(body.into_bytes())).await;
    assert!(
        status == StatusCode::OK || status == StatusCode::ACCEPTED,
        "{status} {created}"
    );
    assert_eq!(created["rating"], "up");
    settle(&store).await;

    let body = json!({"response_id": first.response_id, "rating": "down", "correction": "say a2"});
    let (status, _) = call(
        &alice,
        "POST",
        "/v1/feedback",
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let uri = format!("/v1/feedback?response_id={}", first.response_id);
    let (status, listed) = call(&alice, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0]["rating"].as_str(), data[0]["source"].as_str()),
        (Some("up"), Some("api"))
    );
    assert_eq!(data[1]["correction"], "say a2");

    // Another key sees nothing and cannot rate it.
    let (status, body) = call(&bob, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&body, None);
    let foreign = json!({"response_id": first.response_id, "rating": "down"}).to_string();
    let (status, body) = call(&bob, "POST", "/v1/feedback", Some(foreign.into_bytes())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&body, None);

    let unknown = json!({"response_id": "chatcmpl-nope", "rating": "up"}).to_string();
    let (status, body) = call(&alice, "POST", "/v1/feedback", Some(unknown.into_bytes())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&body, None);
    let bad_rating = json!({"response_id": first.response_id, "rating": "meh"}).to_string();
    let (status, body) = call(
        &alice,
        "POST",
        "/v1/feedback",
        Some(bad_rating.into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&body, Some("rating"));
    let (status, body) = call(&alice, "GET", "/v1/feedback", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&body, Some("response_id"));
    assert_eq!(store.count("feedback").await.unwrap(), 2);
    store.shutdown().await;
}
both_backends!(feedback_routes, feedback_api);

async fn sessions_api_and_delete(db: &TestDb) {
    let store = db.open().await;
    let alice = app(&store, Some("alice"));
    let bob = app(&store, Some("bob"));
    let mut kept = Conversation::new(Some("alice"), "keep");
    let mut doomed = Conversation::new(Some("alice"), "delete me");
    for i in 0..3 {
        store.record(kept.say(&format!("k{i}"), &format!("rk{i}")));
        store.record(doomed.say(&format!("d{i}"), &format!("rd{i}")));
    }
    let mut thumbs = doomed.history.clone();
    thumbs.push(user("👎"));
    store.record(store_support::turn(Some("alice"), thumbs, "sorry"));
    settle(&store).await;
    // The learner's rows for every turn, to check the delete cascades to them.
    let now = "'2025-01-01T00:00:00+00:00'";
    db.exec(&format!(
        "INSERT INTO judgements (turn_id, judge, votes, score, hint, created_at) \
         SELECT id, 'test-judge', '[1, 1]', 1.0, 'fine', {now} FROM turns"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO training_samples (turn_id, policy_version, reward, created_at) \
         SELECT id, 3, 0.5, {now} FROM turns"
    ))
    .await;

    let (status, listed) = call(&alice, "GET", "/v1/sessions", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<String> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let (_, bob_list) = call(&bob, "GET", "/v1/sessions", None).await;
    assert_eq!(bob_list["data"], json!([]));

    let mut doomed_id = None;
    for id in &ids {
        let (status, detail) = call(&alice, "GET", &format!("/v1/sessions/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        let turns = detail["turns"].as_array().unwrap();
        assert!(
            turns[0].get("token_ids").is_none(),
            "no token arrays over HTTP"
        );
        assert_eq!(turns[0]["judgement"]["judge"], "test-judge");
        assert_eq!(turns[0]["reward"], 0.5);
        if turns[0]["response"]["content"] == "rd0" {
            assert_eq!(turns.len(), 4);
            assert_eq!(turns[2]["feedback"][0]["rating"], "down");
            doomed_id = Some(id.clone());
        } else {
            assert_eq!(turns.len(), 3);
        }
    }
    let doomed_id = doomed_id.expect("doomed session listed");
    let (status, body) = call(&bob, "GET", &format!("/v1/sessions/{doomed_id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&body, None);
    let (status, _) = call(&bob, "DELETE", &format!("/v1/sessions/{doomed_id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        store.count("turns").await.unwrap(),
        7,
        "bob deleted nothing"
    );

    let (status, body) = call(&alice, "DELETE", &format!("/v1/sessions/{doomed_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["deleted"], true);
    assert_eq!(store.count("sessions").await.unwrap(), 1);
    assert_eq!(store.count("turns").await.unwrap(), 3);
    assert_eq!(store.count("next_states").await.unwrap(), 2);
    assert_eq!(store.count("feedback").await.unwrap(), 0);
    assert_eq!(store.count("judgements").await.unwrap(), 3);
    assert_eq!(store.count("training_samples").await.unwrap(), 3);
    let (status, _) = call(&alice, "GET", &format!("/v1/sessions/{doomed_id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&alice, "GET", "/v1/sessions?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&body, Some("limit"));
    store.shutdown().await;
}
both_backends!(session_routes, sessions_api_and_delete);

/// The generation routes on the fake engine, writing to the store, plus the sessions routes.
fn chat_app(store: &Store) -> Router {
    let backend = Arc::new(FakeBackend::new(FakeConfig::default()));
    let state = AppState::new(backend, Arc::new(store.clone()));
    app_with_routes(state, sessions::openapi_router(store.clone()))
}

async fn chat_call(app: &Router, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn link_methods(session: &Value) -> Vec<&str> {
    session["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["link_method"].as_str().unwrap_or("?"))
        .collect()
}

/// An OpenClaw-like client over HTTP: no session header, a date line that changes, one
/// `max_completion_tokens: 1` probe of the prompt size; then each hint a client may send, and
/// the 256-byte cap.
async fn real_client_sessions(db: &TestDb) {
    let store = db.open().await;
    let app = chat_app(&store);
    let trace = [(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )];
    let system =
        |date: &str| json!({"role": "system", "content": format!("Agent.\nCurrent date: {date}")});
    let q1 = user("[Mon 2025-06-02 23:59] hello");
    let body =
        json!({"model": "fake-model", "temperature": 0, "messages": [system("2025-06-02"), q1]});
    let (status, first) = chat_call(&app, body, &trace).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let reply = first["choices"][0]["message"].clone();
    let q2 = user("[Tue 2025-06-03 00:01] and now?");
    let messages = json!([system("2025-06-03"), q1, reply, q2]);
    let body = json!({"model": "fake-model", "temperature": 0, "messages": messages,
        "max_completion_tokens": 1});
    let (status, cut) = chat_call(&app, body, &trace).await;
    assert_eq!(
        cut["choices"][0]["finish_reason"], "length",
        "{status} {cut}"
    );
    let body = json!({"model": "fake-model", "temperature": 0, "messages": messages});
    assert_eq!(chat_call(&app, body, &trace).await.0, StatusCode::OK);
    settle(&store).await;

    let (_, list) = call(&app, "GET", "/v1/sessions", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    let id = list["data"][0]["id"].as_str().unwrap();
    let (_, session) = call(&app, "GET", &format!("/v1/sessions/{id}"), None).await;
    assert_eq!(
        link_methods(&session),
        ["new", "history", "history"],
        "{session}"
    );
    let turns = &session["turns"];
    assert_eq!(turns[0]["next_state"][0]["content"], q2["content"]);
    assert_eq!(
        (&turns[1]["turn_type"], &turns[1]["side_reason"]),
        (&json!("side"), &json!("length_cut"))
    );
    assert_eq!(
        (&turns[2]["turn_type"], &turns[2]["side_reason"]),
        (&json!("main"), &Value::Null)
    );

    // Each hint names a session and is recorded; the strongest one present wins.
    let hinted = |extra: Value| {
        let mut body = json!({"model": "fake-model", "temperature": 0, "messages": [user("hint")]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // (body, headers, the session it names, how)
    type Case<'a> = (Value, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            hinted(json!({})),
            vec![("x-session-id", "h-header")],
            "h-header",
            "header",
        ),
        (
            hinted(json!({"session_id": "h-body"})),
            vec![("session_id", "h-oc")],
            "h-body",
            "body",
        ),
        (
            hinted(json!({"prompt_cache_key": "h-pck"})),
            vec![("session_id", "h-oc")],
            "h-oc",
            "affinity_header",
        ),
        (
            hinted(json!({"prompt_cache_key": "h-pck"})),
            vec![("x-session-affinity", "h-aff")],
            "h-aff",
            "affinity_header",
        ),
        (
            hinted(json!({"prompt_cache_key": "h-pck", "metadata": {"session_id": "h-meta"}})),
            vec![],
            "h-pck",
            "prompt_cache_key",
        ),
        (
            hinted(json!({"metadata": {"conversation_id": "h-conv"}, "user": "ann"})),
            vec![],
            "h-conv",
            "metadata",
        ),
    ];
    for (body, headers, name, method) in cases {
        let (status, reply) = chat_call(&app, body, &headers).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        let (status, session) = call(&app, "GET", &format!("/v1/sessions/{name}"), None).await;
        assert_eq!(status, StatusCode::OK, "{name}: {session}");
        assert_eq!(link_methods(&session), [method], "{name}");
        assert_eq!(session["explicit"], true);
    }
    // `user` alone names no session.
    let (status, _) = chat_call(&app, hinted(json!({"user": "ann"})), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = call(&app, "GET", "/v1/sessions?limit=100", None).await;
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["id"] != "ann"));

    // Over 256 bytes: a 400 in the envelope, nothing stored.
    let turns_before = store.count("turns").await.unwrap();
    let long = "x".repeat(257);
    let (status, error) = chat_call(&app, hinted(json!({})), &[("x-session-id", &long)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&error, Some("X-Session-Id"));
    let (status, error) = chat_call(&app, hinted(json!({"prompt_cache_key": long})), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&error, Some("prompt_cache_key"));
    settle(&store).await;
    assert_eq!(store.count("turns").await.unwrap(), turns_before);
    store.shutdown().await;
}
both_backends!(real_clients, real_client_sessions);

/// Bad bodies are refused before the store is touched: the database here is unreachable, so
/// any store access would answer 503 (or hang), not 400/413.
#[tokio::test]
async fn malformed_and_huge_feedback_bodies_never_reach_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(
        Some("postgres://postgres@127.0.0.1:1/unreachable"),
        dir.path(),
    )
    .await
    .unwrap();
    let app = app(&store, Some("k"));
    let cases: Vec<(Vec<u8>, StatusCode)> = vec![
        (b"{not json".to_vec(), StatusCode::BAD_REQUEST),
        (b"[]".to_vec(), StatusCode::BAD_REQUEST),
        (
            br#"{"response_id": 5, "rating": "up"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (br#"{"rating": "up"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (
            br#"{"response_id": "x", "rating": "up", "extra": 1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"response_id": "x", "rating": "UP"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"response_id": "x", "rating": "up", "correction": "y".repeat(40_000)})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (vec![b' '; 1 << 20], StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (body, expected) in cases {
        let started = std::time::Instant::now();
        let (status, response) = call(&app, "POST", "/v1/feedback", Some(body)).await;
        assert_eq!(status, expected, "{response}");
        assert_envelope(&response, None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    assert_eq!(store.health().journal_rows, 0);
    assert_eq!(store.health().queue_depth, 0);
}
