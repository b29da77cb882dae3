//! The judge library end to end: the rules judge on realistic next messages, and the `openai`
//! judge against a fake OpenAI-compatible server started inside the test (over HTTP and TLS).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use hindsight::learn::judge::{
    default_chain, judge_from_config, FeedbackInput, JudgeError, JudgeInput, LlmJudgeConfig,
    NextMessage, Rating, RulesJudge,
};

fn turn(next: Vec<NextMessage>) -> JudgeInput {
    JudgeInput {
        messages: vec![
            json!({"role": "system", "content": "You are a helpful assistant."}),
            json!({"role": "user", "content": "What is the capital of France?"}),
        ],
        response_text: "The capital of France is Paris, a city of about two million people on \
            the Seine, known for the Eiffel Tower, the Louvre and its cafés."
            .into(),
        response_tool_calls: None,
        next_state: next,
        feedback: vec![],
    }
}

/// (next user message, expected score (None = abstain), whether the message becomes the hint)
const USER_CASES: &[(&str, Option<i8>, bool)] = &[
    // Corrections that say how: -1 and the message is the hint.
    ("Too long. Keep it under 20 words.", Some(-1), true),
    ("Way too wordy — give me the short version.", Some(-1), true),
    ("Please be brief, 20 words max.", Some(-1), true),
    ("Can you shorten that?", Some(-1), true),
    (
        "That's a lot of text; just a sentence please.",
        Some(-1),
        true,
    ),
    ("too long", Some(-1), true),
    ("Shorter please", Some(-1), true),
    ("Shorter, please — max 20 words.", Some(-1), true),
    ("Too verbose. One sentence.", Some(-1), true),
    ("Please keep it to 20 words or fewer.", Some(-1), true),
    ("Can you say that in fewer words?", Some(-1), true),
    (
        "That was too long, try again in under twenty words.",
        Some(-1),
        true,
    ),
    ("Make it shorter.", Some(-1), true),
    ("Can you keep your answers under 20 words?", Some(-1), true),
    ("Explain it in one sentence.", Some(-1), true),
    ("Could you be more concise?", Some(-1), true),
    ("TL;DR please", Some(-1), true),
    ("ugh, WAY too long!!", Some(-1), true),
    ("Thanks, but that's too long.", Some(-1), true),
    ("Great, but can you make it shorter?", Some(-1), true),
    ("no, I meant the capital of Peru", Some(-1), true),
    ("That’s wrong, the capital is Lima.", Some(-1), true),
    ("You forgot to mention the population.", Some(-1), true),
    ("I said one sentence!", Some(-1), true),
    ("Again but in French.", Some(-1), true),
    ("Not what I asked. I wanted the population.", Some(-1), true),
    (
        "Perfect! But you forgot the year it became the capital.",
        Some(-1),
        true,
    ),
    ("Just the answer please, no explanation.", Some(-1), true),
    // Bare rejections: -1 without a hint.
    ("No.", Some(-1), false),
    ("wrong", Some(-1), false),
    ("Try again.", Some(-1), false),
    ("👎", Some(-1), false),
    ("/bad", Some(-1), false),
    ("Nope, that's not it.", Some(-1), false),
    ("That's not what I asked", Some(-1), false),
    ("Thanks, but that's wrong.", Some(-1), false),
    ("That’s WRONG!!!", Some(-1), false),
    // Progress: +1.
    ("Thanks!", Some(1), false),
    ("THANKS!!! 🙏", Some(1), false),
    ("Perfect, thank you.", Some(1), false),
    ("👍🏽", Some(1), false),
    ("/good", Some(1), false),
    ("Great, exactly what I needed.", Some(1), false),
    (
        "Next question: what is the capital of Peru?",
        Some(1),
        false,
    ),
    ("Thanks! Now, how do magnets work?", Some(1), false),
    ("How do magnets work?", Some(1), false),
    ("Explain photosynthesis in one sentence.", Some(1), false),
    ("Ok, what's the tallest mountain in Africa?", Some(1), false),
    ("Not bad, thanks.", Some(1), false),
    ("No problem. Next one: who wrote Hamlet?", Some(1), false),
    ("Cool. Tell me about black holes.", Some(1), false),
    ("That works, thanks a lot!", Some(1), false),
    (
        "Moving on — which river is longer, the Nile or the Amazon?",
        Some(1),
        false,
    ),
    // Unsure: abstain.
    ("Hmm.", None, false),
    ("What do you mean?", None, false),
    ("Are you sure?", None, false),
    ("Why?", None, false),
    ("Interesting.", None, false),
    ("🤔", None, false),
    ("", None, false),
    ("   ", None, false),
    ("Perfect, that's wrong.", None, false),
    ("Is it safe to eat raw eggs?", None, false),
    ("What is the capital of France?", None, false),
    ("Yes and no.", None, false),
];

#[test]
fn rules_read_realistic_next_messages() {
    let mut failures = Vec::new();
    for &(message, score, hinted) in USER_CASES {
        let input = turn(vec![NextMessage::user(message)]);
        let reading = RulesJudge::read(&input);
        let verdict = RulesJudge::decide(&input);
        let want_hint = hinted.then(|| message.trim().to_string());
        let got_hint = verdict.as_ref().and_then(|v| v.hint.clone());
        if verdict.as_ref().map(|v| v.score) != score || got_hint != want_hint {
            failures.push(format!(
                "{message:?}: want {score:?} hint {hinted}, got {:?} hint {got_hint:?} from {:?}",
                reading.score, reading.cues
            ));
        }
        if let Some(verdict) = verdict {
            assert_eq!((verdict.source, verdict.judge.as_str()), ("rules", "rules"));
            assert_eq!(verdict.votes.len(), 1, "the cues are recorded as one vote");
        }
    }
    assert!(USER_CASES.len() >= 40);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rules_read_tool_results() {
    let cases: &[(&str, Option<i8>)] = &[
        (
            "Traceback (most recent call last):\n  File \"main.py\", line 3\nZeroDivisionError: division by zero",
            Some(-1),
        ),
        (r#"{"error": "city not found"}"#, Some(-1)),
        ("$ make\nmake: *** [all] Error 2\nexit code: 2", Some(-1)),
        ("bash: jq: command not found", Some(-1)),
        (r#"{"temperature": 18, "error": null}"#, None),
        ("exit code: 0\nok", None),
        ("def safe():\n    try:\n        run()\n    except Exception:\n        pass", None),
    ];
    for &(content, score) in cases {
        let input = turn(vec![NextMessage::tool(content)]);
        let verdict = RulesJudge::decide(&input);
        assert_eq!(verdict.as_ref().map(|v| v.score), score, "{content:?}");
        assert_eq!(
            verdict.and_then(|v| v.hint),
            None,
            "tool errors give no hint"
        );
    }
    // A tool error outweighs a bare "thanks", but against clear praise the cues are mixed.
    let thanks = turn(vec![
        NextMessage::tool("Error: permission denied"),
        NextMessage::user("Thanks!"),
    ]);
    assert_eq!(RulesJudge::decide(&thanks).map(|v| v.score), Some(-1));
    let mixed = turn(vec![
        NextMessage::tool("Error: permission denied"),
        NextMessage::user("Perfect, thanks!"),
    ]);
    assert_eq!(RulesJudge::decide(&mixed), None);
}

/// What the fake judge server answers and what it saw.
#[derive(Default)]
struct Fake {
    eval: Vec<&'static str>,
    hints: Vec<&'static str>,
    honour_n: bool,
    reject_n: bool,
    status: Option<u16>,
    delay: Duration,
    bodies: Mutex<Vec<Value>>,
    auth: Mutex<Vec<String>>,
    eval_at: AtomicUsize,
    hint_at: AtomicUsize,
}

async fn completions(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    fake.bodies.lock().unwrap().push(body.clone());
    if let Some(auth) = headers.get("authorization") {
        fake.auth
            .lock()
            .unwrap()
            .push(auth.to_str().unwrap().to_string());
    }
    tokio::time::sleep(fake.delay).await;
    if let Some(status) = fake.status {
        let status = StatusCode::from_u16(status).unwrap();
        return (status, "the judge model is overloaded").into_response();
    }
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    if n > 1 && fake.reject_n {
        return (StatusCode::BAD_REQUEST, "n must be 1").into_response();
    }
    let prompt = body["messages"][1]["content"].as_str().unwrap_or_default();
    let (list, at) = if prompt.contains("[HINT]") {
        (&fake.hints, &fake.hint_at)
    } else {
        (&fake.eval, &fake.eval_at)
    };
    let count = if fake.honour_n { n } else { 1 };
    let choices: Vec<Value> = (0..count)
        .map(|i| {
            let text = list[at.fetch_add(1, Ordering::SeqCst) % list.len()];
            json!({"index": i, "message": {"role": "assistant", "content": text},
                   "finish_reason": "stop"})
        })
        .collect();
    Json(
        json!({"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": choices}),
    )
    .into_response()
}

fn app(fake: &Arc<Fake>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(fake.clone())
}

async fn serve(fake: Fake) -> (String, Arc<Fake>) {
    let fake = Arc::new(fake);
    let app = app(&fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), fake)
}

fn correction_turn() -> JudgeInput {
    turn(vec![NextMessage::user(
        "Way too long, I only wanted the name.",
    )])
}

#[tokio::test]
async fn openai_judge_takes_the_majority_and_the_longest_hint() {
    let (url, fake) = serve(Fake {
        eval: vec![
            r"The user complains. \boxed{-1}",
            r"\boxed{ -1 }",
            r"\boxed{+1}",
        ],
        hints: vec![
            r"\boxed{1} [HINT]Answer with just the city name.[/HINT]",
            r"\boxed{1} [HINT]Give only the name of the capital, in one or two words.[/HINT]",
            r"\boxed{1} [HINT]Short.[/HINT]",
        ],
        honour_n: true,
        ..Fake::default()
    })
    .await;
    let mut config = LlmJudgeConfig::new(&url, "judge-model");
    config.api_key = Some("sk-test".into());
    let judge = judge_from_config(&config).unwrap();
    assert_eq!(judge.name(), format!("openai:judge-model@{url}"));
    let verdict = judge.judge(&correction_turn()).await.unwrap().unwrap();
    assert_eq!((verdict.source, verdict.score), ("openai", -1));
    assert_eq!(verdict.judge, format!("openai:judge-model@{url}"));
    let values: Vec<_> = verdict.votes.iter().map(|v| v.value).collect();
    assert_eq!(values, [Some(-1), Some(-1), Some(1)]);
    assert_eq!(
        verdict.hint.as_deref(),
        Some("Give only the name of the capital, in one or two words.")
    );
    assert_eq!(verdict.hint_votes.len(), 3);
    assert!(verdict.hint_votes.iter().all(|v| v.accepted));

    // One request per prompt, asking for n = 3 at temperature 0.6, with the key.
    let bodies = fake.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        assert_eq!(
            (body["n"].as_u64(), body["temperature"].as_f64()),
            (Some(3), Some(0.6))
        );
        assert_eq!(body["model"], "judge-model");
        let prompt = body["messages"][1]["content"].as_str().unwrap();
        assert!(
            prompt.contains("What is the capital of France?"),
            "the request"
        );
        assert!(
            prompt.contains("The capital of France is Paris"),
            "the response"
        );
        assert!(
            prompt.contains("Way too long, I only wanted the name."),
            "the next state"
        );
        assert!(prompt.contains("role=\"user\""), "the next state's role");
    }
    let evaluative = bodies
        .iter()
        .filter(|b| b.to_string().contains(r"\\boxed{-1}"));
    assert!(evaluative.count() >= 1);
    assert_eq!(
        *fake.auth.lock().unwrap(),
        ["Bearer sk-test", "Bearer sk-test"]
    );
}

#[tokio::test]
async fn openai_judge_ties_unparseable_votes_and_servers_ignoring_n() {
    // The server answers one choice whatever n is: the judge asks for the rest one by one.
    let (url, fake) = serve(Fake {
        eval: vec![r"\boxed{1}", r"\boxed{-1}", "I cannot decide."],
        hints: vec![r"\boxed{0}"],
        ..Fake::default()
    })
    .await;
    let judge = judge_from_config(&LlmJudgeConfig::new(&url, "m")).unwrap();
    let verdict = judge.judge(&correction_turn()).await.unwrap().unwrap();
    assert_eq!(verdict.score, 0, "one +1, one -1, one dropped: a tie");
    assert_eq!(verdict.votes.len(), 3);
    assert_eq!(verdict.votes[2].value, None);
    assert_eq!(verdict.hint, None);
    assert!(verdict.hint_votes.iter().all(|v| !v.accepted));
    assert!(fake.bodies.lock().unwrap().len() >= 5);

    let (url, _) = serve(Fake {
        eval: vec!["no verdict here", r"\boxed{maybe}"],
        hints: vec![r"\boxed{0}"],
        honour_n: true,
        ..Fake::default()
    })
    .await;
    let judge = judge_from_config(&LlmJudgeConfig::new(&url, "m")).unwrap();
    assert_eq!(
        judge.judge(&correction_turn()).await.unwrap(),
        None,
        "abstains"
    );

    // A server refusing n > 1 gets one request per vote.
    let (url, fake) = serve(Fake {
        eval: vec![r"\boxed{1}"],
        hints: vec![r"\boxed{0}"],
        honour_n: true,
        reject_n: true,
        ..Fake::default()
    })
    .await;
    let mut config = LlmJudgeConfig::new(&url, "m");
    config.hints = false;
    let judge = judge_from_config(&config).unwrap();
    let verdict = judge.judge(&correction_turn()).await.unwrap().unwrap();
    assert_eq!((verdict.score, verdict.votes.len()), (1, 3));
    assert!(verdict.hint_votes.is_empty());
    assert_eq!(
        fake.bodies.lock().unwrap().len(),
        4,
        "one refused, three single votes"
    );
}

#[tokio::test]
async fn openai_judge_errors_are_clear() {
    let (url, _) = serve(Fake {
        status: Some(503),
        ..Fake::default()
    })
    .await;
    let judge = judge_from_config(&LlmJudgeConfig::new(&url, "m")).unwrap();
    let err = judge.judge(&correction_turn()).await.unwrap_err();
    assert!(
        matches!(err, JudgeError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("overloaded"), "{err}");

    let (url, _) = serve(Fake {
        eval: vec![r"\boxed{1}"],
        hints: vec![r"\boxed{0}"],
        delay: Duration::from_secs(5),
        ..Fake::default()
    })
    .await;
    let mut config = LlmJudgeConfig::new(&url, "m");
    config.timeout = Duration::from_millis(300);
    let judge = judge_from_config(&config).unwrap();
    let err = judge.judge(&correction_turn()).await.unwrap_err();
    assert!(matches!(err, JudgeError::Timeout { .. }), "{err:?}");

    // Nothing listens on this port once the listener is dropped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let judge = judge_from_config(&LlmJudgeConfig::new(&closed, "m")).unwrap();
    let err = judge.judge(&correction_turn()).await.unwrap_err();
    assert!(matches!(err, JudgeError::Http { .. }), "{err:?}");
    assert!(err.to_string().contains(&closed), "{err}");
}

#[tokio::test]
async fn default_chain_feedback_then_rules_then_the_llm() {
    let (url, fake) = serve(Fake {
        eval: vec![r"\boxed{1}"],
        hints: vec![r"\boxed{0}"],
        honour_n: true,
        ..Fake::default()
    })
    .await;
    let chain = default_chain(Some(
        judge_from_config(&LlmJudgeConfig::new(&url, "m")).unwrap(),
    ));
    assert_eq!(
        chain.describe(),
        [
            "feedback".to_string(),
            "rules".into(),
            format!("openai:m@{url}")
        ]
    );
    // The rules decide a clear case without asking the LLM.
    let clear = turn(vec![NextMessage::user("Too long. Keep it under 20 words.")]);
    let verdict = chain.judge(&clear).await.unwrap().unwrap();
    assert_eq!((verdict.source, verdict.score), ("rules", -1));
    assert!(fake.bodies.lock().unwrap().is_empty());
    // An unclear case goes to the LLM.
    let unclear = turn(vec![NextMessage::user("Hmm.")]);
    let verdict = chain.judge(&unclear).await.unwrap().unwrap();
    assert_eq!((verdict.source, verdict.score), ("openai", 1));
    // Explicit feedback outranks both, and its correction is the hint.
    let mut rated = clear.clone();
    rated.feedback.push(FeedbackInput {
        rating: Some(Rating::Up),
        correction: None,
    });
    rated.feedback.push(FeedbackInput {
        rating: None,
        correction: Some("Name the city only.".into()),
    });
    let verdict = chain.judge(&rated).await.unwrap().unwrap();
    assert_eq!((verdict.source, verdict.score), ("feedback", 1));
    assert_eq!(verdict.hint.as_deref(), Some("Name the city only."));
    // Feedback without a next state: the feedback judge still answers; nothing else can.
    let feedback_only = JudgeInput {
        next_state: vec![],
        ..rated
    };
    assert_eq!(
        chain.judge(&feedback_only).await.unwrap().unwrap().source,
        "feedback"
    );
    let nothing = JudgeInput {
        next_state: vec![],
        ..turn(vec![])
    };
    assert_eq!(chain.judge(&nothing).await.unwrap(), None);
}

/// The fake judge over TLS at `https://localhost:PORT/v1`, with a self-signed certificate made
/// here for "localhost"; also the directory holding that certificate as `ca.pem`.
async fn serve_tls(fake: Fake) -> (String, tempfile::TempDir, Arc<Fake>) {
    let fake = Arc::new(fake);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
    let service = app(&fake).into_make_service();
    tokio::spawn(async move { server.serve(service).await.unwrap() });
    (format!("https://localhost:{port}/v1"), dir, fake)
}

#[tokio::test]
async fn openai_judge_over_https_trusts_the_given_ca_only() {
    let (url, dir, fake) = serve_tls(Fake {
        eval: vec![r"\boxed{-1}"],
        hints: vec![r"\boxed{1} [HINT]Answer with just the city name.[/HINT]"],
        honour_n: true,
        ..Fake::default()
    })
    .await;
    let mut config = LlmJudgeConfig::new(&url, "m");
    config.ca_cert = Some(dir.path().join("ca.pem"));
    let judge = judge_from_config(&config).unwrap();
    let verdict = judge.judge(&correction_turn()).await.unwrap().unwrap();
    assert_eq!((verdict.source, verdict.score), ("openai", -1));
    assert_eq!(
        verdict.hint.as_deref(),
        Some("Answer with just the city name.")
    );
    assert_eq!(fake.bodies.lock().unwrap().len(), 2);

    // Without the CA the public roots do not vouch for the certificate.
    let judge = judge_from_config(&LlmJudgeConfig::new(&url, "m")).unwrap();
    let err = judge.judge(&correction_turn()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, JudgeError::Http { .. }), "{err:?}");
    assert!(text.contains(&format!("{url}/chat/completions")), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("TLS certificate problem"), "{text}");
    assert!(text.contains("--judge-ca-cert"), "{text}");
    assert_eq!(fake.bodies.lock().unwrap().len(), 2, "nothing got through");
}

#[test]
fn a_bad_ca_cert_file_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.pem", None, "cannot read it"),
        (
            "empty.pem",
            Some("not a certificate\n"),
            "contains no PEM certificate",
        ),
        (
            "broken.pem",
            Some("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            "not a valid PEM certificate file",
        ),
        (
            "not-x509.pem",
            Some("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n"),
            "not a usable CA certificate",
        ),
    ];
    for (name, contents, problem) in cases {
        let path = dir.path().join(name);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap();
        }
        let mut config = LlmJudgeConfig::new("https://localhost:1/v1", "m");
        config.ca_cert = Some(path.clone());
        let err = judge_from_config(&config).err().expect(name);
        let text = err.to_string();
        assert!(matches!(err, JudgeError::Config(_)), "{name}: {err:?}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(problem), "{text}");
    }
}
