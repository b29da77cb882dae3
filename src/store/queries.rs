//! Reads and deletes for the API and export, instantiated for each backend like `apply`.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use super::ops::{bytes_to_f32s, bytes_to_u32s, NewFeedback};
use super::views::{
    FeedbackView, JudgementView, NextStateView, ResponseView, SessionSummary, TokensView, TurnView,
    UsageView,
};

type Time = chrono::DateTime<chrono::Utc>;

/// Tables whose rows tests and benchmarks count.
pub const COUNTABLE: &[&str] = &[
    "api_keys",
    "sessions",
    "turns",
    "next_states",
    "feedback",
    "judgements",
    "training_samples",
];

const SESSION_COLUMNS: &str =
    "id, session_id, explicit, turn_count, created_at, updated_at, closed_at";

const TURN_COLUMNS: &str = "id, response_id, seq, turn_type, endpoint, model, messages, tools, \
    prompt_token_ids, response_text, response_tool_calls, finish_reason, response_token_ids, \
    response_logprobs, policy_version, sampling, prompt_tokens, completion_tokens, latency_ms, \
    ttft_ms, created_at, side_reason, link_method";

macro_rules! backend_queries {
    ($module:ident, $db:ty) => {
        pub mod $module {
            use super::*;
            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type DbRow = <Db as sqlx::Database>::Row;

            fn session_from_row(row: &DbRow) -> Result<(i64, SessionSummary), sqlx::Error> {
                Ok((
                    row.try_get("id")?,
                    SessionSummary {
                        id: row.try_get("session_id")?,
                        object: "session",
                        explicit: row.try_get("explicit")?,
                        turn_count: row.try_get("turn_count")?,
                        created_at: row.try_get("created_at")?,
                        updated_at: row.try_get("updated_at")?,
                        closed_at: row.try_get("closed_at")?,
                    },
                ))
            }

            fn feedback_from_row(row: &DbRow) -> Result<FeedbackView, sqlx::Error> {
                Ok(FeedbackView {
                    id: row.try_get("feedback_id")?,
                    object: "feedback",
                    response_id: row.try_get("response_id")?,
                    rating: row.try_get("rating")?,
                    correction: row.try_get("correction")?,
                    source: row.try_get("source")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            pub async fn count_rows(pool: &Pool, table: &str) -> Result<i64, sqlx::Error> {
                if !COUNTABLE.contains(&table) {
                    return Err(sqlx::Error::Protocol(format!("not a countable table: {table}")));
                }
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(pool)
                    .await
            }

            pub async fn turn_for_key(
                pool: &Pool,
                response_id: &str,
                key: &str,
            ) -> Result<Option<i64>, sqlx::Error> {
                sqlx::query_scalar("SELECT id FROM turns WHERE response_id = $1 AND key_id = $2")
                    .bind(response_id)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            }

            pub async fn add_feedback(pool: &Pool, feedback: &NewFeedback) -> Result<bool, sqlx::Error> {
                let mut conn = pool.acquire().await?;
                crate::store::apply::$module::insert_feedback(&mut conn, feedback).await
            }

            pub async fn feedback_for_turn(pool: &Pool, turn_id: i64) -> Result<Vec<FeedbackView>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT f.feedback_id, t.response_id, f.rating, f.correction, f.source, f.created_at \
                     FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE f.turn_id = $1 ORDER BY f.id",
                )
                .bind(turn_id)
                .fetch_all(pool)
                .await?;
                rows.iter().map(feedback_from_row).collect()
            }

            pub async fn list_sessions(pool: &Pool, key: &str, limit: i64) -> Result<Vec<SessionSummary>, sqlx::Error> {
                let rows = sqlx::query(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE key_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2"
                ))
                .bind(key)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter().map(|r| session_from_row(r).map(|s| s.1)).collect()
            }

            pub async fn find_session(
                pool: &Pool,
                key: &str,
                session_id: &str,
            ) -> Result<Option<(i64, SessionSummary)>, sqlx::Error> {
                let row = sqlx::query(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE key_id = $1 AND session_id = $2"
                ))
                .bind(key)
                .bind(session_id)
                .fetch_optional(pool)
                .await?;
                row.as_ref().map(session_from_row).transpose()
            }

            /// Sessions for export (every key), optionally one id and/or active since a time.
            pub async fn export_sessions(
                pool: &Pool,
                since: Option<Time>,
                session_id: Option<&str>,
            ) -> Result<Vec<(i64, SessionSummary)>, sqlx::Error> {
                let rows = sqlx::query(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions \
                     WHERE ($1 IS NULL OR session_id = $1) AND ($2 IS NULL OR updated_at >= $2) ORDER BY id"
                ))
                .bind(session_id)
                .bind(since)
                .fetch_all(pool)
                .await?;
                rows.iter().map(session_from_row).collect()
            }

            /// A session's turns in order, each with its next state, feedback, latest judgement
            /// and reward (one query per kind, not per turn).
            pub async fn session_turns(
                pool: &Pool,
                session_pk: i64,
                since: Option<Time>,
                with_tokens: bool,
            ) -> Result<Vec<TurnView>, sqlx::Error> {
                let rows = sqlx::query(&format!(
                    "SELECT {TURN_COLUMNS} FROM turns WHERE session_pk = $1 AND ($2 IS NULL OR created_at >= $2) \
                     ORDER BY seq, id"
                ))
                .bind(session_pk)
                .bind(since)
                .fetch_all(pool)
                .await?;
                let mut next_states: HashMap<i64, Vec<NextStateView>> = HashMap::new();
                for row in sqlx::query(
                    "SELECT n.turn_id, n.role, n.content, n.message FROM next_states n \
                     JOIN turns t ON t.id = n.turn_id WHERE t.session_pk = $1 ORDER BY n.turn_id, n.position",
                )
                .bind(session_pk)
                .fetch_all(pool)
                .await?
                {
                    let message: Json<Value> = row.try_get("message")?;
                    next_states.entry(row.try_get("turn_id")?).or_default().push(NextStateView {
                        role: row.try_get("role")?,
                        content: row.try_get("content")?,
                        message: message.0,
                    });
                }
                let mut feedback: HashMap<i64, Vec<FeedbackView>> = HashMap::new();
                for row in sqlx::query(
                    "SELECT f.turn_id, f.feedback_id, t.response_id, f.rating, f.correction, f.source, f.created_at \
                     FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE t.session_pk = $1 ORDER BY f.id",
                )
                .bind(session_pk)
                .fetch_all(pool)
                .await?
                {
                    feedback.entry(row.try_get("turn_id")?).or_default().push(feedback_from_row(&row)?);
                }
                let mut judgements: HashMap<i64, JudgementView> = HashMap::new();
                for row in sqlx::query(
                    "SELECT j.turn_id, j.judge, j.source, j.votes, j.score, j.hint, j.hint_votes, j.created_at \
                     FROM judgements j \
                     JOIN turns t ON t.id = j.turn_id WHERE t.session_pk = $1 ORDER BY j.id",
                )
                .bind(session_pk)
                .fetch_all(pool)
                .await?
                {
                    let votes: Json<Value> = row.try_get("votes")?;
                    let hint_votes: Option<Json<Value>> = row.try_get("hint_votes")?;
                    judgements.insert(row.try_get("turn_id")?, JudgementView {
                        judge: row.try_get("judge")?,
                        source: row.try_get("source")?,
                        votes: votes.0,
                        score: row.try_get("score")?,
                        hint: row.try_get("hint")?,
                        hint_votes: hint_votes.map(|v| v.0),
                        created_at: row.try_get("created_at")?,
                    });
                }
                let mut rewards: HashMap<i64, Option<f64>> = HashMap::new();
                for row in sqlx::query(
                    "SELECT s.turn_id, s.reward FROM training_samples s \
                     JOIN turns t ON t.id = s.turn_id WHERE t.session_pk = $1 ORDER BY s.id",
                )
                .bind(session_pk)
                .fetch_all(pool)
                .await?
                {
                    rewards.insert(row.try_get("turn_id")?, row.try_get("reward")?);
                }

                let mut turns = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: i64 = row.try_get("id")?;
                    let messages: Json<Value> = row.try_get("messages")?;
                    let tools: Option<Json<Value>> = row.try_get("tools")?;
                    let tool_calls: Option<Json<Value>> = row.try_get("response_tool_calls")?;
                    let sampling: Json<Value> = row.try_get("sampling")?;
                    let tokens = if with_tokens {
                        let prompt: Vec<u8> = row.try_get("prompt_token_ids")?;
                        let ids: Vec<u8> = row.try_get("response_token_ids")?;
                        let logprobs: Vec<u8> = row.try_get("response_logprobs")?;
                        Some(TokensView {
                            prompt_token_ids: bytes_to_u32s(&prompt),
                            token_ids: bytes_to_u32s(&ids),
                            logprobs: bytes_to_f32s(&logprobs),
                        })
                    } else {
                        None
                    };
                    turns.push(TurnView {
                        response_id: row.try_get("response_id")?,
                        seq: row.try_get("seq")?,
                        turn_type: row.try_get("turn_type")?,
                        side_reason: row.try_get("side_reason")?,
                        link_method: row.try_get("link_method")?,
                        endpoint: row.try_get("endpoint")?,
                        model: row.try_get("model")?,
                        created_at: row.try_get("created_at")?,
                        messages: messages.0,
                        tools: tools.map(|t| t.0),
                        response: ResponseView {
                            content: row.try_get("response_text")?,
                            tool_calls: tool_calls.map(|t| t.0),
                            finish_reason: row.try_get("finish_reason")?,
                        },
                        usage: UsageView {
                            prompt_tokens: row.try_get("prompt_tokens")?,
                            completion_tokens: row.try_get("completion_tokens")?,
                        },
                        latency_ms: row.try_get("latency_ms")?,
                        time_to_first_token_ms: row.try_get("ttft_ms")?,
                        policy_version: row.try_get("policy_version")?,
                        sampling: sampling.0,
                        tokens,
                        next_state: next_states.remove(&id),
                        feedback: feedback.remove(&id).unwrap_or_default(),
                        judgement: judgements.remove(&id),
                        reward: rewards.remove(&id).flatten(),
                    });
                }
                Ok(turns)
            }

            /// Deletes a key's session; turns and everything derived from them cascade.
            pub async fn delete_session(pool: &Pool, key: &str, session_id: &str) -> Result<bool, sqlx::Error> {
                // Stored Responses of the session replay its conversation: they go with it.
                sqlx::query("DELETE FROM responses WHERE key_id = $1 AND session_id = $2")
                    .bind(key)
                    .bind(session_id)
                    .execute(pool)
                    .await?;
                let result = sqlx::query("DELETE FROM sessions WHERE key_id = $1 AND session_id = $2")
                    .bind(key)
                    .bind(session_id)
                    .execute(pool)
                    .await?;
                Ok(result.rows_affected() > 0)
            }
        }
    };
}

backend_queries!(pg, sqlx::Postgres);
backend_queries!(lite, sqlx::Sqlite);
