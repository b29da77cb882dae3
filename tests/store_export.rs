//! `hindsight export` in both formats, through the library on both backends and the CLI.

mod store_support;

use hindsight::store::export::{export, ExportFilter, ExportFormat};
use hindsight::store::{FeedbackSource, Rating, TurnSink, TurnType};
use serde_json::Value;
use store_support::{settle, turn, user, Conversation, TestDb};

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

async fn export_formats(db: &TestDb) {
    let store = db.open().await;
    let mut a = Conversation::new(Some("k1"), "sys");
    let t1 = a.say("first", "one");
    let t2 = a.say("second", "two");
    let mut side = turn(Some("k1"), vec![user("HEARTBEAT")], "HEARTBEAT_OK");
    side.turn_type = TurnType::Side;
    let mut other = turn(Some("k2"), vec![user("elsewhere")], "there");
    other.session_id = Some("named".into());
    for t in [&t1, &t2, &side, &other] {
        store.record(t.clone());
    }
    settle(&store).await;
    store
        .add_feedback(
            Some("k1"),
            &t2.response_id,
            Rating::Down,
            Some("three".into()),
            FeedbackSource::Api,
        )
        .await
        .unwrap();

    let mut out = Vec::new();
    let n = export(
        &store,
        ExportFormat::OpenaiJsonl,
        &ExportFilter::default(),
        &mut out,
    )
    .await
    .unwrap();
    let examples = lines(&out);
    assert_eq!((n, examples.len()), (3, 3), "main turns only");
    let second = examples
        .iter()
        .find(|e| e["messages"][3]["content"] == "second")
        .unwrap();
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        messages[4],
        serde_json::json!({"role": "assistant", "content": "two"})
    );

    let mut out = Vec::new();
    export(
        &store,
        ExportFormat::Trajectories,
        &ExportFilter::default(),
        &mut out,
    )
    .await
    .unwrap();
    let trajectories = lines(&out);
    assert_eq!(trajectories.len(), 3);
    let linked = trajectories
        .iter()
        .find(|t| t["turns"].as_array().unwrap().len() == 2)
        .unwrap();
    let turns = linked["turns"].as_array().unwrap();
    assert_eq!(turns[0]["response_id"], t1.response_id.as_str());
    assert_eq!(turns[0]["next_state"][0]["content"], "second");
    assert_eq!(turns[0]["token_ids"], serde_json::json!([10, 11, 12]));
    assert_eq!(
        turns[0]["logprobs"],
        serde_json::json!([-0.5, -1.25, -0.125])
    );
    assert_eq!(
        turns[0]["prompt_token_ids"],
        serde_json::json!([1, 2, 3, 70000])
    );
    assert!(turns[1]["next_state"].is_null());
    assert_eq!(turns[1]["feedback"][0]["correction"], "three");
    for field in ["judgement", "reward"] {
        assert!(
            turns[0].get(field).is_some_and(Value::is_null),
            "{field} present and null"
        );
    }

    let only = ExportFilter {
        session_id: Some("named".into()),
        since: None,
    };
    let mut out = Vec::new();
    export(&store, ExportFormat::Trajectories, &only, &mut out)
        .await
        .unwrap();
    let named = lines(&out);
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["session_id"], "named");
    let future = ExportFilter {
        since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        session_id: None,
    };
    let mut out = Vec::new();
    assert_eq!(
        export(&store, ExportFormat::OpenaiJsonl, &future, &mut out)
            .await
            .unwrap(),
        0
    );
    store.shutdown().await;
}
both_backends!(formats, export_formats);

#[tokio::test]
async fn cli_exports_and_names_bad_input() {
    let db = TestDb::new(store_support::Backend::Sqlite).await;
    let store = db.open().await;
    let mut c = Conversation::new(None, "sys");
    store.record(c.say("hello", "hi"));
    store.record(c.say("again", "hi again"));
    store.shutdown().await;

    let output = db.dir.path().join("out.jsonl");
    let bin = env!("CARGO_BIN_EXE_hindsight");
    let run = std::process::Command::new(bin)
        .args([
            "export",
            "--format",
            "openai-jsonl",
            "--database-url",
            &db.url,
            "--data-dir",
        ])
        .arg(db.dir.path())
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let examples = lines(&std::fs::read(&output).unwrap());
    assert_eq!(examples.len(), 2);
    assert_eq!(examples[1]["messages"][4]["content"], "hi again");

    let bad = std::process::Command::new(bin)
        .args([
            "export",
            "--format",
            "trajectories",
            "--since",
            "yesterday",
            "--database-url",
            &db.url,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an RFC 3339 time"));
    let unreachable = std::process::Command::new(bin)
        .args([
            "export",
            "--format",
            "trajectories",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/x",
            "--data-dir",
        ])
        .arg(db.dir.path())
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(
        String::from_utf8_lossy(&unreachable.stderr).contains("unreachable"),
        "{}",
        String::from_utf8_lossy(&unreachable.stderr)
    );
}
