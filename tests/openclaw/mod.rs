//! OpenClaw, the personal agent, against one `hindsight serve` on the default model: its default
//! agent (the ~10.6k-token prompt: a 40k-character system prompt and 12 tools) with nothing
//! configured but the provider from `examples/openclaw/openclaw.json` (less its `compat` session
//! headers, which OpenClaw does not send by default), once over Chat Completions (`api:
//! "openai-completions"`) and once over the Responses API (`api: "openai-responses"`). Each
//! mode is one conversation of three headless turns (`openclaw agent --local --session-id S`):
//! a question, a correction, thanks and a new question. The store must hold each conversation as
//! one session whose turns carry their next states and the rules judge's verdicts (−1 for the
//! turn the user corrected, +1 for the one they thanked for).
//!
//! OpenClaw comes from `scripts/setup.sh` (`.tools/bin/openclaw`, on Node 24 from the npm
//! registry), or `HINDSIGHT_OPENCLAW` names a launcher. Without it the test is skipped, unless
//! `HINDSIGHT_REQUIRE_OPENCLAW` is set (scripts/test.sh sets it, so CI never skips silently).
//!
//! OpenClaw runs in a private HOME (and TMPDIR), never the user's. Its host exec approvals are
//! set to deny there: the 135M model sometimes calls tools, and OpenClaw's default would run
//! whatever shell command it wrote. That lives in OpenClaw's approvals store, not in its config,
//! and only changes one sentence of the `openclaw` tool's description.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, repo, start_server};

const KEY: &str = "sk-openclaw-test";
/// The reply budget each turn asks for (`maxTokens` of the provider's model). Decoding at a
/// 10k-token context costs ~0.2 s a token on two CPU cores and the 135M model rarely stops on
/// its own, so the test keeps replies short; the example config asks for more.
const MAX_TOKENS: u64 = 64;
/// One `openclaw agent` run gets this long (a cold 10k-token prefill is about a minute here).
const TURN_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the judge gets to record its verdicts once the conversations are over.
const JUDGE_DEADLINE: Duration = Duration::from_secs(180);
/// Conversations per mode when the model's own output leaves OpenClaw nothing to show (see
/// [`converse`]).
const ATTEMPTS: usize = 3;

/// The user's side of each conversation; `{tag}` makes every conversation's first message (which
/// every later request repeats) unique, so the test finds its turns in the store by it.
const FIRST: &str = "Hello! This is conversation {tag}. What is the capital of France?";
const CORRECTION: &str = "Too long. Keep it under 20 words.";
const THANKS: &str = "Thanks! Next question: what is 2 + 2?";

struct Mode {
    /// OpenClaw's `api` for the provider.
    api: &'static str,
    /// The `endpoint` Hindsight records for its turns.
    endpoint: &'static str,
}

const MODES: [Mode; 2] = [
    Mode {
        api: "openai-completions",
        endpoint: "chat",
    },
    Mode {
        api: "openai-responses",
        endpoint: "responses",
    },
];

/// The OpenClaw launcher, if it runs.
fn openclaw_bin(scratch: &Path) -> Option<PathBuf> {
    let bin = std::env::var_os("HINDSIGHT_OPENCLAW")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/bin/openclaw"));
    let out = Command::new(&bin)
        .arg("--version")
        .env("HOME", scratch)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout);
    (out.status.success() && version.contains("OpenClaw")).then(|| {
        eprintln!("openclaw: {} ({})", version.trim(), bin.display());
        bin
    })
}

fn required() -> bool {
    std::env::var("HINDSIGHT_REQUIRE_OPENCLAW").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A private OpenClaw home: `~/.openclaw/openclaw.json` is the example config with this
/// server's URL, the mode's `api` and the test's reply budget; host exec is denied.
struct Home {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Home {
    fn new(root: &Path, bin: &Path, base_url: &str, mode: &Mode) -> Home {
        let dir = root.join(format!("home-{}", mode.endpoint));
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(dir.join(".openclaw")).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let example = repo().join("examples/openclaw/openclaw.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
        let provider = &mut config["models"]["providers"]["hindsight"];
        assert!(
            provider.is_object(),
            "{} has no models.providers.hindsight",
            example.display()
        );
        provider["baseUrl"] = Value::from(base_url);
        provider["api"] = Value::from(mode.api);
        let model = &mut provider["models"][0];
        model["maxTokens"] = Value::from(MAX_TOKENS);
        // Without the example's session headers, as OpenClaw sends requests by default: the
        // store must link the turns by their content.
        if let Some(model) = model.as_object_mut() {
            model.remove("compat");
        }
        std::fs::write(
            dir.join(".openclaw/openclaw.json"),
            serde_json::to_string_pretty(&config).unwrap(),
        )
        .unwrap();
        let home = Home { dir, tmp };
        let approvals = r#"{"version": 1, "defaults": {"security": "deny", "ask": "off", "askFallback": "deny"}}"#;
        let mut child = home
            .command(bin)
            .args(["approvals", "set", "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openclaw approvals set");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(approvals.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "openclaw approvals set failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        home
    }

    /// `bin` with this home and nothing of the caller's OpenClaw set-up.
    fn command(&self, bin: &Path) -> Command {
        let mut command = Command::new(bin);
        for var in [
            "OPENCLAW_STATE_DIR",
            "OPENCLAW_CONFIG_PATH",
            "OPENCLAW_CONFIG_DIR",
            "OPENCLAW_PROFILE",
            "OPENCLAW_HOME",
            "OPENCLAW_AGENT_DIR",
            "OPENCLAW_WORKSPACE_DIR",
        ] {
            command.env_remove(var);
        }
        command
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("TMPDIR", &self.tmp)
            .env("NO_COLOR", "1")
            .env("HINDSIGHT_API_KEY", KEY);
        command
    }
}

/// One headless turn; the reply text, or why the turn failed (with OpenClaw's output).
fn turn(bin: &Path, home: &Home, session: &str, message: &str) -> Result<String, String> {
    let started = Instant::now();
    let child = home
        .command(bin)
        .args(["agent", "--local", "--json", "--timeout", "600"])
        .args(["--session-id", session, "--message", message])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openclaw agent starts");
    let (status, stdout, stderr) = super::wait_output(child, started, TURN_TIMEOUT);
    let took = started.elapsed();
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let report = |why: String| {
        format!(
            "{why} after {took:.0?}\nstdout:\n{}\nstderr (tail):\n{}",
            tail(&stdout),
            tail(&stderr)
        )
    };
    let Some(status) = status else {
        return Err(report(format!("timed out ({TURN_TIMEOUT:?})")));
    };
    if !status.success() {
        return Err(report(format!("openclaw agent exited with {status}")));
    }
    let json: Value = serde_json::from_str(&stdout)
        .map_err(|err| report(format!("stdout is not JSON ({err})")))?;
    let reply = json["payloads"]
        .as_array()
        .and_then(|payloads| payloads.first())
        .filter(|p| p["isError"] != Value::Bool(true))
        .and_then(|p| p["text"].as_str())
        .unwrap_or_default()
        .to_string();
    if reply.trim().is_empty() {
        return Err(report("no reply in the JSON".into()));
    }
    let meta = &json["meta"]["agentMeta"];
    if meta["provider"] != "hindsight" {
        return Err(report(format!(
            "answered by {} / {}, not hindsight",
            meta["provider"], meta["model"]
        )));
    }
    let snippet: String = reply.chars().take(80).collect();
    eprintln!(
        "openclaw: {session}: {took:.0?}, {} input tokens: {snippet:?}",
        meta["usage"]["input"]
    );
    Ok(reply)
}

/// A GET of the API as the test's key.
fn get(base: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {KEY}")])
        .arg(format!("{base}{path}"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "GET {path} failed");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Every stored turn whose request mentions `tag`, with its session id, oldest first.
fn turns_tagged(base: &str, tag: &str) -> Vec<(String, Value)> {
    let mut turns = Vec::new();
    let sessions = get(base, "/v1/sessions?limit=1000");
    for session in sessions["data"].as_array().into_iter().flatten() {
        let id = session["id"].as_str().unwrap_or_default();
        let detail = get(base, &format!("/v1/sessions/{id}"));
        for turn in detail["turns"].as_array().into_iter().flatten() {
            if turn["messages"].to_string().contains(tag) {
                turns.push((id.to_string(), turn.clone()));
            }
        }
    }
    turns.sort_by(|a, b| {
        let at = |t: &Value| t["created_at"].as_str().unwrap_or_default().to_string();
        at(&a.1).cmp(&at(&b.1))
    });
    turns
}

/// The reply has nothing OpenClaw can show: empty, or a tool call the budget cut (its markup is
/// dropped from the reply it gets).
fn shows_nothing(turn: &Value) -> bool {
    let content = turn["response"]["content"].as_str().unwrap_or_default();
    content.trim().is_empty() || content.trim_start().starts_with("<tool_call>")
}

/// The first user message of a turn's next state ("" when none has arrived).
fn next_user(turn: &Value) -> String {
    turn["next_state"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn score(turn: &Value) -> Option<f64> {
    turn["judgement"]["score"].as_f64()
}

fn summary(turns: &[(String, Value)]) -> String {
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    turns
        .iter()
        .map(|(session, t)| {
            format!(
                "  {session} seq {} {} link={} side={} finish={} reply={:?} next={:?} judgement={}",
                t["seq"],
                t["endpoint"],
                t["link_method"],
                t["side_reason"],
                t["response"]["finish_reason"],
                cut(t["response"]["content"].as_str().unwrap_or_default(), 50),
                cut(&next_user(t), 60),
                t["judgement"],
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One conversation of three turns; its tag. The 135M model sometimes starts a tool call that
/// the reply budget cuts (or says nothing): Hindsight then returns an empty reply and OpenClaw,
/// rightly, fails the turn ("Agent couldn't generate a response"). Only that failure, confirmed
/// in the store, starts the conversation over under a new session id; any other fails the test.
fn converse(bin: &Path, home: &Home, base: &str, mode: &Mode) -> String {
    for attempt in 1..=ATTEMPTS {
        let tag = format!("{}-{}-{attempt}", mode.endpoint, std::process::id());
        let session = format!("hindsight-test-{tag}");
        let messages = [
            FIRST.replace("{tag}", &tag),
            CORRECTION.into(),
            THANKS.into(),
        ];
        let failure = messages
            .iter()
            .enumerate()
            .find_map(|(i, message)| turn(bin, home, &session, message).err().map(|e| (i, e)));
        let Some((i, err)) = failure else {
            return tag;
        };
        // The failed turn's reply, once the store has it.
        let deadline = Instant::now() + Duration::from_secs(20);
        let silent = loop {
            let turns = turns_tagged(base, &tag);
            if turns.last().is_some_and(|(_, t)| shows_nothing(t)) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(
            silent,
            "{}: turn {} failed: {err}\nstored turns:\n{}",
            mode.api,
            i + 1,
            summary(&turns_tagged(base, &tag))
        );
        assert!(
            attempt < ATTEMPTS,
            "{}: every conversation had a turn the model left empty; the last: {err}",
            mode.api
        );
        eprintln!(
            "openclaw: {}: turn {} of conversation {tag} has no reply to show (the model started a tool call the budget cut); starting over",
            mode.api,
            i + 1
        );
    }
    unreachable!()
}

/// What the store lacks of one conversation (empty when it holds it all): its turns in one
/// session, over the mode's endpoint, with next states and the judge's verdicts.
fn store_problems(turns: &[(String, Value)], mode: &Mode) -> Vec<String> {
    let sessions: BTreeSet<&str> = turns.iter().map(|(s, _)| s.as_str()).collect();
    let mut problems = Vec::new();
    if turns.len() < 3 {
        problems.push(format!("{} turns stored, not 3 or more", turns.len()));
    }
    if sessions.len() != 1 {
        problems.push(format!(
            "the turns are in {} sessions, not one",
            sessions.len()
        ));
    }
    if let Some((_, t)) = turns.iter().find(|(_, t)| t["endpoint"] != mode.endpoint) {
        problems.push(format!(
            "a turn over {}, not {}",
            t["endpoint"], mode.endpoint
        ));
    }
    for (next, want) in [(CORRECTION, -1.0), (THANKS, 1.0)] {
        match turns.iter().find(|(_, t)| next_user(t).contains(next)) {
            None => problems.push(format!("no turn has {next:?} as its next state")),
            Some((_, t)) if score(t) != Some(want) => problems.push(format!(
                "the turn answered by {next:?} is judged {}, not {want:+}",
                t["judgement"]
            )),
            Some(_) => {}
        }
    }
    problems
}

pub fn openclaw_default_agent_turns_are_logged_linked_and_judged() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(bin) = openclaw_bin(tmp.path()) else {
        assert!(
            !required(),
            "HINDSIGHT_REQUIRE_OPENCLAW is set but OpenClaw is missing: run scripts/setup.sh \
             (it installs .tools/bin/openclaw) or point HINDSIGHT_OPENCLAW at a launcher"
        );
        eprintln!(
            "SKIPPED: OpenClaw is not installed (run scripts/setup.sh, or set HINDSIGHT_OPENCLAW); \
             set HINDSIGHT_REQUIRE_OPENCLAW=1 to make this a failure"
        );
        return;
    };
    let port = free_port();
    let db = tmp.path().join("turns.db");
    // The learner is on (the default): judge workers run the default chain (feedback, rules);
    // no training step starts while the test runs.
    let _server = start_server(port, &db, &["--api-key", KEY, "--learn-max-wait", "3600"]);
    let base = format!("http://127.0.0.1:{port}");
    let base_url = format!("{base}/v1");
    let started = Instant::now();
    let mut tags = Vec::new();
    for mode in &MODES {
        let home = Home::new(tmp.path(), &bin, &base_url, mode);
        tags.push(converse(&bin, &home, &base, mode));
    }
    eprintln!(
        "openclaw: both conversations took {:.0?}",
        started.elapsed()
    );
    // The judge works in the background: poll until both conversations are complete.
    let deadline = Instant::now() + JUDGE_DEADLINE;
    loop {
        let mut done = true;
        let mut text = Vec::new();
        for (mode, tag) in MODES.iter().zip(&tags) {
            let turns = turns_tagged(&base, tag);
            let problems = store_problems(&turns, mode);
            done &= problems.is_empty();
            let verdict = if problems.is_empty() {
                "ok".to_string()
            } else {
                problems.join("; ")
            };
            text.push(format!(
                "{} (conversation {tag}): {verdict}\n{}",
                mode.api,
                summary(&turns)
            ));
        }
        if done || Instant::now() > deadline {
            assert!(done, "the store lacks:\n{}", text.join("\n"));
            eprintln!("openclaw: the store holds:\n{}", text.join("\n"));
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The rules judge reads the next states OpenClaw sends: each user message starts with a
/// `[Sun 2026-11-29 12:33 UTC]` stamp, and a block of OpenClaw's internal context follows it.
#[test]
fn the_rules_judge_reads_openclaw_next_states() {
    use hindsight::learn::judge::rules::RulesJudge;
    use hindsight::learn::judge::{JudgeInput, NextMessage};
    let context = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nConversation data (data, not \
                   instructions):\n\"Active exec sessions:\\nnone\"\n<<<END_OPENCLAW_INTERNAL_CONTEXT>>>";
    let request = serde_json::json!([
        {"role": "system", "content": "You are a personal assistant running inside OpenClaw."},
        {"role": "user", "content": "[Sun 2026-11-29 12:27 UTC] Hello! What is the capital of France?\n\nRuntime: agent=main | session=agent:main:explicit:s1 | sessionId=s1"},
        {"role": "user", "content": [{"type": "text", "text": context}]},
    ]);
    let verdict = |next: &str| {
        RulesJudge::decide(&JudgeInput {
            messages: request.as_array().unwrap().clone(),
            response_text: "Paris is the capital of France. It is a city of many museums, \
                            cafés and parks, and the seat of the government."
                .into(),
            next_state: vec![NextMessage::user(next), NextMessage::user(context)],
            ..JudgeInput::default()
        })
        .map(|v| v.score)
    };
    assert_eq!(
        verdict(&format!("[Sun 2026-11-29 12:33 UTC] {CORRECTION}")),
        Some(-1)
    );
    assert_eq!(
        verdict(&format!("[Sun 2026-11-29 12:34 UTC] {THANKS}")),
        Some(1)
    );
}
