//! What the background writer applies, in arrival order; also the journal's line format.

use serde::{Deserialize, Serialize};

use super::capture::CapturedTurn;

/// Feedback given on a turn, from the API, the chat (👍/👎) or the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewFeedback {
    /// Unique id; makes a replayed journal line idempotent.
    pub feedback_id: String,
    pub response_id: String,
    /// The key that gave it ('' with auth off); feedback only lands on that key's turns.
    pub key_id: String,
    pub rating: Rating,
    pub correction: Option<String>,
    pub source: FeedbackSource,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    Up,
    Down,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Up => "up",
            Rating::Down => "down",
        }
    }

    pub fn parse(text: &str) -> Option<Rating> {
        match text {
            "up" => Some(Rating::Up),
            "down" => Some(Rating::Down),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackSource {
    Api,
    Chat,
    Dashboard,
}

impl FeedbackSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackSource::Api => "api",
            FeedbackSource::Chat => "chat",
            FeedbackSource::Dashboard => "dashboard",
        }
    }
}

/// One unit of work for the writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WriteOp {
    Turn { turn: Box<CapturedTurn> },
    Feedback { feedback: NewFeedback },
}

/// An op with its arrival number: the journal may receive ops out of order (a full queue
/// spills newer ops while older ones wait), so replay sorts by `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced {
    pub seq: u64,
    pub op: WriteOp,
}

impl WriteOp {
    /// The response id whose row this op creates (turns) — tracked while pending.
    pub fn pending_response(&self) -> Option<(&str, &str)> {
        match self {
            WriteOp::Turn { turn } => Some((
                turn.response_id.as_str(),
                turn.api_key_id.as_deref().unwrap_or(""),
            )),
            WriteOp::Feedback { .. } => None,
        }
    }
}

/// Token ids are stored as little-endian u32 blobs: 4 bytes a token instead of ~6 as JSON,
/// and no parsing on the write path.
pub fn u32s_to_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f32s_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn bytes_to_u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn bytes_to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
