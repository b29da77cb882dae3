//! The admin API on both backends: auth modes, every read with learner rows written by plain
//! SQL, dashboard feedback, version actions through a fake learner, and the live SSE feed.

mod admin_support;
mod store_support;

use std::sync::Arc;
use std::time::Duration;

use admin_support::*;
use axum::http::{header, StatusCode};
use futures::StreamExt;
use hindsight::api::admin::{self, Admin, AdminAuth};
use hindsight::store::{Store, TurnSink};
use serde_json::json;
use store_support::{Conversation, TestDb};

async fn admin_api(db: &TestDb) {
    let store = db.open().await;
    let (first, _second, third) = seed(db, &store).await;
    let learner = Arc::new(FakeLearner::default());
    let app = admin::router(
        Admin::new(store.clone(), AdminAuth::new(Some(TOKEN), false)).with_control(learner.clone()),
    );

    // Auth: no token → envelope; the page → sign-in form; the form → an HttpOnly cookie.
    let reply = call(&app, "GET", "/admin/api/overview", &[], None).await;
    assert_envelope(
        &reply,
        StatusCode::UNAUTHORIZED,
        Some("admin_token_required"),
        None,
    );
    let reply = call(
        &app,
        "GET",
        "/admin/api/overview",
        &[("authorization", "Bearer nope")],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let page = call(&app, "GET", "/dashboard", &[], None).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(
        page.text.contains("<form") && !page.text.contains(TOKEN),
        "{}",
        page.text
    );
    let form = ("content-type", "application/x-www-form-urlencoded");
    let bad = call(&app, "POST", "/admin/login", &[form], Some("token=wrong")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let good = call(
        &app,
        "POST",
        "/admin/login",
        &[form],
        Some("token=admin-secret"),
    )
    .await;
    assert_eq!(good.status, StatusCode::SEE_OTHER);
    let cookie = good.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && !cookie.contains(TOKEN)
    );
    let pair = cookie.split(';').next().unwrap();
    let page = call(&app, "GET", "/dashboard", &[("cookie", pair)], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(
        call(&app, "GET", "/admin/api/me", &[("cookie", pair)], None)
            .await
            .body["auth"],
        "token"
    );
    let css = call(&app, "GET", "/dashboard/assets/app.css", &[], None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert_envelope(
        &call(&app, "GET", "/dashboard/assets/nope.js", &[], None).await,
        StatusCode::NOT_FOUND,
        Some("not_found"),
        None,
    );

    // Overview.
    let overview = get(&app, "/admin/api/overview").await.body;
    let c = &overview["counters"];
    assert_eq!(
        (c["turns"].as_i64(), c["sessions"].as_i64()),
        (Some(3), Some(2)),
        "{overview}"
    );
    assert_eq!(c["turns_with_next_state"], 1, "{overview}");
    assert_eq!(
        (c["feedback_down"].as_i64(), c["corrections"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (c["judged_turns"].as_i64(), c["samples_waiting"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (
            c["latest_version"].as_i64(),
            c["rejected_versions"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(overview["samples_by_kind"], json!({"both": 1, "rl": 1}));
    assert_eq!(overview["serving"]["pinned_version"], 1);
    // The judge said -1 where the user said down: one agreeing pair.
    assert_eq!(overview["agreement"]["agree"], 1, "{overview}");
    assert_eq!(overview["agreement"]["rate"], 1.0);

    let series = get(&app, "/admin/api/series?range=1h").await.body;
    let turns: i64 = series["series"]["series"]["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(turns, 3, "{series}");
    assert!((60..=61).contains(&series["series"]["starts"].as_array().unwrap().len()));
    assert_envelope(
        &call(&app, "GET", "/admin/api/series?range=2y", &[BEARER], None).await,
        StatusCode::BAD_REQUEST,
        None,
        Some("range"),
    );

    // Sessions: filters, search, paging.
    let all = get(&app, "/admin/api/sessions").await.body;
    assert_eq!(all["total"], 2, "{all}");
    let only = get(&app, "/admin/api/sessions?key=alice").await.body;
    assert_eq!(only["total"], 1, "{only}");
    let alice_pk = only["data"][0]["pk"].as_i64().unwrap();
    assert_eq!(only["data"][0]["corrections"], 1);
    assert_eq!(
        get(&app, "/admin/api/sessions?q=SCRIPT").await.body["total"],
        1
    );
    assert_eq!(
        get(&app, "/admin/api/sessions?q=100%25").await.body["total"],
        0
    );
    assert_eq!(
        get(&app, "/admin/api/sessions?rewarded=negative")
            .await
            .body["data"][0]["pk"],
        alice_pk
    );
    assert_eq!(
        get(&app, "/admin/api/sessions?rewarded=none").await.body["total"],
        1
    );
    assert_eq!(
        get(&app, "/admin/api/sessions?corrected=yes").await.body["total"],
        1
    );
    assert_eq!(
        get(&app, "/admin/api/sessions?corrected=no").await.body["data"][0]["key_id"],
        "bob"
    );
    assert_eq!(
        get(&app, "/admin/api/sessions?from=2000-01-01&to=2000-01-02")
            .await
            .body["total"],
        0
    );
    let page = get(&app, "/admin/api/sessions?limit=1&offset=1").await.body;
    assert_eq!(
        (
            page["data"].as_array().unwrap().len(),
            page["total"].as_i64()
        ),
        (1, Some(2))
    );
    for (query, param) in [
        ("limit=0", "limit"),
        ("rewarded=maybe", "rewarded"),
        ("corrected=2", "corrected"),
        ("from=yesterday", "from"),
        ("offset=-1", "offset"),
    ] {
        let reply = call(
            &app,
            "GET",
            &format!("/admin/api/sessions?{query}"),
            &[BEARER],
            None,
        )
        .await;
        assert_envelope(&reply, StatusCode::BAD_REQUEST, None, Some(param));
    }

    // A session as a timeline.
    let timeline = get(&app, &format!("/admin/api/sessions/{alice_pk}"))
        .await
        .body;
    let turns = timeline["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "{timeline}");
    assert_eq!(
        turns[0]["next_state"][0]["content"],
        "no, that's wrong, it is 4"
    );
    assert_eq!(turns[0]["judgements"][0]["hint"], "it is 4");
    assert_eq!(turns[0]["judgements"][0]["source"], "rules");
    assert_eq!(turns[0]["samples"][0]["kind"], "both");
    assert_eq!(turns[0]["feedback"][0]["correction"], "say 4");
    assert_eq!(turns[0]["policy_version"], 3);
    // How each turn joined the session (the second resent the first's history).
    assert_eq!(
        (&turns[0]["link_method"], &turns[1]["link_method"]),
        (&json!("new"), &json!("prefix"))
    );
    assert_envelope(
        &call(&app, "GET", "/admin/api/sessions/999999", &[BEARER], None).await,
        StatusCode::NOT_FOUND,
        Some("not_found"),
        None,
    );
    assert_envelope(
        &call(&app, "GET", "/admin/api/sessions/abc", &[BEARER], None).await,
        StatusCode::NOT_FOUND,
        Some("not_found"),
        None,
    );

    // Training.
    let steps = get(&app, "/admin/api/steps").await.body;
    assert_eq!(steps["data"][0]["metrics"]["loss"], 0.25, "{steps}");
    assert_eq!(
        (
            steps["data"][0]["samples"].as_i64(),
            steps["data"][0]["judge_score"].as_f64()
        ),
        (Some(1), Some(-1.0))
    );
    let versions = get(&app, "/admin/api/versions").await.body;
    assert_eq!(versions["data"][0]["status"], "rejected");
    assert_eq!(
        versions["data"][0]["reason"],
        "replies collapsed: 4 of 5 probes empty"
    );
    assert_eq!(versions["data"][0]["guard"]["empty"], 4);

    // Dashboard feedback on another key's turn, stored with source 'dashboard'.
    let reply = post(
        &app,
        "/admin/api/feedback",
        json!({"response_id": third, "rating": "down", "correction": "no script tags"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["source"], "dashboard");
    let n = db.scalar(&format!("SELECT COUNT(*) FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE t.response_id = '{third}' AND f.source = 'dashboard' AND f.correction = 'no script tags'")).await;
    assert_eq!(n, 1);
    assert_envelope(
        &post(
            &app,
            "/admin/api/feedback",
            json!({"response_id": "chatcmpl-nope", "rating": "up"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        Some("not_found"),
        None,
    );
    assert_envelope(
        &post(
            &app,
            "/admin/api/feedback",
            json!({"response_id": first, "rating": "meh"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        None,
        Some("rating"),
    );
    // A form post (what a cross-site page could send) is refused.
    let form_post = call(
        &app,
        "POST",
        "/admin/api/feedback",
        &[BEARER, form],
        Some("response_id=x&rating=up"),
    )
    .await;
    assert_eq!(
        form_post.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        form_post.text
    );

    // Version actions through the learner.
    assert_eq!(
        post(&app, "/admin/api/learner/rollback", json!({"version": 1}))
            .await
            .body["pinned_version"],
        1
    );
    assert_eq!(
        post(&app, "/admin/api/learner/pin", json!({"version": 0}))
            .await
            .body["serving_version"],
        0
    );
    assert_eq!(
        post(&app, "/admin/api/learner/follow-latest", json!({}))
            .await
            .body["following_latest"],
        true
    );
    assert_eq!(
        *learner.calls.lock().unwrap(),
        ["rollback 1", "pin 0", "follow"]
    );
    assert_eq!(
        get(&app, "/admin/api/learner").await.body["judge_chain"],
        json!(["feedback", "rules"])
    );
    assert_envelope(
        &post(&app, "/admin/api/learner/pin", json!({"version": 99})).await,
        StatusCode::CONFLICT,
        Some("learner_refused"),
        None,
    );
    assert_envelope(
        &post(&app, "/admin/api/learner/rollback", json!({"version": -1})).await,
        StatusCode::BAD_REQUEST,
        None,
        Some("version"),
    );
    assert_eq!(
        post(&app, "/admin/api/learner/rollback", json!({"v": 1}))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // No learner configured: status says so, actions are refused clearly.
    let off = admin::router(Admin::new(
        store.clone(),
        AdminAuth::new(Some(TOKEN), false),
    ));
    let status = get(&off, "/admin/api/learner").await.body;
    assert_eq!(status["enabled"], false);
    assert!(status["note"].as_str().unwrap().contains("learning is off"));
    assert_envelope(
        &post(&off, "/admin/api/learner/rollback", json!({"version": 1})).await,
        StatusCode::CONFLICT,
        Some("learning_off"),
        None,
    );

    // No token: open on loopback (to loopback host names only), refused elsewhere.
    let open = admin::router(Admin::new(store.clone(), AdminAuth::new(None, true)));
    assert_eq!(
        call(
            &open,
            "GET",
            "/admin/api/overview",
            &[("host", "127.0.0.1:8080")],
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_envelope(
        &call(
            &open,
            "GET",
            "/admin/api/overview",
            &[("host", "evil.example")],
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        Some("admin_host_refused"),
        None,
    );
    let public = admin::router(Admin::new(store.clone(), AdminAuth::new(None, false)));
    assert_envelope(
        &call(&public, "GET", "/admin/api/overview", &[BEARER], None).await,
        StatusCode::FORBIDDEN,
        Some("admin_disabled"),
        None,
    );
    assert_envelope(
        &call(&public, "GET", "/dashboard", &[], None).await,
        StatusCode::FORBIDDEN,
        Some("admin_disabled"),
        None,
    );

    live_feed(db, &store, &first).await;
    store.shutdown().await;
}

/// New rows arrive as SSE events; shutdown ends the stream.
async fn live_feed(db: &TestDb, store: &Store, first: &str) {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin =
        Admin::new(store.clone(), AdminAuth::new(Some(TOKEN), false)).with_shutdown(stop_rx);
    admin.live_poll = Duration::from_millis(100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, admin::router(admin)).await });
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/admin/api/live"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    read_until(&mut body, &mut seen, "event: hello").await;

    let mut conversation = Conversation::new(Some("carol"), "sys");
    store.record(conversation.say("live question", "live answer"));
    db.exec(&format!(
        "INSERT INTO judgements (turn_id, judge, votes, score, created_at, source) VALUES \
         ((SELECT id FROM turns WHERE response_id = '{first}'), 'openai', '[1,1,-1]', 1.0, '{}', 'openai')",
        now()
    ))
    .await;
    db.exec(&format!("INSERT INTO training_steps (step, policy_version, metrics, created_at) VALUES (2, 1, '{{\"loss\":0.5}}', '{}')", now())).await;
    db.exec(&format!("INSERT INTO policy_versions (version, path, status, created_at) VALUES (3, '/a/v3', 'published', '{}')", now())).await;
    db.exec("UPDATE learner_state SET serving_version = 3, pinned_version = NULL WHERE id = 1")
        .await;
    read_until(&mut body, &mut seen, "live answer").await;
    read_until(&mut body, &mut seen, "event: judgement").await;
    read_until(&mut body, &mut seen, "event: step").await;
    read_until(&mut body, &mut seen, "event: version").await;
    read_until(&mut body, &mut seen, "event: learner").await;
    assert!(seen.contains("event: turn"), "{seen}");

    stop.send(true).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the live stream did not end on shutdown");
}

async fn read_until(
    body: &mut (impl futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Unpin),
    seen: &mut String,
    want: &str,
) {
    let fut = async {
        while !seen.contains(want) {
            let chunk = body.next().await.expect("stream open").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .is_err()
    {
        panic!("no {want:?} in the live feed:\n{seen}");
    }
}

both_backends!(admin_endpoints, admin_api);

/// A sign-in from `peer` (as `ConnectInfo`, which `api::server::serve` provides).
async fn sign_in(app: &axum::Router, peer: &str, token: &str) -> axum::response::Response {
    use tower::ServiceExt;
    let mut request = axum::http::Request::post("/admin/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!("token={token}")))
        .unwrap();
    let addr: std::net::SocketAddr = peer.parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    app.clone().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_client_and_open_mode_refuses_foreign_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(hindsight::store::StoreConfig::new(None, dir.path()))
        .await
        .unwrap();
    let app = admin::router(Admin::new(
        store.clone(),
        AdminAuth::new(Some(TOKEN), false),
    ));
    let attacker = "198.51.100.7:5000";
    for _ in 0..admin::limit::LOGIN_ATTEMPTS {
        let reply = sign_in(&app, attacker, "guess").await;
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    }
    // Over the limit: 429 in the envelope, even with the right token, until the window passes.
    for token in ["guess", TOKEN] {
        let reply = sign_in(&app, attacker, token).await;
        assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = reply.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((50..=60).contains(&wait), "Retry-After {wait}");
        let bytes = axum::body::to_bytes(reply.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    }
    // Another client is not affected, and a successful sign-in does not count.
    for _ in 0..admin::limit::LOGIN_ATTEMPTS + 1 {
        let reply = sign_in(&app, "203.0.113.9:6000", TOKEN).await;
        assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    }

    // Open (no token, loopback bind): pages on other sites are refused; --allowed-host adds names.
    let hosts = hindsight::api::guard::HostPolicy::new(["box.lan"]);
    let open = admin::router(Admin::new(
        store.clone(),
        AdminAuth::new(None, true).with_hosts(hosts),
    ));
    let uri = "/admin/api/overview";
    let foreign = [
        ("host", "127.0.0.1:8080"),
        ("origin", "https://evil.example"),
    ];
    let reply = call(&open, "GET", uri, &foreign, None).await;
    assert_envelope(
        &reply,
        StatusCode::FORBIDDEN,
        Some("admin_origin_refused"),
        None,
    );
    let own = [("host", "box.lan:8080"), ("origin", "http://box.lan:8080")];
    assert_eq!(
        call(&open, "GET", uri, &own, None).await.status,
        StatusCode::OK
    );
    store.shutdown().await;
}
