//! Rebuilds a Hugging Face `tokenizer.json` and `tokenizer_config.json` from a GGUF's
//! `tokenizer.ggml.*` metadata, the way transformers' GGUF loader does (byte-level BPE only).

use std::collections::HashMap;

use serde_json::{json, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizedString, PreTokenizer, PreTokenizerWrapper};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::reader::{GgufFile, MetaValue};
use super::GgufError;

// llama.cpp's token types (llama_token_type).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex llama.cpp's `tokenizer.ggml.pre` names (the same table transformers uses).
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            LLAMA3_SPLIT
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => QWEN2_SPLIT,
        "gpt-4o" | "llama4" => GPT4O_SPLIT,
        _ => return None,
    })
}

fn pre_tokenizer(pre: &str, path: &std::path::Path) -> Result<PreTokenizerWrapper, GgufError> {
    if let Some(regex) = split_regex(pre) {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| GgufError::Tokenizer {
            path: path.to_path_buf(),
            detail: format!("split regex for {pre}: {e}"),
        })?;
        return Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into());
    }
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        // SmolLM's own tokenizer.json splits every digit before the GPT-2 regex.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        _ => byte_level.into(),
    })
}

/// GPT-2's byte-level spelling of `text` (each UTF-8 byte as one printable char).
fn byte_level_spelling(text: &str) -> String {
    let mut pre = PreTokenizedString::from(text);
    // Without the regex and prefix space, ByteLevel only respells; it cannot fail.
    if ByteLevel::new(false, false, false)
        .pre_tokenize(&mut pre)
        .is_err()
    {
        return text.to_string();
    }
    pre.get_splits(
        tokenizers::OffsetReferential::Original,
        tokenizers::OffsetType::Byte,
    )
    .into_iter()
    .map(|(s, _, _)| s)
    .collect()
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>, GgufError> {
    let items = file
        .get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| file.missing(key))?;
    items
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| GgufError::Tokenizer {
            path: file.path.clone(),
            detail: format!("{key} is not an array of strings"),
        })
}

/// The parts of a GGUF tokenizer that later files need.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub tokenizer_config: Value,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub vocab_len: usize,
}

pub fn build(file: &GgufFile, context_length: Option<u64>) -> Result<GgufTokenizer, GgufError> {
    let path = file.path.clone();
    let tok_err = |detail: String| GgufError::Tokenizer {
        path: path.clone(),
        detail,
    };
    let model = file.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(tok_err(format!(
            "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let merges = string_array(file, "tokenizer.ggml.merges")?;
    let token_types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .map(|a| a.iter().map(|t| t.as_i64().unwrap_or(0)).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };

    let alphabet = ByteLevel::alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            token.clone()
        } else {
            byte_level_spelling(token)
        };
        vocab.insert(spelled, id as u32);
    }
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("merge {m:?} is not two tokens")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect::<Vocab>(),
            merges,
        )
        .build()
        .map_err(|e| tok_err(format!("BPE model: {e}")))?;

    let pre = file.opt_str("tokenizer.ggml.pre").unwrap_or("default");
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre, &file.path)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let id_of = |key: &str| -> Result<Option<u32>, GgufError> {
        match file.opt_u64(key) {
            None => Ok(None),
            Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(tok_err(format!(
                "{key} = {id} is outside the vocabulary of {}",
                tokens.len()
            ))),
        }
    };
    let bos_id = id_of("tokenizer.ggml.bos_token_id")?;
    let eos_id = id_of("tokenizer.ggml.eos_token_id")?;
    let unk_id = id_of("tokenizer.ggml.unknown_token_id")?;
    let pad_id = id_of("tokenizer.ggml.padding_token_id")?;
    let text_of = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(false);
    let add_eos = file
        .opt_bool("tokenizer.ggml.add_eos_token")
        .unwrap_or(false);

    // A control token spelled outside the byte alphabet is a llama.cpp mislabel; transformers
    // skips it too, so the vocabulary keeps the size the model expects.
    let kind = |i: usize| token_types.get(i).copied().unwrap_or(0);
    let control: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| kind(*i) == TOKEN_TYPE_CONTROL && in_alphabet(t))
        .map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| kind(*i) == TOKEN_TYPE_USER_DEFINED && vocab.contains_key(*t))
        .map(|(_, t)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&control);
    tokenizer.add_tokens(&user_defined);

    let (single, pair, specials) =
        match (add_bos, bos_id, &text_of(bos_id), add_eos, &text_of(eos_id)) {
            (true, Some(id), Some(bos), false, _) => (
                format!("{bos} $A:0"),
                format!("{bos} $A:0 {bos}:1 $B:1"),
                vec![(bos.clone(), id)],
            ),
            _ => ("$A:0".to_string(), "$A:0 $B:1".to_string(), vec![]),
        };
    let post = TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| tok_err(format!("post-processor template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| tok_err(format!("post-processor: {e}")))?;
    tokenizer.with_post_processor(Some(post));

    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": false,
        "bos_token": text_of(bos_id),
        "eos_token": text_of(eos_id),
        "unk_token": text_of(unk_id),
        "pad_token": text_of(pad_id),
    });
    if let Some(n) = context_length {
        config["model_max_length"] = json!(n);
    }
    if let Some(template) = file.opt_str("tokenizer.chat_template") {
        config["chat_template"] = json!(template);
    }
    Ok(GgufTokenizer {
        tokenizer,
        tokenizer_config: config,
        bos_id,
        eos_id,
        vocab_len: tokens.len(),
    })
}
