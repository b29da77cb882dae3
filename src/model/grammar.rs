//! Grammar-constrained decoding with llguidance: constraints compiled against the model's
//! tokenizer into per-step token masks (serving), and replayed over logged tokens (training).

use serde::{Deserialize, Serialize};

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
