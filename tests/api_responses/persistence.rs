//! Stored responses on the real store (SQLite and Postgres): restarts, sessions, feedback.

use super::*;

/// The real store: responses survive a restart, follow-ups find them and their turns land in
/// one session, feedback reaches the turn by the response id.
async fn survives_a_restart(db: &store_support::TestDb) {
    let (id, first_session) = {
        let store = db.open().await;
        let responses = ResponseStore::persistent(&store);
        let app = app_on_store(&store, responses.clone()).await;
        let mut request = ask(json!("remember me"));
        request["instructions"] = json!("Be kind.");
        let created = create(&app.router, request).await;
        let id = created["id"].as_str().unwrap().to_string();
        let feedback = post(
            &app.router,
            "/v1/feedback",
            json!({"response_id": id, "rating": "up"}),
        )
        .await;
        assert!(
            feedback.status == 200 || feedback.status == 202,
            "{}",
            feedback.text
        );
        let deleted = create(&app.router, ask(json!("delete me"))).await;
        let deleted_id = deleted["id"].as_str().unwrap().to_string();
        assert_eq!(
            delete(&app.router, &format!("/v1/responses/{deleted_id}"), None)
                .await
                .status,
            200
        );
        responses.shutdown().await;
        store.shutdown().await;
        (id, app.sink_session())
    };
    assert_eq!(db.scalar("SELECT COUNT(*) FROM responses").await, 1);

    let store = db.open().await;
    let responses = ResponseStore::persistent(&store);
    let app = app_on_store(&store, responses.clone()).await;
    let fetched = get(&app.router, &format!("/v1/responses/{id}")).await;
    assert_eq!(fetched.status, 200, "{}", fetched.text);
    assert_eq!(fetched.json()["id"], id.as_str());
    assert_eq!(output_text(&fetched.json()), "You said: remember me");
    let mut follow = ask(json!("who am I?"));
    follow["previous_response_id"] = json!(id);
    create(&app.router, follow).await;
    assert_eq!(
        app.backend.prompts().last().unwrap().messages,
        vec![
            json!({"role": "user", "content": "remember me"}),
            json!({"role": "assistant", "content": "You said: remember me"}),
            json!({"role": "user", "content": "who am I?"}),
        ]
    );
    assert_eq!(app.sink_session(), first_session);
    store.flush().await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM turns").await, 3);
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM turns t JOIN turns p ON t.parent_turn = p.id \
                   WHERE t.endpoint = 'responses' AND t.session_pk = p.session_pk"
        )
        .await,
        1,
        "the follow-up continues its predecessor's session"
    );
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM turns WHERE endpoint = 'responses' \
             AND link_method = 'previous_response_id' AND parent_turn IS NOT NULL"
        )
        .await,
        1,
        "the follow-up records how it was linked"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM feedback").await, 1);
    assert_eq!(
        delete(&app.router, &format!("/v1/responses/{id}"), None)
            .await
            .status,
        200
    );
    responses.flush().await;
    let remaining = format!("SELECT COUNT(*) FROM responses WHERE id = '{id}'");
    assert_eq!(db.scalar(&remaining).await, 0);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM responses").await,
        1,
        "the follow-up is kept"
    );
    responses.shutdown().await;
    store.shutdown().await;
}

/// An app whose turns go to the real store (as `serve` wires it), with the feedback routes.
struct StoreApp {
    router: Router,
    backend: Arc<FakeBackend>,
    sink: Arc<SessionSink>,
}

/// Records turns into the store and remembers the session id of each.
struct SessionSink {
    store: hindsight::store::Store,
    sessions: std::sync::Mutex<Vec<Option<String>>>,
}

impl TurnSink for SessionSink {
    fn record(&self, turn: hindsight::store::CapturedTurn) {
        self.sessions.lock().unwrap().push(turn.session_id.clone());
        self.store.record(turn);
    }
}

impl StoreApp {
    /// The session of the first turn this app served.
    fn sink_session(&self) -> Option<String> {
        self.sink
            .sessions
            .lock()
            .unwrap()
            .first()
            .cloned()
            .flatten()
    }
}

async fn app_on_store(store: &hindsight::store::Store, responses: ResponseStore) -> StoreApp {
    let backend = Arc::new(FakeBackend::new(FakeConfig::default()));
    let sink = Arc::new(SessionSink {
        store: store.clone(),
        sessions: Default::default(),
    });
    let state = AppState::new(backend.clone(), sink.clone());
    let feedback = hindsight::api::feedback::router(store.clone());
    StoreApp {
        router: with_responses(state, Some(responses), feedback).await,
        backend,
        sink,
    }
}

both_backends!(persistence, survives_a_restart);

#[tokio::test]
async fn the_outer_store_wins_over_the_routers_own() {
    let backend = Arc::new(FakeBackend::new(FakeConfig::default()));
    let state = AppState::new(backend, Arc::new(RecordingSink::default()));
    // Without an outer store the routes keep responses in memory of their own.
    let router = with_responses(state.clone(), None, Router::new()).await;
    let created = create(&router, ask(json!("hi"))).await;
    let path = format!("/v1/responses/{}", created["id"].as_str().unwrap());
    assert_eq!(get(&router, &path).await.status, 200);
    // With one, that store holds them.
    let store = ResponseStore::in_memory();
    let router = with_responses(state, Some(store.clone()), Router::new()).await;
    let created = create(&router, ask(json!("hi"))).await;
    let id = created["id"].as_str().unwrap();
    assert!(store.load(id, "").await.unwrap().is_some());
}
