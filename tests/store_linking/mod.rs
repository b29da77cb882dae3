//! Session identity that survives real clients (part of the `store_capture` binary): a changed
//! system prompt, compaction, the client's session hints, `user` narrowing, and tiny turns
//! that are logged and linked but never trained on. Every test runs on both backends.

use std::time::Duration;

use hindsight::store::{
    CapturedTurn, FeedbackSource, LinkMethod, Rating, SessionDetail, Store, TurnSink,
};
use serde_json::{json, Value};

use crate::both_backends;
use crate::store_support::{self, assistant, settle, turn, user, TestDb};

fn system(text: &str) -> Value {
    json!({"role": "system", "content": text})
}

/// The only session of `key`, with its turns.
async fn only_session(store: &Store, key: Option<&str>) -> SessionDetail {
    let sessions = store.sessions(key, 100).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    store.session(key, &sessions[0].id).await.unwrap().unwrap()
}

fn methods(detail: &SessionDetail) -> Vec<&str> {
    detail
        .turns
        .iter()
        .map(|t| t.link_method.as_deref().unwrap_or("?"))
        .collect()
}

fn next_text(detail: &SessionDetail, index: usize) -> Option<String> {
    detail.turns[index].next_state.as_ref().map(|n| {
        n.iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("|")
    })
}

/// OpenClaw: no session header, a timestamp on every user message, a `Current date:` line in
/// the system prompt that changes at midnight.
async fn date_line_change_still_links(db: &TestDb) {
    let store = db.open().await;
    let prompt = |date: &str, note: &str| {
        system(&format!(
            "You are a personal agent.\nSession: agent:main:7f3a\nCurrent date: {date}{note}"
        ))
    };
    let q1 = user("[Mon 2025-06-02 23:58 UTC] plan my week");
    let a1 = "Monday: write. Tuesday: gym.";
    let q2 = user("[Tue 2025-06-03 00:01 UTC] move the gym to Wednesday");
    let a2 = "Done: Wednesday is gym day.";
    let first = turn(Some("k"), vec![prompt("2025-06-02", ""), q1.clone()], a1);
    let history = vec![q1.clone(), assistant(a1), q2.clone()];
    let mut messages = vec![prompt("2025-06-03", "")];
    messages.extend(history.clone());
    let second = turn(Some("k"), messages, a2);
    // Both in one batch: the second finds the first among the batch's own turns.
    store.record(first.clone());
    store.record(second.clone());
    settle(&store).await;
    // A note injected into the system prompt: the stored second turn is found by history.
    let mut messages = vec![prompt("2025-06-03", "\nNote: the user prefers mornings.")];
    messages.extend(history.clone());
    messages.extend([assistant(a2), user("[Tue 2025-06-03 08:00 UTC] thanks")]);
    let third = turn(Some("k"), messages.clone(), "You're welcome.");
    store.record(third.clone());
    settle(&store).await;
    // The exact resend of the third request's history still links by prefix first.
    messages.extend([assistant("You're welcome."), user("bye")]);
    store.record(turn(Some("k"), messages, "Bye!"));
    // Another key with the same conversation is never joined.
    let mut other = vec![prompt("2025-06-03", "")];
    other.extend(history);
    store.record(turn(Some("k2"), other, a2));
    settle(&store).await;

    let detail = only_session(&store, Some("k")).await;
    assert_eq!(methods(&detail), ["new", "history", "history", "prefix"]);
    let seqs: Vec<i64> = detail.turns.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // The first turn did not lose its next state to the date change.
    assert_eq!(
        next_text(&detail, 0).as_deref(),
        Some(q2["content"].as_str().unwrap())
    );
    assert_eq!(
        next_text(&detail, 1).as_deref(),
        Some("[Tue 2025-06-03 08:00 UTC] thanks")
    );
    assert_eq!(next_text(&detail, 2).as_deref(), Some("bye"));
    assert_eq!(methods(&only_session(&store, Some("k2")).await), ["new"]);
    store.shutdown().await;
}
both_backends!(date_line_change, date_line_change_still_links);

/// Compaction: older history replaced by a summary, the last exchange kept.
async fn compaction_keeps_the_link(db: &TestDb) {
    let store = db.open().await;
    let sys = system("You are helpful.");
    let first = turn(None, vec![sys.clone(), user("q1")], "a1");
    let history = vec![sys.clone(), user("q1"), assistant("a1"), user("q2")];
    let second = turn(None, history, "a2");
    store.record(first.clone());
    settle(&store).await;
    store.record(second.clone());
    settle(&store).await;
    // The summary as a user message before the kept exchange.
    let compacted = vec![
        sys.clone(),
        user("Summary of the conversation so far: the user asked q1."),
        user("q2"),
        assistant("a2"),
        user("q3"),
    ];
    store.record(turn(None, compacted, "a3"));
    // Compacted again, the summary now in the system prompt.
    let moved = vec![
        system("You are helpful.\nSummary: q1, q2 were discussed."),
        user("q3"),
        assistant("a3"),
        user("q4"),
    ];
    store.record(turn(None, moved, "a4"));
    settle(&store).await;

    let detail = only_session(&store, None).await;
    assert_eq!(methods(&detail), ["new", "prefix", "reply", "reply"]);
    assert_eq!(next_text(&detail, 1).as_deref(), Some("q3"));
    assert_eq!(next_text(&detail, 2).as_deref(), Some("q4"));
    // A request whose last exchange is nowhere to be found starts a new session.
    let rewritten = vec![sys, user("Summary."), assistant("a3, reworded"), user("q5")];
    store.record(turn(None, rewritten, "a5"));
    settle(&store).await;
    assert_eq!(store.sessions(None, 10).await.unwrap().len(), 2);
    store.shutdown().await;
}
both_backends!(compaction, compaction_keeps_the_link);

fn named(name: &str, source: LinkMethod, messages: Vec<Value>, reply: &str) -> CapturedTurn {
    let mut t = turn(Some("k"), messages, reply);
    t.session_id = Some(name.to_string());
    t.session_source = Some(source);
    t
}

/// Each hint names the session and is recorded; ids that name a conversation continue the
/// session's latest turn, a prompt_cache_key only a turn matched by content.
async fn session_hints_are_recorded(db: &TestDb) {
    let store = db.open().await;
    let sources = [
        (LinkMethod::Header, "header"),
        (LinkMethod::Body, "body"),
        (LinkMethod::PreviousResponseId, "previous_response_id"),
        (LinkMethod::AffinityHeader, "affinity_header"),
        (LinkMethod::PromptCacheKey, "prompt_cache_key"),
        (LinkMethod::Metadata, "metadata"),
    ];
    for (source, _) in sources {
        let name = format!("s-{}", source.as_str());
        store.record(named(&name, source, vec![user("a")], "ra"));
        // Only the new message.
        store.record(named(&name, source, vec![user("b")], "rb"));
        // The whole history.
        let history = vec![user("a"), assistant("ra"), user("c")];
        store.record(named(&name, source, history, "rc"));
    }
    // A session id from before `session_source` existed counts as the header.
    let mut legacy = turn(Some("k"), vec![user("x")], "y");
    legacy.session_id = Some("legacy".into());
    store.record(legacy);
    settle(&store).await;

    for (source, method) in sources {
        let name = format!("s-{}", source.as_str());
        let detail = store.session(Some("k"), &name).await.unwrap().expect(&name);
        assert!(detail.session.explicit);
        assert_eq!(methods(&detail), [method; 3], "{name}");
        if source == LinkMethod::PromptCacheKey {
            // "b" matched nothing by content: no parent, so "a"'s next state is "c".
            assert_eq!(next_text(&detail, 0).as_deref(), Some("c"), "{name}");
            assert_eq!(next_text(&detail, 1), None, "{name}");
        } else {
            // "b" continued the latest turn; "c" resent "a"'s history (the first next state
            // stands).
            assert_eq!(next_text(&detail, 0).as_deref(), Some("b"), "{name}");
        }
    }
    let legacy = store.session(Some("k"), "legacy").await.unwrap().unwrap();
    assert_eq!(methods(&legacy), ["header"]);
    store.shutdown().await;
}
both_backends!(session_hints, session_hints_are_recorded);

/// `user` narrows content links: identical conversations of two people under one key stay
/// apart, and a turn without `user` joins neither.
async fn user_narrows_content_links(db: &TestDb) {
    let store = db.open().await;
    let sys = system("shared app prompt");
    let with_user = |who: Option<&str>, messages: Vec<Value>, reply: &str| {
        let mut t = turn(Some("app"), messages, reply);
        t.user = who.map(str::to_string);
        t
    };
    for who in ["ann", "bob"] {
        store.record(with_user(
            Some(who),
            vec![sys.clone(), user("hi")],
            "Hello!",
        ));
    }
    settle(&store).await;
    for who in ["ann", "bob", "ann"] {
        let history = vec![sys.clone(), user("hi"), assistant("Hello!"), user(who)];
        store.record(with_user(Some(who), history, "ok"));
    }
    let history = vec![sys.clone(), user("hi"), assistant("Hello!"), user("anon")];
    store.record(with_user(None, history, "ok"));
    settle(&store).await;

    let sessions = store.sessions(Some("app"), 10).await.unwrap();
    assert_eq!(sessions.len(), 3);
    let mut counts: Vec<i64> = sessions.iter().map(|s| s.turn_count).collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 2, 3]);
    for summary in &sessions {
        let detail = store
            .session(Some("app"), &summary.id)
            .await
            .unwrap()
            .unwrap();
        if summary.turn_count > 1 {
            let who = next_text(&detail, 0).unwrap();
            assert!(who == "ann" || who == "bob", "{who}");
            assert_eq!(detail.turns.len() as i64, if who == "ann" { 3 } else { 2 });
        } else {
            assert_eq!(methods(&detail), ["new"]);
        }
    }
    store.shutdown().await;
}
both_backends!(user_narrowing, user_narrows_content_links);

fn budget(mut t: CapturedTurn, max_tokens: u64, tokens: usize, finish: &str) -> CapturedTurn {
    t.sampling = json!({"temperature": 0.7, "max_tokens": max_tokens});
    t.choices[0].token_ids.truncate(tokens);
    t.choices[0].logprobs.truncate(tokens);
    t.choices[0].finish_reason = finish.into();
    t.completion_tokens = tokens;
    t
}

/// A 1-token reply cut at `length` (OpenClaw's `max_completion_tokens: 1`) and a health probe
/// are stored and linked, give and get next states, and are never judged or trained on.
async fn tiny_turns_are_never_samples(db: &TestDb) {
    let store = db.open().await;
    let sys = system("s");
    let first = turn(Some("k"), vec![sys.clone(), user("q1")], "a1");
    let asked = vec![sys.clone(), user("q1"), assistant("a1"), user("q2")];
    let cut = budget(turn(Some("k"), asked.clone(), "The"), 1, 1, "length");
    // The client retries with a real budget: a main turn on the same parent.
    let retry = turn(Some("k"), asked.clone(), "a2");
    // Or it kept the fragment: the next turn continues the cut one.
    let mut kept = asked;
    kept.extend([assistant("The"), user("q3")]);
    let after_cut = turn(Some("k"), kept, "a3");
    let probe = budget(turn(Some("k"), vec![user("ping")], "p"), 1, 1, "length");
    for t in [&first, &cut, &retry, &after_cut, &probe] {
        store.record(t.clone());
    }
    settle(&store).await;

    let sessions = store.sessions(Some("k"), 10).await.unwrap();
    assert_eq!(sessions.len(), 2, "the probe has a session of its own");
    let mut details = Vec::new();
    for s in &sessions {
        details.push(store.session(Some("k"), &s.id).await.unwrap().unwrap());
    }
    details.sort_by_key(|d| d.turns.len());
    let (probe_session, conversation) = (&details[0], &details[1]);
    let kinds: Vec<(&str, Option<&str>)> = conversation
        .turns
        .iter()
        .map(|t| (t.turn_type.as_str(), t.side_reason.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("main", None),
            ("side", Some("length_cut")),
            ("main", None),
            ("main", None)
        ]
    );
    assert_eq!(methods(conversation), ["new", "prefix", "prefix", "prefix"]);
    // The cut turn's request is the first turn's next state (once), and it has its own.
    assert_eq!(next_text(conversation, 0).as_deref(), Some("q2"));
    assert_eq!(next_text(conversation, 1).as_deref(), Some("q3"));
    let probe_turn = &probe_session.turns[0];
    assert_eq!(
        (
            probe_turn.turn_type.as_str(),
            probe_turn.side_reason.as_deref()
        ),
        ("side", Some("probe"))
    );

    // Even explicit feedback does not make them judgeable.
    for t in [&cut, &probe, &first] {
        store
            .add_feedback(
                Some("k"),
                &t.response_id,
                Rating::Down,
                None,
                FeedbackSource::Api,
            )
            .await
            .unwrap();
    }
    settle(&store).await;
    let tasks = store
        .claim_judge_tasks("w", 100, Duration::from_secs(60))
        .await
        .unwrap();
    let claimed: Vec<&str> = tasks.iter().map(|t| t.response_id.as_str()).collect();
    assert!(claimed.contains(&first.response_id.as_str()), "{claimed:?}");
    assert!(!claimed.contains(&cut.response_id.as_str()), "{claimed:?}");
    assert!(
        !claimed.contains(&probe.response_id.as_str()),
        "{claimed:?}"
    );
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM turns WHERE side_reason IS NOT NULL AND turn_type = 'side'"
        )
        .await,
        2
    );
    store.shutdown().await;
}
both_backends!(tiny_turns, tiny_turns_are_never_samples);
