//! Text <-> token ids for a Hugging Face model directory (tokenizer.json,
//! tokenizer_config.json, generation_config.json), plus a streaming decoder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: cannot read: {detail}", path.display())]
    Read { path: PathBuf, detail: String },
    #[error("{}: invalid: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
    #[error("cannot encode text: {0}")]
    Encode(String),
    #[error("cannot decode token ids: {0}")]
    Decode(String),
}

/// A model's tokenizer. Encoding adds no special tokens: chat templates write them into the
/// text, and special token strings found in the text become their ids, as in transformers.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Arc<Tokenizer>,
    config: Value,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
}

/// A special token in tokenizer_config.json is either a string or an AddedToken object.
fn token_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::Read {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (both required) and
    /// `generation_config.json` (optional: more end-of-sequence ids) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            if tokenizer_path.is_file() {
                TokenizerError::Invalid {
                    path: tokenizer_path.clone(),
                    detail: e.to_string(),
                }
            } else {
                TokenizerError::Read {
                    path: tokenizer_path.clone(),
                    detail: e.to_string(),
                }
            }
        })?;
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let generation_path = dir.join("generation_config.json");
        let generation = if generation_path.is_file() {
            Some(read_json(&generation_path)?)
        } else {
            None
        };
        let bos_token = token_string(config.get("bos_token"));
        let eos_token = token_string(config.get("eos_token"));

        let mut eos_ids: Vec<u32> = Vec::new();
        let mut push = |id: u32| {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        };
        match generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            Some(Value::Number(n)) => n.as_u64().into_iter().for_each(|id| push(id as u32)),
            Some(Value::Array(ids)) => ids
                .iter()
                .filter_map(Value::as_u64)
                .for_each(|id| push(id as u32)),
            _ => {}
        }
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            push(id);
        }
        Ok(TextTokenizer {
            tokenizer: Arc::new(tokenizer),
            config,
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Decodes with special tokens kept, as transformers' `decode` does by default.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The text one token decodes to on its own (a lone piece of a multi-byte character shows
    /// as U+FFFD); None for an id outside the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)?;
        self.tokenizer.decode(&[id], false).ok()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Ids that end generation: generation_config's eos list, then the tokenizer's eos token.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_ids.clone()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The parsed tokenizer_config.json (chat template, special tokens).
    pub fn config(&self) -> &Value {
        &self.config
    }

    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder {
            tokenizer: Arc::clone(&self.tokenizer),
            skip_special_tokens,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// Turns generated ids into text deltas one id at a time. A delta is only released once it
/// decodes to whole characters, so a multi-byte UTF-8 character is never split. Owns its
/// tokenizer handle, so it can move between threads with the generation it follows.
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl StreamDecoder {
    /// The new text this id completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        tokenizers::step_decode_stream(
            &self.tokenizer,
            vec![id],
            self.skip_special_tokens,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Text still held back at the end of generation (an incomplete character, shown as
    /// U+FFFD), or None when everything was already released.
    pub fn finish(self) -> Result<Option<String>, TokenizerError> {
        let text = self
            .tokenizer
            .decode(&self.ids, self.skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))?;
        let rest = text.strip_prefix(self.prefix.as_str()).unwrap_or(&text);
        Ok((!rest.is_empty()).then(|| rest.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn handles_are_send() {
        assert_send::<TextTokenizer>();
        assert_send::<StreamDecoder>();
    }

    #[test]
    fn special_tokens_may_be_objects() {
        let v: Value = serde_json::json!({"content": "<s>", "lstrip": false});
        assert_eq!(token_string(Some(&v)).as_deref(), Some("<s>"));
        assert_eq!(token_string(Some(&Value::Null)), None);
    }
}
