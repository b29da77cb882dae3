//! Runs the official OpenAI SDK suites (tests/sdk/, Python and Node) against `app()` served on
//! the fake backend over a real port. The same suites run against the real model by pointing
//! HINDSIGHT_BASE_URL at `hindsight serve`.

mod api_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use hindsight::api::testing::{echo_or_seeded, FakeConfig, FakeReply};

const KEY: &str = "sk-sdk-test";
const TOOL_CALL: &str =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fake that calls the weather tool whenever tools are offered and may be used.
async fn sdk_server() -> String {
    let config = FakeConfig {
        reply: FakeReply::Script(Arc::new(|request, prompt| {
            if prompt.contains("<|tools|>") && !prompt.contains("<|tool|>") {
                TOOL_CALL.to_string()
            } else {
                echo_or_seeded(request, prompt)
            }
        })),
        // Small enough that a burst of 16 is refused, large enough for n=2.
        max_in_flight: Some(4),
        token_delay: Duration::from_millis(2),
        ..FakeConfig::default()
    };
    let app = test_app_with(config, &[KEY], 1 << 20);
    let addr = spawn_server(app.router).await;
    format!("http://{addr}/v1")
}

async fn run_suite(mut command: tokio::process::Command, base_url: &str) {
    let output = command
        .current_dir(repo())
        .env("HINDSIGHT_BASE_URL", base_url)
        .env("HINDSIGHT_API_KEY", KEY)
        .env("HINDSIGHT_EXPECT_AUTH", "1")
        .env("HINDSIGHT_EXPECT_429", "1")
        .env("HINDSIGHT_EXPECT_TOOL_CALLS", "1")
        .env_remove("HINDSIGHT_MODEL")
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "{command:?} failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk() {
    let base_url = sdk_server().await;
    let python = std::env::var("HINDSIGHT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".venv/bin/python"));
    let mut command = tokio::process::Command::new(python);
    command.args(["tests/sdk/test_openai_python.py", "-v"]);
    run_suite(command, &base_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_node_sdk() {
    let base_url = sdk_server().await;
    let mut command = tokio::process::Command::new("node");
    command.args(["--test", "tests/sdk/openai_node.test.mjs"]);
    run_suite(command, &base_url).await;
}
