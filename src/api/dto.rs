//! OpenAI wire types for chat completions and models. Requests keep loosely typed fields
//! (`messages`, `stop`, `tool_choice`...) as JSON values so validation can name the exact
//! offending element; unknown fields are ignored, as OpenAI's SDKs expect.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::openapi::schemas::{fixed, Message, ResponseFormat, Stop, ToolChoice};

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    #[schema(value_type = Vec<Message>, min_items = 1)]
    pub messages: Vec<Value>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f32>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    #[schema(value_type = Option<Stop>)]
    pub stop: Option<Value>,
    /// Choice i of n is sampled with seed + i.
    pub seed: Option<i64>,
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u32>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f32>,
    pub tools: Option<Vec<ToolDefinition>>,
    #[schema(value_type = Option<ToolChoice>)]
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub user: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[schema(value_type = Option<ResponseFormat>)]
    pub response_format: Option<Value>,
    /// Token id (as a string) → bias in [-100, 100], added to the logit before sampling.
    #[schema(value_type = Option<HashMap<String, f32>>)]
    pub logit_bias: Option<Value>,
    /// Used as the session id when no stronger hint names one (see `session_hints`).
    pub prompt_cache_key: Option<String>,
    /// Hindsight extension: links turns of one conversation; never shown to the model.
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolDefinition {
    #[serde(rename = "type")]
    #[schema(schema_with = fixed::function)]
    pub kind: String,
    pub function: FunctionDefinition,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema for the arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// How many prompt tokens came from the prefix cache (as OpenAI reports prompt caching).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    pub fn with_cached(mut self, cached_tokens: usize) -> Self {
        self.prompt_tokens_details = Some(PromptTokensDetails { cached_tokens });
        self
    }

    pub fn cached_tokens(&self) -> usize {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    #[schema(schema_with = fixed::chat_completion)]
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// `hs-v<policy version>`: the adapter version that produced the reply.
    pub system_fingerprint: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    #[schema(required)]
    pub logprobs: Option<ChoiceLogprobs>,
    #[schema(schema_with = fixed::finish_reason)]
    pub finish_reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AssistantMessage {
    #[schema(schema_with = fixed::assistant)]
    pub role: &'static str,
    #[schema(required)]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[schema(required)]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    #[schema(schema_with = fixed::function)]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON object serialized as a string, as OpenAI sends it.
    pub arguments: String,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprobOut>,
    #[schema(required)]
    pub refusal: Option<Vec<TokenLogprobOut>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    #[schema(schema_with = fixed::chat_completion_chunk)]
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: ChunkDelta,
    #[schema(required)]
    pub logprobs: Option<ChoiceLogprobs>,
    #[schema(schema_with = fixed::finish_reason_or_null, required)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChunkDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = fixed::assistant)]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: String,
    #[serde(rename = "type")]
    #[schema(schema_with = fixed::function)]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    #[schema(schema_with = fixed::model)]
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
    /// The served window in tokens (prompt + completion), after rope scaling and --max-context.
    pub context_length: usize,
    /// The same window under vLLM's name.
    pub max_model_len: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    #[schema(schema_with = fixed::list)]
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}
