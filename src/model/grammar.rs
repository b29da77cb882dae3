//! Grammar-constrained decoding with llguidance: constraints compiled against the model's
//! tokenizer into per-step token masks (serving), and replayed over logged tokens (training).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use toktrie_hf_tokenizers::ByteTokenizer;

/// A grammar for constrained decoding, compiled by llguidance against the model's tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "grammar", rename_all = "snake_case")]
pub enum Constraint {
    /// Output is one JSON value valid under this JSON Schema (`json_object` is
    /// `{"type": "object"}`).
    JsonSchema(serde_json::Value),
    /// Output follows this llguidance Lark grammar (tool calls embed `%json` schemas).
    Lark(String),
}

impl Constraint {
    fn describe(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "JSON schema",
            Constraint::Lark(_) => "grammar",
        }
    }
}

/// Compiles constraints against one model's tokenizer. Built once per model (the token trie
/// takes a while); cheap to clone and shared by every request thread.
#[derive(Clone)]
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
    n_vocab: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("n_vocab", &self.n_vocab)
            .finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// Reads `dir/tokenizer.json`. `n_vocab` is the logits width (config `vocab_size`, which may
    /// exceed the tokenizer's: the extra ids are never allowed); `eos_tokens` end generation and
    /// are allowed wherever the grammar accepts.
    pub fn from_model_dir(dir: &Path, n_vocab: usize, eos_tokens: &[u32]) -> anyhow::Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = ByteTokenizer::from_file(&path)
            .with_context(|| format!("{}: cannot build the grammar tokenizer", path.display()))?;
        if eos_tokens.is_empty() {
            anyhow::bail!("constrained decoding needs the model's end-of-sequence token");
        }
        let tokenizer_vocab = tokenizer.tokrx_info().vocab_size as usize;
        if let Some(&bad) = eos_tokens.iter().find(|&&t| t as usize >= tokenizer_vocab) {
            anyhow::bail!(
                "end-of-sequence token {bad} is outside the tokenizer ({tokenizer_vocab} ids)"
            );
        }
        // set_eos_tokens asserts its range, checked just above.
        tokenizer.set_eos_tokens(eos_tokens);
        let env = tokenizer.into_tok_env(Some(n_vocab)).with_context(|| {
            format!("the tokenizer ({tokenizer_vocab} ids) does not fit the logits ({n_vocab})")
        })?;
        let mut factory = ParserFactory::new_simple(&env)?;
        // Errors go back to API clients: keep them to the cause, without parser dumps.
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        Ok(Self {
            factory: Arc::new(factory),
            n_vocab,
        })
    }

    /// The width of every mask (the logits width).
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Compiles a constraint; Err is a message naming what the grammar engine could not compile.
    pub fn compile(&self, c: &Constraint) -> Result<Matcher, String> {
        let what = c.describe();
        let grammar = match c {
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            Constraint::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        // llguidance reports bad grammars as errors; the catch is for any internal panic, which
        // must not take a request thread down.
        let parser = catch_unwind(AssertUnwindSafe(|| self.factory.create_parser(grammar)))
            .map_err(|_| format!("the {what} could not be compiled: the grammar engine failed"))?
            .map_err(|e| format!("the {what} could not be compiled: {e}"))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(format!("the {what} could not be compiled: {e}")),
            None => Ok(matcher),
        }
    }

    /// For each position i of `tokens`, the token ids allowed before tokens[i] was sampled
    /// (as a Vec<bool> of length n_vocab). Errors if a token was not allowed.
    pub fn replay_masks(&self, c: &Constraint, tokens: &[u32]) -> Result<Vec<Vec<bool>>, String> {
        let mut matcher = self.compile(c)?;
        let mut masks = Vec::with_capacity(tokens.len());
        for (i, &token) in tokens.iter().enumerate() {
            if matcher.is_stopped() {
                return Err(format!(
                    "token {i} ({token}) comes after the grammar was complete"
                ));
            }
            let mask = matcher
                .compute_mask()
                .map_err(|e| format!("token {i}: {e}"))?;
            if (token as usize) >= mask.len() || !mask.is_allowed(token) {
                return Err(format!("token {i} ({token}) is not allowed by the grammar"));
            }
            masks.push(to_bools(&mask, self.n_vocab));
            matcher
                .consume_token(token)
                .map_err(|e| format!("token {i} ({token}): {e}"))?;
        }
        Ok(masks)
    }
}

fn to_bools(mask: &SimpleVob, n: usize) -> Vec<bool> {
    let mut allowed = vec![false; n];
    mask.iter_set_entries(|i| {
        if let Some(slot) = allowed.get_mut(i) {
            *slot = true;
        }
    });
    allowed
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    /// The real default model's tokenizer, imported where the integration tests import it.
    fn compiler() -> &'static (GrammarCompiler, crate::model::tokenizer::TextTokenizer) {
        static C: OnceLock<(GrammarCompiler, crate::model::tokenizer::TextTokenizer)> =
            OnceLock::new();
        C.get_or_init(|| {
            let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tmp/hindsight-data");
            let dir = crate::model::default_model::default_model_dir(&data).expect("model");
            let config = crate::model::config::ModelConfig::from_dir(&dir).expect("config");
            let tokenizer = crate::model::tokenizer::TextTokenizer::from_dir(&dir).expect("tok");
            let compiler = GrammarCompiler::from_model_dir(
                &dir,
                config.vocab_size,
                &tokenizer.eos_token_ids(),
            )
            .expect("compiler");
            (compiler, tokenizer)
        })
    }

    #[test]
    fn json_schema_masks_replay_over_a_valid_output() {
        assert_send_sync::<GrammarCompiler>();
        let (compiler, tokenizer) = compiler();
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "n": {"type": "integer", "enum": [1, 2]}},
            "required": ["name", "n"],
            "additionalProperties": false,
        });
        let c = Constraint::JsonSchema(schema);
        let mut tokens = tokenizer.encode(r#"{"name":"ab","n":2}"#).unwrap();
        let masks = compiler
            .replay_masks(&c, &tokens)
            .expect("a valid output replays");
        assert_eq!(masks.len(), tokens.len());
        assert!(masks.iter().all(|m| m.len() == compiler.n_vocab()));
        assert!(masks.iter().zip(&tokens).all(|(m, &t)| m[t as usize]));
        // The first position allows only what can start an object.
        let open = masks[0].iter().filter(|&&a| a).count();
        assert!(
            open > 0 && open < 1000,
            "{open} tokens allowed at the start"
        );
        let eos = tokenizer.eos_token_ids()[0] as usize;
        assert!(
            !masks[0][eos],
            "EOS is not allowed before the object is complete"
        );
        // After the closing brace the grammar is complete: nothing may follow.
        tokens.push(eos as u32);
        let err = compiler.replay_masks(&c, &tokens).unwrap_err();
        assert!(err.contains("after the grammar was complete"), "{err}");
        // A token the grammar forbids is reported with its position.
        let bad = tokenizer.encode(r#"{"name":"ab","n":3}"#).unwrap();
        let err = compiler.replay_masks(&c, &bad).unwrap_err();
        assert!(err.contains("not allowed"), "{err}");
    }

    #[test]
    fn lark_tool_call_with_inline_json_compiles_and_replays() {
        let (compiler, tokenizer) = compiler();
        let grammar = r#"start: "<tool_call>\n" %json{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]} "\n</tool_call>""#;
        let c = Constraint::Lark(grammar.into());
        let text = "<tool_call>\n{\"city\":\"Paris\"}\n</tool_call>";
        let tokens = tokenizer.encode(text).unwrap();
        let masks = compiler.replay_masks(&c, &tokens).expect("replays");
        assert_eq!(masks.len(), tokens.len());
    }

    #[test]
    fn unsupported_schemas_and_bad_grammars_are_errors_naming_the_part() {
        let (compiler, _) = compiler();
        let schema = serde_json::json!({"type": "array", "uniqueItems": true});
        let err = compiler
            .compile(&Constraint::JsonSchema(schema))
            .err()
            .expect("uniqueItems is not supported");
        assert!(err.contains("uniqueItems"), "{err}");
        let err = compiler
            .compile(&Constraint::Lark("start: nothing_defined".into()))
            .err()
            .expect("an undefined rule");
        assert!(err.contains("nothing_defined"), "{err}");
        let err = compiler
            .compile(&Constraint::JsonSchema(
                serde_json::json!({"type": "objekt"}),
            ))
            .err()
            .expect("an unknown type");
        assert!(err.contains("objekt"), "{err}");
    }
}
