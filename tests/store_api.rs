//! The feedback and sessions HTTP routes on both backends: envelopes, key isolation, deletes.

mod store_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::{Extension, Router};
use hindsight::api::caller::Caller;
use hindsight::api::{feedback, sessions};
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
