//! /v1 refuses cross-site bodies and, without keys, foreign hosts and origins.

use super::*;
use hindsight::api::guard::HostPolicy;

/// A page on another site can POST `text/plain` or a form without a CORS preflight: such bodies
/// are refused before any handler runs, so nothing is generated, recorded or learned from.
#[tokio::test]
async fn cross_site_bodies_are_415_and_nothing_is_served_or_recorded() {
    let app = test_app();
    let completion = json!({"model": "fake-model", "prompt": "hi"});
    let response = json!({"model": "fake-model", "input": "hi"});
    let bodies = [
        ("/v1/chat/completions", chat("from a web page")),
        ("/v1/completions", completion),
        ("/v1/responses", response),
    ];
    let forms = [
        "text/plain",
        "text/plain;charset=UTF-8",
        "multipart/form-data; boundary=x",
    ];
    for (path, body) in &bodies {
        for content_type in forms
            .iter()
            .chain(&["application/x-www-form-urlencoded", ""])
        {
            let mut headers = vec![("origin", "http://127.0.0.1:8080")];
            if !content_type.is_empty() {
                headers.push(("content-type", content_type));
            }
            let reply = call(&app.router, "POST", path, &headers, Some(body.to_string())).await;
            reply.assert_error(415, INVALID, Some("unsupported_media_type"), None);
        }
    }
    assert!(app.backend.requests().is_empty(), "nothing was generated");
    assert!(app.sink.turns().is_empty(), "nothing was recorded");
    // What the SDKs send passes, with or without a charset.
    let json_ct = [("content-type", "application/json; charset=utf-8")];
    let (path, body) = &bodies[0];
    let reply = call(&app.router, "POST", path, &json_ct, Some(body.to_string())).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    // GETs carry no body and need no Content-Type.
    assert_eq!(get(&app.router, "/v1/models").await.status.as_u16(), 200);
}

async fn chat_with(router: &axum::Router, headers: &[(&str, &str)]) -> Reply {
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json"));
    let body = Some(chat("hi").to_string());
    call(router, "POST", "/v1/chat/completions", &headers, body).await
}

/// Without API keys, /v1 answers only requests addressed to loopback names (or an allowed host)
/// and refuses pages from other origins: DNS rebinding and cross-site fetches get 403.
#[tokio::test]
async fn foreign_host_or_origin_is_403_without_keys() {
    let app = test_app();
    for host in ["attacker.example", "attacker.example:80", "192.168.1.5:80"] {
        let reply = call(&app.router, "GET", "/v1/models", &[("host", host)], None).await;
        reply.assert_error(403, INVALID, Some("host_not_allowed"), None);
        let reply = chat_with(&app.router, &[("host", host)]).await;
        reply.assert_error(403, INVALID, Some("host_not_allowed"), None);
    }
    for origin in ["https://evil.example", "http://attacker.example:80", "null"] {
        let reply = chat_with(&app.router, &[("host", "127.0.0.1:80"), ("origin", origin)]).await;
        reply.assert_error(403, INVALID, Some("origin_not_allowed"), None);
    }
    assert!(app.backend.requests().is_empty() && app.sink.turns().is_empty());
    // Loopback names with any port pass, as do same-host pages.
    for host in [
        "127.0.0.1:8080",
        "localhost:1234",
        "[::1]:8080",
        "localhost",
    ] {
        let origin = format!("http://{host}");
        let reply = chat_with(&app.router, &[("host", host), ("origin", &origin)]).await;
        assert_eq!(reply.status.as_u16(), 200, "{host}: {}", reply.text);
    }
    // Routes outside /v1 are not guarded.
    let reply = call(
        &app.router,
        "GET",
        "/healthz",
        &[("host", "a.example")],
        None,
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200);

    // --allowed-host adds names; with API keys, the key is the protection and any Host passes.
    let state = hindsight::api::AppState::new(app.backend.clone(), app.sink.clone())
        .with_allowed_hosts(HostPolicy::new(["box.lan"]));
    let allowed = hindsight::api::app(state);
    let reply = chat_with(
        &allowed,
        &[("host", "box.lan:80"), ("origin", "http://box.lan")],
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let keyed = test_app_with(FakeConfig::default(), &["sk-right"], 1 << 20);
    let headers = [
        ("host", "api.example.com"),
        ("origin", "https://app.example.com"),
        ("authorization", "Bearer sk-right"),
    ];
    assert_eq!(
        chat_with(&keyed.router, &headers).await.status.as_u16(),
        200
    );
}
