//! The learner's store API on both backends: judge claims, judgements and samples, steps,
//! versions and the serving state.

mod store_support;

use std::time::Duration;

use hindsight::store::export::{export, ExportFilter, ExportFormat};
use hindsight::store::{
    FeedbackOutcome, FeedbackSource, JudgeTask, NewJudgement, NewSample, NewStep, NewVersion,
    Rating, Store, StoreError, TurnSink, TurnType,
};
use serde_json::json;
use store_support::{settle, turn, user, Conversation, TestDb};

const LEASE: Duration = Duration::from_secs(60);

fn judgement(score: f64) -> NewJudgement {
    NewJudgement {
        judge: "rules".into(),
        source: "rules".into(),
        votes: json!([score]),
        score: Some(score),
        hint: Some("be shorter".into()),
        hint_votes: json!(["be shorter", null]),
    }
}

fn sample(reward: f64) -> NewSample {
    NewSample {
        policy_version: 3,
        reward,
        kind: "both".into(),
        hint: Some("be shorter".into()),
    }
}

/// Records a 3-turn conversation (turns 1 and 2 get next states) plus a side turn that
/// continues it, and a lone turn with no next state. Returns the main turns' response ids, the
/// side turn's last.
async fn conversation(store: &Store, key: &str) -> Vec<String> {
    let mut c = Conversation::new(Some(key), "be brief");
    let turns = [c.say("q1", "r1"), c.say("q2", "r2"), c.say("q3", "r3")];
    let mut side = c.say("heartbeat", "ok");
    side.turn_type = TurnType::Side;
    for t in turns.iter().chain([&side]) {
        store.record(t.clone());
    }
    store.record(turn(Some(key), vec![user("alone")], "no reply yet"));
    settle(store).await;
    turns
        .iter()
        .chain([&side])
        .map(|t| t.response_id.clone())
        .collect()
}

/// The id of the session `conversation` created for k1 (not the lone turn's).
async fn conversation_session(store: &Store) -> String {
    let sessions = store.sessions(Some("k1"), 10).await.unwrap();
    let found = sessions.into_iter().find(|s| s.turn_count == 4);
    found.expect("the conversation's session").id
}

fn ids(tasks: &[JudgeTask]) -> Vec<&str> {
    tasks.iter().map(|t| t.response_id.as_str()).collect()
}

async fn claims_only_ready_main_turns(db: &TestDb) {
    let store = db.open().await;
    let rids = conversation(&store, "k1").await;
    // Feedback on a side turn does not make it judgeable.
    store
        .add_feedback(Some("k1"), &rids[3], Rating::Up, None, FeedbackSource::Api)
        .await
        .unwrap();
    let tasks = store.claim_judge_tasks("w1", 10, LEASE).await.unwrap();
    // Turn 3 is followed only by a side turn, which is no next state; side turns are never
    // claimed; the lone turn has nothing yet.
    assert_eq!(ids(&tasks), [rids[0].as_str(), rids[1].as_str()]);
    let first = &tasks[0];
    assert_eq!(first.turn_type, "main");
    assert_eq!(first.key_id, "k1");
    assert_eq!(first.response_text, "r1");
    assert_eq!(first.next_state[0].content, "q2");
    assert_eq!(first.prompt_token_ids, [1, 2, 3, 70000]);
    assert_eq!(first.response_token_ids, [10, 11, 12]);
    assert_eq!(first.response_logprobs, [-0.5, -1.25, -0.125]);
    assert_eq!(first.policy_version, 3);
    assert_eq!(first.claim.worker, "w1");
    assert!(first.feedback.is_empty());
    // Held claims are not handed out again.
    assert!(store
        .claim_judge_tasks("w2", 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    // A released claim is claimable at once; an abstention is final until new feedback.
    store.release_judge_claim(&tasks[0].claim).await.unwrap();
    assert!(store.skip_judging(&tasks[1].claim).await.unwrap());
    let again = store.claim_judge_tasks("w2", 10, LEASE).await.unwrap();
    assert_eq!(ids(&again), [rids[0].as_str()]);
    assert_eq!(store.count("judgements").await.unwrap(), 0);
    // The old holder's claim is gone: its outcome is refused and nothing is written.
    assert!(!store
        .record_judgement(&tasks[0].claim, &judgement(1.0), Some(&sample(1.0)))
        .await
        .unwrap());
    assert_eq!(store.count("training_samples").await.unwrap(), 0);
    assert_eq!(store.claim_judge_tasks("w3", 0, LEASE).await.unwrap(), []);
    store.shutdown().await;
}
both_backends!(claims_ready_main_turns, claims_only_ready_main_turns);

async fn expired_lease_is_reclaimable(db: &TestDb) {
    let store = db.open().await;
    let rids = conversation(&store, "k1").await;
    let short = store
        .claim_judge_tasks("crashed", 1, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(ids(&short), [rids[0].as_str()]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let retaken = store.claim_judge_tasks("w2", 10, LEASE).await.unwrap();
    assert_eq!(ids(&retaken), [rids[0].as_str(), rids[1].as_str()]);
    // The crashed worker comes back late: refused; the new holder records.
    assert!(!store.skip_judging(&short[0].claim).await.unwrap());
    assert!(store
        .record_judgement(&retaken[0].claim, &judgement(1.0), None)
        .await
        .unwrap());
    assert_eq!(store.count("judgements").await.unwrap(), 1);
    store.shutdown().await;
}
both_backends!(expired_lease, expired_lease_is_reclaimable);

async fn judgement_is_atomic_and_feedback_reopens(db: &TestDb) {
    let store = db.open().await;
    let rids = conversation(&store, "k1").await;
    let tasks = store.claim_judge_tasks("w1", 1, LEASE).await.unwrap();
    assert!(store
        .record_judgement(&tasks[0].claim, &judgement(-1.0), Some(&sample(-1.0)))
        .await
        .unwrap());
    assert_eq!(store.count("judgements").await.unwrap(), 1);
    assert_eq!(store.count("training_samples").await.unwrap(), 1);
    let claim = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM turns WHERE id = {} AND judged_at IS NOT NULL \
             AND judge_claimed_by IS NULL AND judge_claim_until IS NULL",
            tasks[0].turn_id
        ))
        .await;
    assert_eq!(claim, 1, "judged_at set and claim cleared");

    // The session view shows the judgement with its source and hint votes, and the reward.
    let session = conversation_session(&store).await;
    let detail = store.session(Some("k1"), &session).await.unwrap().unwrap();
    let judged = &detail.turns[0];
    let view = judged.judgement.as_ref().expect("judgement in view");
    assert_eq!(view.source.as_deref(), Some("rules"));
    assert_eq!(view.hint_votes, Some(json!(["be shorter", null])));
    assert_eq!(view.score, Some(-1.0));
    assert_eq!(judged.reward, Some(-1.0));
    // So does the trajectories export.
    let mut out = Vec::new();
    let filter = ExportFilter {
        session_id: Some(session.clone()),
        since: None,
    };
    export(&store, ExportFormat::Trajectories, &filter, &mut out)
        .await
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let exported = &line["turns"][0];
    assert_eq!(exported["judgement"]["source"], "rules");
    assert_eq!(exported["judgement"]["hint"], "be shorter");
    assert_eq!(
        exported["judgement"]["hint_votes"],
        json!(["be shorter", null])
    );
    assert_eq!(exported["reward"], -1.0);

    // Explicit feedback after the judgement makes the turn claimable again, with the feedback.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let outcome = store
        .add_feedback(
            Some("k1"),
            &rids[0],
            Rating::Up,
            Some("great".into()),
            FeedbackSource::Api,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, FeedbackOutcome::Stored(_)));
    let reopened = store.claim_judge_tasks("w1", 10, LEASE).await.unwrap();
    assert_eq!(ids(&reopened), [rids[0].as_str(), rids[1].as_str()]);
    assert_eq!(reopened[0].feedback.len(), 1);
    assert_eq!(reopened[0].feedback[0].correction.as_deref(), Some("great"));
    let feedback_judgement = NewJudgement {
        judge: "feedback".into(),
        source: "feedback".into(),
        ..judgement(1.0)
    };
    assert!(store
        .record_judgement(&reopened[0].claim, &feedback_judgement, Some(&sample(1.0)))
        .await
        .unwrap());
    // The unused sample of the superseded judgement is replaced.
    let samples = store.unused_samples(10).await.unwrap();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].reward, 1.0);
    let detail = store.session(Some("k1"), &session).await.unwrap().unwrap();
    assert_eq!(
        detail.turns[0]
            .judgement
            .as_ref()
            .unwrap()
            .source
            .as_deref(),
        Some("feedback")
    );

    // A bad sample kind is refused before anything is written.
    let err = store
        .record_judgement(
            &reopened[1].claim,
            &judgement(1.0),
            Some(&NewSample {
                kind: "sft".into(),
                ..sample(1.0)
            }),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert_eq!(store.count("judgements").await.unwrap(), 2);
    store.shutdown().await;
}
both_backends!(judgement_atomic, judgement_is_atomic_and_feedback_reopens);

/// Feedback alone (no next state yet) makes a turn judgeable.
async fn feedback_alone_is_ready(db: &TestDb) {
    let store = db.open().await;
    let lone = turn(Some("k1"), vec![user("alone")], "reply");
    store.record(lone.clone());
    settle(&store).await;
    assert!(store
        .claim_judge_tasks("w", 5, LEASE)
        .await
        .unwrap()
        .is_empty());
    store
        .add_feedback(
            Some("k1"),
            &lone.response_id,
            Rating::Down,
            None,
            FeedbackSource::Api,
        )
        .await
        .unwrap();
    let tasks = store.claim_judge_tasks("w", 5, LEASE).await.unwrap();
    assert_eq!(ids(&tasks), [lone.response_id.as_str()]);
    assert!(tasks[0].next_state.is_empty());
    assert_eq!(tasks[0].feedback[0].rating, "down");
    store.shutdown().await;
}
both_backends!(feedback_alone, feedback_alone_is_ready);

async fn samples_steps_versions_state(db: &TestDb) {
    let store = db.open().await;
    conversation(&store, "k1").await;
    let tasks = store.claim_judge_tasks("w", 10, LEASE).await.unwrap();
    for (task, reward) in tasks.iter().zip([1.0, -1.0]) {
        store
            .record_judgement(&task.claim, &judgement(reward), Some(&sample(reward)))
            .await
            .unwrap();
    }
    assert_eq!(store.count_unused_samples().await.unwrap(), 2);
    let samples = store.unused_samples(10).await.unwrap();
    assert_eq!(
        samples.iter().map(|s| s.turn_id).collect::<Vec<_>>(),
        [tasks[0].turn_id, tasks[1].turn_id],
        "oldest first"
    );
    let s = &samples[0];
    assert_eq!((s.kind.as_str(), s.reward), ("both", 1.0));
    assert_eq!(s.hint.as_deref(), Some("be shorter"));
    assert_eq!(s.policy_version, 3);
    assert_eq!(s.response_token_ids, [10, 11, 12]);
    assert_eq!(s.response_logprobs, [-0.5, -1.25, -0.125]);
    assert_eq!(s.prompt_token_ids, [1, 2, 3, 70000]);
    assert_eq!(s.messages, tasks[0].messages);
    assert_eq!(store.unused_samples(1).await.unwrap().len(), 1);

    store
        .record_step(&NewStep {
            step: 1,
            policy_version: 0,
            created_version: Some(1),
            metrics: json!({"loss": 0.5, "samples": {"both": 1}}),
            sample_ids: vec![s.id],
        })
        .await
        .unwrap();
    assert_eq!(store.count_unused_samples().await.unwrap(), 1);
    assert_eq!(store.unused_samples(10).await.unwrap()[0].id, samples[1].id);
    store
        .record_step(&NewStep {
            step: 2,
            policy_version: 1,
            created_version: None,
            metrics: json!({"loss": 0.25}),
            sample_ids: vec![],
        })
        .await
        .unwrap();
    let steps = store.steps(10).await.unwrap();
    assert_eq!(steps.iter().map(|s| s.step).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(steps[1].created_version, Some(1));
    assert_eq!(steps[1].metrics["loss"], 0.5);
    assert_eq!(store.steps(1).await.unwrap().len(), 1);

    assert_eq!(store.latest_version_number().await.unwrap(), 0);
    assert!(store.versions().await.unwrap().is_empty());
    for v in 1..=2 {
        store
            .insert_version(&NewVersion {
                version: v,
                step: Some(v),
                path: format!("/data/adapters/v{v}"),
                status: "candidate".into(),
                reason: None,
                guard: Some(json!({"kl": 0.01 * v as f64})),
                metrics: Some(json!({"loss": 0.5})),
                checksum: (v == 1).then(|| "ab".repeat(32)),
            })
            .await
            .unwrap();
    }
    assert!(store
        .insert_version(&NewVersion {
            version: 2,
            step: None,
            path: "dup".into(),
            status: "candidate".into(),
            reason: None,
            guard: None,
            metrics: None,
            checksum: None,
        })
        .await
        .is_err());
    store
        .set_version_status(2, "rejected", Some("replies collapsed"))
        .await
        .unwrap();
    store.set_version_status(1, "promoted", None).await.unwrap();
    assert!(matches!(
        store.set_version_status(9, "promoted", None).await,
        Err(StoreError::UnknownVersion(9))
    ));
    let versions = store.versions().await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(versions[0].status, "rejected");
    assert_eq!(versions[0].reason.as_deref(), Some("replies collapsed"));
    assert_eq!(versions[0].guard, Some(json!({"kl": 0.02})));
    assert_eq!(versions[1].path, "/data/adapters/v1");
    assert_eq!(versions[1].checksum, Some("ab".repeat(32)));
    assert_eq!(versions[0].checksum, None);
    assert_eq!(store.version(1).await.unwrap().unwrap().status, "promoted");
    assert!(store.version(7).await.unwrap().is_none());
    assert_eq!(store.latest_version_number().await.unwrap(), 2);

    let state = store.learner_state().await.unwrap();
    assert_eq!((state.pinned_version, state.serving_version), (None, 0));
    store.set_pinned(Some(1)).await.unwrap();
    store.set_serving_version(1).await.unwrap();
    let state = store.learner_state().await.unwrap();
    assert_eq!((state.pinned_version, state.serving_version), (Some(1), 1));
    assert!(matches!(
        store.set_pinned(Some(5)).await,
        Err(StoreError::UnknownVersion(5))
    ));
    store.set_pinned(Some(0)).await.unwrap(); // the base model
    store.set_pinned(None).await.unwrap();
    assert_eq!(store.learner_state().await.unwrap().pinned_version, None);
    store.shutdown().await;
}
both_backends!(round_trips, samples_steps_versions_state);

async fn deleting_a_session_cascades(db: &TestDb) {
    let store = db.open().await;
    conversation(&store, "k1").await;
    let tasks = store.claim_judge_tasks("w", 10, LEASE).await.unwrap();
    for task in &tasks {
        store
            .record_judgement(&task.claim, &judgement(1.0), Some(&sample(1.0)))
            .await
            .unwrap();
    }
    assert_eq!(store.count("judgements").await.unwrap(), 2);
    let session = conversation_session(&store).await;
    assert!(store.delete_session(Some("k1"), &session).await.unwrap());
    assert_eq!(store.count("judgements").await.unwrap(), 0);
    assert_eq!(store.count("training_samples").await.unwrap(), 0);
    assert_eq!(store.count_unused_samples().await.unwrap(), 0);
    store.shutdown().await;
}
both_backends!(delete_cascades, deleting_a_session_cascades);

/// Two workers claiming at the same time on Postgres never get the same turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_get_disjoint_sets_postgres() {
    let db = TestDb::new(store_support::Backend::Postgres).await;
    let store = db.open().await;
    for i in 0..60 {
        let mut c = Conversation::new(Some("k"), &format!("conversation {i}"));
        store.record(c.say("q1", "r1"));
        store.record(c.say("q2", "r2"));
    }
    settle(&store).await;
    let mut workers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let tasks = store
                    .claim_judge_tasks(&format!("w{w}"), 3, LEASE)
                    .await
                    .unwrap();
                if tasks.is_empty() {
                    return mine;
                }
                mine.extend(tasks.into_iter().map(|t| t.turn_id));
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let claimed = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), claimed, "a turn was claimed twice");
    assert_eq!(claimed, 60, "every turn with a next state claimed once");
    store.shutdown().await;
}
