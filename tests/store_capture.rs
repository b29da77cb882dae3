//! Turn rows, explicit and linked sessions, next states and chat thumbs, on both backends.

mod store_linking;
mod store_support;

use hindsight::store::{CapturedTurn, TurnSink};
use serde_json::json;
use store_support::{assistant, settle, turn, user, Conversation, TestDb};

async fn turn_rows_and_explicit_sessions(db: &TestDb) {
    let store = db.open().await;
    let mut first = turn(Some("k1"), vec![user("hi")], "hello");
    first.session_id = Some("s1".into());
    let mut second = turn(Some("k1"), vec![user("only the new message")], "ok");
    second.session_id = Some("s1".into());
    let mut other = turn(Some("k1"), vec![user("hi")], "hello");
    other.session_id = Some("s2".into());
    for t in [&first, &second, &other] {
        store.record(t.clone());
    }
    settle(&store).await;
    assert_eq!(store.count("turns").await.unwrap(), 3);

    let s1 = store.session(Some("k1"), "s1").await.unwrap().expect("s1");
    assert!(s1.session.explicit);
    let ids: Vec<_> = s1.turns.iter().map(|t| t.response_id.as_str()).collect();
    assert_eq!(
        ids,
        [first.response_id.as_str(), second.response_id.as_str()]
    );
    assert_eq!(s1.turns[0].response.content, "hello");
    assert_eq!(s1.turns[0].messages, json!([user("hi")]));
    assert_eq!(s1.turns[0].policy_version, 3);
    assert_eq!(s1.turns[0].usage.prompt_tokens, 4);
    assert_eq!(s1.turns[0].time_to_first_token_ms, Some(7));
    // A named session whose client sends only the new message: the reply is the next state.
    let next = s1.turns[0]
        .next_state
        .as_ref()
        .expect("next state of turn 1");
    assert_eq!(next[0].content, "only the new message");

    // Token ids and behaviour log-probs survive exactly.
    let (pk, _) = store.export_sessions(None, Some("s1")).await.unwrap()[0].clone();
    let exported = store.export_turns(pk, None).await.unwrap();
    let tokens = exported[0].tokens.as_ref().unwrap();
    assert_eq!(tokens.prompt_token_ids, first.prompt_token_ids);
    assert_eq!(tokens.token_ids, first.choices[0].token_ids);
    assert_eq!(tokens.logprobs, first.choices[0].logprobs);

    // The same explicit id under another key is another session.
    assert!(store.session(Some("k2"), "s1").await.unwrap().is_none());
    store.shutdown().await;
}
both_backends!(turn_rows, turn_rows_and_explicit_sessions);

async fn linking_resent_histories(db: &TestDb) {
    let store = db.open().await;
    let mut a = Conversation::new(Some("k1"), "be brief");
    let mut b = Conversation::new(Some("k1"), "be verbose");
    // The same history under another key must not join k1's session.
    let mut a_other_key = Conversation::new(Some("k2"), "be brief");
    let mut recorded: Vec<CapturedTurn> = Vec::new();
    for i in 0..4 {
        let ta = a.say(&format!("a{i}"), &format!("ra{i}"));
        let tb = b.say(&format!("b{i}"), &format!("rb{i}"));
        let tk = a_other_key.say(&format!("a{i}"), &format!("ra{i}"));
        for t in [ta, tb, tk] {
            store.record(t.clone());
            recorded.push(t);
        }
    }
    settle(&store).await;
    assert_eq!(store.count("turns").await.unwrap(), 12);
    assert_eq!(store.count("sessions").await.unwrap(), 3);

    let k1 = store.sessions(Some("k1"), 100).await.unwrap();
    assert_eq!(k1.len(), 2);
    for summary in &k1 {
        assert!(!summary.explicit);
        assert!(summary.id.starts_with("sess_"));
        let detail = store
            .session(Some("k1"), &summary.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(detail.turns.len(), 4);
        let prefix = if detail.turns[0].response.content == "ra0" {
            "a"
        } else {
            "b"
        };
        for (i, t) in detail.turns.iter().enumerate() {
            assert_eq!(t.seq, i as i64 + 1);
            assert_eq!(t.response.content, format!("r{prefix}{i}"));
            match &t.next_state {
                Some(next) if i < 3 => {
                    assert_eq!(next.len(), 1);
                    assert_eq!(next[0].role, "user");
                    assert_eq!(next[0].content, format!("{prefix}{}", i + 1));
                }
                None if i == 3 => {}
                other => panic!("turn {i}: unexpected next state {other:?}"),
            }
        }
    }
    let k2 = store.sessions(Some("k2"), 100).await.unwrap();
    assert_eq!(k2.len(), 1);
    assert!(k1.iter().all(|s| s.id != k2[0].id));
    assert!(store
        .session(Some("k1"), &k2[0].id)
        .await
        .unwrap()
        .is_none());

    // A request that matches nothing starts a new session; whitespace does not matter.
    let mut edited = a.history.clone();
    edited[1] = user("  a0  ");
    edited.push(user("a-next"));
    store.record(turn(Some("k1"), edited, "x"));
    let mut unrelated = vec![user("never said"), assistant("never answered"), user("?")];
    store.record(turn(Some("k1"), unrelated.split_off(0), "y"));
    settle(&store).await;
    assert_eq!(store.sessions(Some("k1"), 100).await.unwrap().len(), 3);
    store.shutdown().await;
}
both_backends!(linking, linking_resent_histories);

async fn tool_results_thumbs_and_done(db: &TestDb) {
    let store = db.open().await;
    let calls = json!([{"id": "call_1", "type": "function",
        "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]);
    let mut first = turn(None, vec![user("weather in Paris?")], "");
    first.choices[0].tool_calls = Some(calls.clone());
    first.choices[0].finish_reason = "tool_calls".into();
    // The client resends the call (its own formatting) and the tool's result.
    let history = vec![
        user("weather in Paris?"),
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}),
    ];
    let second = turn(None, history.clone(), "It is sunny.");
    let mut thumbs_history = history.clone();
    thumbs_history.push(assistant("It is sunny."));
    thumbs_history.push(user(" 👍 "));
    let mut third = turn(None, thumbs_history.clone(), "Glad to help!");
    third.session_done = true;
    let mut after_done = thumbs_history.clone();
    after_done.push(assistant("Glad to help!"));
    after_done.push(user("/bad"));
    let fourth = turn(None, after_done, "sorry");
    for t in [&first, &second, &third, &fourth] {
        store.record(t.clone());
    }
    settle(&store).await;

    let sessions = store.sessions(None, 10).await.unwrap();
    assert_eq!(sessions.len(), 2, "a closed session takes no more turns");
    let closed = sessions
        .iter()
        .find(|s| s.closed_at.is_some())
        .expect("closed session");
    let detail = store.session(None, &closed.id).await.unwrap().unwrap();
    assert_eq!(detail.turns.len(), 3);
    let tool_next = detail.turns[0]
        .next_state
        .as_ref()
        .expect("tool result as next state");
    assert_eq!(tool_next[0].role, "tool");
    assert_eq!(tool_next[0].content, "sunny, 21C");
    assert_eq!(tool_next[0].message["tool_call_id"], "call_1");
    assert_eq!(detail.turns[0].response.tool_calls, Some(calls));
    // The thumbs message is feedback on the turn it follows, and is still logged as a turn.
    let feedback = &detail.turns[1].feedback;
    assert_eq!(feedback.len(), 1);
    assert_eq!(
        (feedback[0].rating.as_str(), feedback[0].source.as_str()),
        ("up", "chat")
    );
    assert_eq!(
        detail.turns[1].next_state.as_ref().unwrap()[0].content,
        " 👍 "
    );
    assert_eq!(detail.turns[2].response_id, third.response_id);
    assert!(detail.turns[2].feedback.is_empty());
    assert!(detail.turns[2].next_state.is_none());
    assert_eq!(store.count("feedback").await.unwrap(), 1);
    store.shutdown().await;
}
both_backends!(tool_results_and_thumbs, tool_results_thumbs_and_done);

async fn replayed_turns_are_idempotent(db: &TestDb) {
    let store = db.open().await;
    let t = turn(Some("k"), vec![user("q")], "a");
    store.record(t.clone());
    store.record(t.clone());
    settle(&store).await;
    assert_eq!(store.count("turns").await.unwrap(), 1);
    store.shutdown().await;
    // After shutdown, records go to the journal and are replayed at the next start.
    let late = turn(
        Some("k"),
        vec![user("q"), assistant("a"), user("late")],
        "b",
    );
    store.record(late.clone());
    assert_eq!(store.health().journal_rows, 1);
    let reopened = db.open().await;
    settle(&reopened).await;
    assert_eq!(reopened.count("turns").await.unwrap(), 2);
    assert_eq!(
        reopened.count("sessions").await.unwrap(),
        1,
        "late turn linked after replay"
    );
    assert_eq!(reopened.count("next_states").await.unwrap(), 1);
    reopened.shutdown().await;
}
both_backends!(shutdown_and_replay, replayed_turns_are_idempotent);
