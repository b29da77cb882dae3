//! Exports logged turns: OpenAI chat fine-tuning lines, or one trajectory per session with
//! next states, feedback, judgements and rewards (null until the learner fills them).

use std::io::Write;

use serde_json::{json, Value};

use super::error::StoreError;
use super::handle::Store;
use super::views::TurnView;

type Time = chrono::DateTime<chrono::Utc>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One `{"messages":[…, assistant]}` training example per main turn.
    OpenaiJsonl,
    /// One JSON object per session with its turns in order.
    Trajectories,
}

#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub since: Option<Time>,
    pub session_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes the export to `out`; returns the number of lines written.
pub async fn export(
    store: &Store,
    format: ExportFormat,
    filter: &ExportFilter,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    let sessions = store
        .export_sessions(filter.since, filter.session_id.as_deref())
        .await?;
    let mut lines = 0;
    for (pk, session) in sessions {
        let turns = store.export_turns(pk, filter.since).await?;
        match format {
            ExportFormat::OpenaiJsonl => {
                for turn in turns.iter().filter(|t| t.turn_type == "main") {
                    serde_json::to_writer(&mut *out, &chat_example(turn))
                        .map_err(std::io::Error::other)?;
                    out.write_all(b"\n")?;
                    lines += 1;
                }
            }
            ExportFormat::Trajectories => {
                if turns.is_empty() {
                    continue;
                }
                let line = json!({
                    "object": "trajectory",
                    "session_id": session.id,
                    "explicit": session.explicit,
                    "created_at": session.created_at,
                    "closed_at": session.closed_at,
                    "turns": turns,
                });
                serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
                lines += 1;
            }
        }
    }
    out.flush()?;
    Ok(lines)
}

/// The request's messages followed by the logged response as the assistant message.
pub fn chat_example(turn: &TurnView) -> Value {
    let mut messages = turn.messages.as_array().cloned().unwrap_or_default();
    let mut assistant = json!({"role": "assistant", "content": turn.response.content});
    if let Some(calls) = &turn.response.tool_calls {
        assistant["tool_calls"] = calls.clone();
    }
    messages.push(assistant);
    let mut example = json!({ "messages": messages });
    if let Some(tools) = &turn.tools {
        example["tools"] = tools.clone();
    }
    example
}
