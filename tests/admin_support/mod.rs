//! Helpers for tests/admin_api.rs: a fake learner, admin router calls, the error envelope
//! check and the seeded rows every read is checked against.

use std::sync::Mutex;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use futures::future::BoxFuture;
use hindsight::api::admin::{LearnerControl, LearnerStatus};
use hindsight::store::{Store, TurnSink};
use serde_json::Value;
use tower::ServiceExt;

use crate::store_support::{settle, Conversation, TestDb};

pub const TOKEN: &str = "admin-secret";

#[derive(Default)]
pub struct FakeLearner {
    pub calls: Mutex<Vec<String>>,
    pub status: Mutex<LearnerStatus>,
}

impl FakeLearner {
    fn answer(
        &self,
        call: String,
        pin: Option<i64>,
    ) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        Box::pin(async move {
            if pin == Some(99) {
                return Err("version 99 does not exist".to_string());
            }
            self.calls.lock().unwrap().push(call);
            let mut status = self.status.lock().unwrap();
            status.enabled = true;
            status.mode = "combined".into();
            status.judge_chain = vec!["feedback".into(), "rules".into()];
            status.note = Some("judge: rules only (default model)".into());
            if let Some(v) = pin {
                status.serving_version = v;
                status.pinned_version = Some(v);
                status.following_latest = false;
            } else {
                status.pinned_version = None;
                status.following_latest = true;
            }
            Ok(status.clone())
        })
    }
}

impl LearnerControl for FakeLearner {
    fn status(&self) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        let status = self.status.lock().unwrap().clone();
        Box::pin(async move { Ok(status) })
    }
    fn rollback(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        self.answer(format!("rollback {version}"), Some(version))
    }
    fn pin(&self, version: i64) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        self.answer(format!("pin {version}"), Some(version))
    }
    fn follow_latest(&self) -> BoxFuture<'_, Result<LearnerStatus, String>> {
        self.answer("follow".into(), None)
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
    pub text: String,
}

pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

pub const BEARER: (&str, &str) = ("authorization", "Bearer admin-secret");
pub const JSON_CT: (&str, &str) = ("content-type", "application/json");

pub async fn get(app: &Router, uri: &str) -> Reply {
    let reply = call(app, "GET", uri, &[BEARER], None).await;
    assert_eq!(reply.status, StatusCode::OK, "GET {uri}: {}", reply.text);
    reply
}

pub async fn post(app: &Router, uri: &str, body: Value) -> Reply {
    call(
        app,
        "POST",
        uri,
        &[BEARER, JSON_CT],
        Some(&body.to_string()),
    )
    .await
}

pub fn assert_envelope(reply: &Reply, status: StatusCode, code: Option<&str>, param: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.text);
    let error = &reply.body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        reply.text
    );
    if let Some(code) = code {
        assert_eq!(error["code"], code, "{}", reply.text);
    }
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{}", reply.text);
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// Two keys' sessions, a next state, feedback, and learner rows written as the learner would.
pub async fn seed(db: &TestDb, store: &Store) -> (String, String, String) {
    let mut alice = Conversation::new(Some("alice"), "sys");
    let first = alice.say("What is 2+2? <b>bold</b>", "5");
    let second = alice.say("no, that's wrong, it is 4", "Sorry: 4.");
    let mut bob = Conversation::new(Some("bob"), "sys");
    let third = bob.say("hello there", "Hi! <script>alert(1)</script>");
    for turn in [&first, &second, &third] {
        store.record(turn.clone());
    }
    settle(store).await;
    store
        .add_feedback(
            Some("alice"),
            &first.response_id,
            hindsight::store::Rating::Down,
            Some("say 4".into()),
            hindsight::store::FeedbackSource::Api,
        )
        .await
        .unwrap();
    let t = now();
    let id = |r: &str| format!("(SELECT id FROM turns WHERE response_id = '{r}')");
    db.exec(&format!(
        "INSERT INTO judgements (turn_id, judge, votes, score, hint, created_at, source, hint_votes) VALUES \
         ({}, 'rules', '[-1]', -1.0, 'it is 4', '{t}', 'rules', '[\"it is 4\"]'), \
         ({}, 'rules', '[1]', 1.0, NULL, '{t}', 'rules', NULL)",
        id(&first.response_id), id(&second.response_id)
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO training_samples (turn_id, policy_version, reward, kind, hint, used_in_step, created_at) VALUES \
         ({}, 3, -1.0, 'both', 'it is 4', 1, '{t}'), ({}, 3, 1.0, 'rl', NULL, NULL, '{t}')",
        id(&first.response_id), id(&second.response_id)
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO training_steps (step, policy_version, created_version, metrics, created_at) VALUES \
         (1, 0, 1, '{{\"loss\":0.25,\"clip_fraction\":0.1,\"kl\":0.01,\"mean_reward\":-1,\"samples_rl\":0,\"samples_opd\":0,\"samples_both\":1}}', '{t}')"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO policy_versions (version, path, status, metrics, created_at, step, reason, guard) VALUES \
         (1, '/a/v1', 'promoted', NULL, '{t}', 1, NULL, NULL), \
         (2, '/a/v2', 'rejected', NULL, '{t}', 2, 'replies collapsed: 4 of 5 probes empty', '{{\"empty\":4}}')"
    ))
    .await;
    db.exec("UPDATE learner_state SET serving_version = 1, pinned_version = 1 WHERE id = 1")
        .await;
    (first.response_id, second.response_id, third.response_id)
}
