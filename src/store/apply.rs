//! Applies write ops inside one transaction: turn rows, session linking, next states and
//! feedback. Written once and instantiated for each backend (the SQL is portable; only the
//! sqlx driver types differ).

use std::collections::HashSet;

use serde_json::Value;
use sqlx::types::Json;

use super::canonical::{chat_rating, content_text, split_trailing_replies};
use super::capture::{CapturedTurn, SideReason};
use super::linking::{Linking, CONTENT_LINKS};
use super::ops::{f32s_to_bytes, u32s_to_bytes, FeedbackSource, NewFeedback, Rating, WriteOp};

/// Applies a batch on either backend in one transaction: on Postgres with set-based
/// statements when the batch allows it (see `apply_pg`), otherwise turn by turn.
pub async fn apply_ops(
    db: &super::db::Db,
    ops: &[WriteOp],
    replay: bool,
    known_keys: &HashSet<String>,
) -> Result<Applied, sqlx::Error> {
    match db {
        super::db::Db::Pg(pool) => {
            // A replayed batch may hold turns already stored: leave those out first.
            let fresh = if replay {
                super::apply_pg::without_stored(pool, ops).await?
            } else {
                ops.to_vec()
            };
            if super::apply_pg::eligible(&fresh) {
                if let Some(applied) =
                    super::apply_pg::apply_batch(pool, &fresh, known_keys).await?
                {
                    return Ok(applied);
                }
            }
            pg::apply_batch(pool, ops, replay, known_keys).await
        }
        super::db::Db::Lite(pool) => lite::apply_batch(pool, ops, replay, known_keys).await,
    }
}

/// What applying a batch learned that the writer caches after commit.
#[derive(Debug, Default)]
pub struct Applied {
    pub new_keys: Vec<String>,
}

fn new_session_name() -> String {
    format!("sess_{}", uuid::Uuid::now_v7().simple())
}

macro_rules! backend_apply {
    ($module:ident, $db:ty) => {
        pub mod $module {
            use super::*;
            type Db = $db;
            type Conn = <Db as sqlx::Database>::Connection;

            /// Applies `ops` in order in one transaction. With `replay`, ops whose turn is
            /// already stored are skipped (journal lines may have been committed before).
            pub async fn apply_batch(
                pool: &sqlx::Pool<Db>,
                ops: &[WriteOp],
                replay: bool,
                known_keys: &HashSet<String>,
            ) -> Result<Applied, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let mut applied = Applied::default();
                for op in ops {
                    match op {
                        WriteOp::Turn { turn } => {
                            apply_turn(&mut tx, turn, replay, known_keys, &mut applied).await?
                        }
                        WriteOp::Feedback { feedback } => {
                            insert_feedback(&mut tx, feedback).await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(applied)
            }

            /// Inserts feedback on the key's turn; false when that turn is not stored.
            pub async fn insert_feedback(
                conn: &mut Conn,
                feedback: &NewFeedback,
            ) -> Result<bool, sqlx::Error> {
                let turn_id: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM turns WHERE response_id = $1 AND key_id = $2")
                        .bind(&feedback.response_id)
                        .bind(&feedback.key_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                let Some(turn_id) = turn_id else {
                    tracing::warn!(response_id = %feedback.response_id, "feedback for a turn that is gone");
                    return Ok(false);
                };
                insert_feedback_row(conn, turn_id, feedback).await?;
                Ok(true)
            }

            async fn insert_feedback_row(
                conn: &mut Conn,
                turn_id: i64,
                feedback: &NewFeedback,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO feedback (feedback_id, turn_id, rating, correction, source, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (feedback_id) DO NOTHING",
                )
                .bind(&feedback.feedback_id)
                .bind(turn_id)
                .bind(feedback.rating.as_str())
                .bind(&feedback.correction)
                .bind(feedback.source.as_str())
                .bind(feedback.created_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            async fn apply_turn(
                conn: &mut Conn,
                turn: &CapturedTurn,
                replay: bool,
                known_keys: &HashSet<String>,
                applied: &mut Applied,
            ) -> Result<(), sqlx::Error> {
                let key = turn.api_key_id.as_deref().unwrap_or("");
                if replay {
                    let stored: Option<i64> =
                        sqlx::query_scalar("SELECT id FROM turns WHERE response_id = $1")
                            .bind(&turn.response_id)
                            .fetch_optional(&mut *conn)
                            .await?;
                    if stored.is_some() {
                        return Ok(());
                    }
                }
                if !known_keys.contains(key) && !applied.new_keys.iter().any(|k| k == key) {
                    sqlx::query("INSERT INTO api_keys (key_id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(key)
                        .bind(turn.created_at)
                        .execute(&mut *conn)
                        .await?;
                    applied.new_keys.push(key.to_string());
                }

                let empty = Vec::new();
                let messages: &[Value] = turn.messages.as_array().unwrap_or(&empty);
                let linking = Linking::of(turn);
                // A named session first: content links then look only inside it.
                let named: Option<(i64, i64)> = match linking.named {
                    Some((name, _)) => Some(
                        sqlx::query_as(
                            "INSERT INTO sessions (key_id, session_id, explicit, turn_count, created_at, updated_at) \
                             VALUES ($1, $2, $3, 1, $4, $4) \
                             ON CONFLICT (key_id, session_id) DO UPDATE \
                             SET turn_count = sessions.turn_count + 1, updated_at = excluded.updated_at \
                             RETURNING id, turn_count",
                        )
                        .bind(key)
                        .bind(name)
                        .bind(true)
                        .bind(turn.created_at)
                        .fetch_one(&mut *conn)
                        .await?,
                    ),
                    None => None,
                };
                // The newest turn this request continues, by content, strongest link first
                // (same key, same user, open session; the named one if any).
                let mut parent: Option<(i64, i64)> = None;
                let mut content = None;
                for ((method, column), hash) in CONTENT_LINKS.iter().zip(&linking.lookups) {
                    let Some(hash) = hash else { continue };
                    parent = sqlx::query_as(&format!(
                        "SELECT t.id, t.session_pk FROM turns t JOIN sessions s ON s.id = t.session_pk \
                         WHERE t.key_id = $1 AND t.{column} = $2 AND COALESCE(t.end_user, '') = $3 \
                         AND ($4 IS NULL OR t.session_pk = $4) AND s.closed_at IS NULL \
                         ORDER BY t.id DESC LIMIT 1"
                    ))
                    .bind(key)
                    .bind(hash)
                    .bind(linking.user)
                    .bind(named.map(|row| row.0))
                    .fetch_optional(&mut *conn)
                    .await?;
                    if parent.is_some() {
                        content = Some(*method);
                        break;
                    }
                }

                let (session_pk, seq): (i64, i64) = match (named, parent) {
                    (Some(row), _) => {
                        let follows_latest = linking.named.is_some_and(|(_, m)| m.follows_latest());
                        if parent.is_none() && row.1 > 1 && follows_latest {
                            // A client that names its session may send only the new message:
                            // the previous turn is then the session's latest.
                            let latest: Option<i64> = sqlx::query_scalar(
                                "SELECT id FROM turns WHERE session_pk = $1 ORDER BY seq DESC LIMIT 1",
                            )
                            .bind(row.0)
                            .fetch_optional(&mut *conn)
                            .await?;
                            parent = latest.map(|id| (id, row.0));
                        }
                        row
                    }
                    (None, Some((_, session_pk))) => sqlx::query_as(
                        "UPDATE sessions SET turn_count = turn_count + 1, updated_at = $2 \
                         WHERE id = $1 RETURNING id, turn_count",
                    )
                    .bind(session_pk)
                    .bind(turn.created_at)
                    .fetch_one(&mut *conn)
                    .await?,
                    (None, None) => sqlx::query_as(
                        "INSERT INTO sessions (key_id, session_id, explicit, turn_count, created_at, updated_at) \
                         VALUES ($1, $2, $3, 1, $4, $4) RETURNING id, turn_count",
                    )
                    .bind(key)
                    .bind(new_session_name())
                    .bind(false)
                    .bind(turn.created_at)
                    .fetch_one(&mut *conn)
                    .await?,
                };

                let first = turn.choices.first();
                let response_text = first.map_or("", |c| c.text.as_str());
                let response_calls = first.and_then(|c| c.tool_calls.as_ref());
                let extra_choices = (turn.choices.len() > 1)
                    .then(|| serde_json::to_value(&turn.choices[1..]).unwrap_or(Value::Null));
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO turns (response_id, session_pk, seq, parent_turn, key_id, turn_type, \
                     endpoint, model, messages, tools, prompt_token_ids, response_text, \
                     response_tool_calls, finish_reason, response_token_ids, response_logprobs, \
                     extra_choices, policy_version, sampling, prompt_tokens, completion_tokens, \
                     latency_ms, ttft_ms, prefix_hash, continuation_hash, created_at, logged_at, \
                     history_hash, reply_hash, end_user, link_method, side_reason) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32) \
                     ON CONFLICT (response_id) DO NOTHING RETURNING id",
                )
                .bind(&turn.response_id)
                .bind(session_pk)
                .bind(seq)
                .bind(parent.map(|p| p.0))
                .bind(key)
                .bind(linking.turn_type())
                .bind(&turn.endpoint)
                .bind(&turn.model)
                .bind(Json(&turn.messages))
                .bind(turn.tools.as_ref().map(Json))
                .bind(u32s_to_bytes(&turn.prompt_token_ids))
                .bind(response_text)
                .bind(response_calls.map(Json))
                .bind(first.map_or("", |c| c.finish_reason.as_str()))
                .bind(first.map(|c| u32s_to_bytes(&c.token_ids)).unwrap_or_default())
                .bind(first.map(|c| f32s_to_bytes(&c.logprobs)).unwrap_or_default())
                .bind(extra_choices.map(Json))
                .bind(turn.policy_version as i64)
                .bind(Json(&turn.sampling))
                .bind(turn.prompt_tokens as i64)
                .bind(turn.completion_tokens as i64)
                .bind(turn.latency_ms as i64)
                .bind(turn.time_to_first_token_ms.map(|v| v as i64))
                .bind(linking.prefix_hash())
                .bind(linking.continuation_hash())
                .bind(turn.created_at)
                .bind(chrono::Utc::now())
                .bind(&linking.offers[1])
                .bind(&linking.offers[2])
                .bind(linking.end_user())
                .bind(linking.method(content).as_str())
                .bind(linking.side.map(SideReason::as_str))
                .fetch_optional(&mut *conn)
                .await?;
                if inserted.is_none() {
                    // The same response id twice: the first one stands; undo the session
                    // bookkeeping (rare, so cheaper than checking before every insert).
                    let undo = if seq == 1 {
                        "DELETE FROM sessions WHERE id = $1 AND turn_count = 1"
                    } else {
                        "UPDATE sessions SET turn_count = turn_count - 1 WHERE id = $1"
                    };
                    sqlx::query(undo).bind(session_pk).execute(&mut *conn).await?;
                    return Ok(());
                }

                if let (true, Some((parent_id, _))) = (linking.records_next_state(), parent) {
                    let (_, replies) = split_trailing_replies(messages);
                    record_next_state(conn, parent_id, replies, turn.created_at).await?;
                    let rating = replies
                        .iter()
                        .rev()
                        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                        .and_then(|m| chat_rating(&content_text(m.get("content").unwrap_or(&Value::Null))));
                    if let Some(rating) = rating.and_then(Rating::parse) {
                        let feedback = NewFeedback {
                            feedback_id: format!("fb_{}", uuid::Uuid::now_v7().simple()),
                            response_id: String::new(),
                            key_id: key.to_string(),
                            rating,
                            correction: None,
                            source: FeedbackSource::Chat,
                            created_at: turn.created_at,
                        };
                        insert_feedback_row(conn, parent_id, &feedback).await?;
                    }
                }
                if turn.session_done {
                    sqlx::query("UPDATE sessions SET closed_at = $2 WHERE id = $1")
                        .bind(session_pk)
                        .bind(turn.created_at)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            /// The user/tool messages after a turn's response are its next state. The first
            /// continuation wins: a regenerated reply does not add a second next state.
            async fn record_next_state(
                conn: &mut Conn,
                turn_id: i64,
                replies: &[Value],
                created_at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), sqlx::Error> {
                for (position, message) in replies.iter().enumerate() {
                    let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
                    let content = content_text(message.get("content").unwrap_or(&Value::Null));
                    let guard = if position == 0 {
                        " WHERE NOT EXISTS (SELECT 1 FROM next_states WHERE turn_id = $1)"
                    } else {
                        ""
                    };
                    let sql = format!(
                        "INSERT INTO next_states (turn_id, position, role, content, message, created_at) \
                         SELECT $1, $2, $3, $4, $5, $6{guard}"
                    );
                    let result = sqlx::query(&sql)
                        .bind(turn_id)
                        .bind(position as i64)
                        .bind(role)
                        .bind(content)
                        .bind(Json(message))
                        .bind(created_at)
                        .execute(&mut *conn)
                        .await?;
                    if position == 0 && result.rows_affected() == 0 {
                        break;
                    }
                }
                Ok(())
            }
        }
    };
}

backend_apply!(pg, sqlx::Postgres);
backend_apply!(lite, sqlx::Sqlite);
