//! The request-preparation steps every generating endpoint shares (chat, completions, responses):
//! sampling parameters, `n`, `stop`, `logit_bias`, streaming options, the completion budget,
//! and the one place a validated request becomes the engine's [`GenerateRequest`]s plus the
//! sampling record logged with the turn.

use serde_json::{json, Value};

use super::dto::StreamOptions;
use super::error::ApiError;
use crate::engine::{
    AdapterChoice, Constraint, GenerateRequest, ModelInfo, Priority, SamplingParams, StopCriteria,
};

/// Most choices per request (OpenAI's own limit).
pub const MAX_CHOICES: u32 = 128;
pub const MAX_STOP_SEQUENCES: usize = 4;
/// OpenAI's range for a `logit_bias` value.
pub const MAX_LOGIT_BIAS: f64 = 100.0;

/// The sampling fields of a request, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct SamplingFields<'a> {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<&'a Value>,
    pub n: Option<u32>,
    pub stop: Option<&'a Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<&'a StreamOptions>,
}

/// [`SamplingFields`] of a request type whose fields carry OpenAI's names (chat, completions).
macro_rules! sampling_fields {
    ($request:expr) => {
        $crate::api::params::SamplingFields {
            temperature: $request.temperature,
            top_p: $request.top_p,
            seed: $request.seed,
            presence_penalty: $request.presence_penalty,
            frequency_penalty: $request.frequency_penalty,
            logit_bias: $request.logit_bias.as_ref(),
            n: $request.n,
            stop: $request.stop.as_ref(),
            stream: $request.stream,
            stream_options: $request.stream_options.as_ref(),
        }
    };
}
pub(crate) use sampling_fields;

/// Validated generation settings shared by every endpoint.
#[derive(Debug, Clone)]
pub struct Generation {
    pub sampling: SamplingParams,
    pub n: usize,
    pub stop_strings: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl Generation {
    pub fn parse(fields: SamplingFields<'_>, info: &ModelInfo) -> Result<Self, ApiError> {
        let mut sampling = sampling_params(
            fields.temperature,
            fields.top_p,
            fields.seed,
            fields.presence_penalty,
            fields.frequency_penalty,
        )?;
        sampling.logit_bias = logit_bias(fields.logit_bias, info.vocab_size)?;
        let stream = fields.stream.unwrap_or(false);
        let include_usage = match fields.stream_options {
            Some(_) if !stream => {
                return Err(ApiError::invalid_param(
                    "stream_options",
                    "stream_options is only allowed when stream is true.",
                ))
            }
            Some(options) => options.include_usage.unwrap_or(false),
            None => false,
        };
        Ok(Self {
            sampling,
            n: choice_count(fields.n)?,
            stop_strings: stop_sequences(fields.stop)?,
            stream,
            include_usage,
        })
    }

    /// One engine request per choice, and the sampling record logged with the turn (it names
    /// the constraint and bias, so the trainer can rebuild the distribution tokens came from).
    pub fn requests(
        &self,
        request_id: &str,
        prompt_tokens: Vec<u32>,
        max_tokens: usize,
        top_logprobs: usize,
        constraint: Option<Constraint>,
    ) -> (Vec<GenerateRequest>, Value) {
        let s = &self.sampling;
        let record = json!({
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "max_tokens": max_tokens,
            "stop": self.stop_strings,
            "n": self.n,
            "top_logprobs": top_logprobs,
            "logit_bias": s.logit_bias,
            "constraint": constraint,
        });
        let base = GenerateRequest {
            request_id: request_id.to_string(),
            prompt_tokens,
            sampling: self.sampling.clone(),
            stop: StopCriteria {
                ignore_eos: false,
                max_tokens,
                stop_strings: self.stop_strings.clone(),
                stop_token_ids: Vec::new(),
            },
            top_logprobs,
            adapter: AdapterChoice::Current,
            priority: Priority::User,
            constraint,
        };
        let requests = (0..self.n).map(|i| choice_request(&base, i)).collect();
        (requests, record)
    }
}

/// Choice `i` of a request: its own id and, with a seed, seed + i so choices differ but replay.
pub fn choice_request(base: &GenerateRequest, index: usize) -> GenerateRequest {
    let mut request = base.clone();
    if index > 0 {
        request.request_id = format!("{}-{index}", base.request_id);
        request.sampling.seed = base.sampling.seed.map(|s| s.wrapping_add(index as u64));
    }
    request
}

pub fn check_model(model: &str, info: &ModelInfo) -> Result<(), ApiError> {
    if model == info.id {
        Ok(())
    } else {
        Err(ApiError::model_not_found(model))
    }
}

fn in_range(param: &str, value: Option<f32>, min: f32, max: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(ApiError::invalid_param(
            param,
            format!("{param} must be between {min} and {max}, got {v}."),
        )),
        _ => Ok(()),
    }
}

pub fn sampling_params(
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
) -> Result<SamplingParams, ApiError> {
    in_range("temperature", temperature, 0.0, 2.0)?;
    in_range("top_p", top_p, 0.0, 1.0)?;
    in_range("presence_penalty", presence_penalty, -2.0, 2.0)?;
    in_range("frequency_penalty", frequency_penalty, -2.0, 2.0)?;
    let top_p = top_p.unwrap_or(1.0);
    Ok(SamplingParams {
        // top_p = 0 keeps only the most likely token: greedy, without an empty nucleus.
        temperature: if top_p == 0.0 {
            0.0
        } else {
            temperature.unwrap_or(1.0)
        },
        top_p: if top_p == 0.0 { 1.0 } else { top_p },
        top_k: 0,
        // OpenAI's seed is a signed 64-bit integer; its bits are the engine's seed.
        seed: seed.map(|s| s as u64),
        presence_penalty: presence_penalty.unwrap_or(0.0),
        frequency_penalty: frequency_penalty.unwrap_or(0.0),
        logit_bias: Vec::new(),
    })
}

/// `logit_bias`: an object mapping token ids (as strings) to a bias in [-100, 100].
pub fn logit_bias(bias: Option<&Value>, vocab_size: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match bias {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "logit_bias",
                "logit_bias must be an object mapping token ids to bias values.",
            ))
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let param = format!("logit_bias.{key}");
        let token = key
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab_size)
            .ok_or_else(|| {
                ApiError::invalid_param(
                    &param,
                    format!(
                        "Invalid key '{key}' in logit_bias: keys must be token ids between 0 \
                         and {}.",
                        vocab_size.saturating_sub(1)
                    ),
                )
            })?;
        let bias = value
            .as_f64()
            .filter(|b| (-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(b))
            .ok_or_else(|| {
                ApiError::invalid_param(
                    &param,
                    format!(
                        "Invalid value {value} for token {key} in logit_bias: values must be \
                         numbers between -100 and 100."
                    ),
                )
            })?;
        out.push((token, bias as f32));
    }
    Ok(out)
}

pub fn choice_count(n: Option<u32>) -> Result<usize, ApiError> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_CHOICES => Ok(n as usize),
        n => Err(ApiError::invalid_param(
            "n",
            format!("n must be between 1 and {MAX_CHOICES}, got {n}."),
        )),
    }
}

/// `stop`: a string or an array of at most four non-empty strings.
pub fn stop_sequences(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = |message: &str| ApiError::invalid_param("stop", message.to_string());
    let strings = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("stop must be a string or an array of strings."))?,
        Some(_) => return Err(bad("stop must be a string or an array of strings.")),
    };
    if strings.len() > MAX_STOP_SEQUENCES {
        return Err(bad(&format!(
            "stop may contain at most {MAX_STOP_SEQUENCES} sequences, got {}.",
            strings.len()
        )));
    }
    if strings.iter().any(String::is_empty) {
        return Err(bad("stop sequences must not be empty."));
    }
    Ok(strings)
}

/// The tokens left for the completion; refuses requests that cannot fit.
pub fn completion_budget(
    prompt_len: usize,
    max_tokens: Option<u32>,
    info: &ModelInfo,
) -> Result<usize, ApiError> {
    let limit = info.context_length;
    let wanted = max_tokens.map(|m| m as usize).unwrap_or(1);
    if prompt_len + wanted > limit {
        return Err(ApiError::context_length_exceeded(format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} \
             tokens ({prompt_len} in the messages, {wanted} in the completion). Please reduce \
             the length of the messages or completion.",
            prompt_len + wanted
        )));
    }
    Ok(max_tokens.map(|m| m as usize).unwrap_or(limit - prompt_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_bias_checks_keys_and_values() {
        assert_eq!(
            logit_bias(Some(&json!({"5": 100, "7": -2.5})), 10).unwrap(),
            vec![(5, 100.0), (7, -2.5)]
        );
        for bad in [
            json!({"abc": 5}),
            json!({"10": 1}),
            json!({"-1": 1}),
            json!({"3": 101}),
            json!({"3": "x"}),
            json!([1, 2]),
        ] {
            let err = logit_bias(Some(&bad), 10).unwrap_err();
            assert_eq!(err.status.as_u16(), 400, "{bad}");
        }
    }
}
