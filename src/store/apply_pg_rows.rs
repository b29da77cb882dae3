//! The set-based statements of the Postgres batch path (`apply_pg`): one array per column,
//! bound to `INSERT … SELECT FROM UNNEST(…)`.

use serde_json::Value;
use sqlx::types::Json;

type Time = chrono::DateTime<chrono::Utc>;

/// Inserts the batch's turns; returns how many were inserted (fewer than the rows when a
/// response id is already stored).
pub(super) async fn insert_turns(
    tx: &mut sqlx::PgConnection,
    rows: &TurnColumns<'_>,
    now: Time,
) -> Result<u64, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO turns (id, response_id, session_pk, seq, parent_turn, key_id, turn_type, \
         endpoint, model, messages, tools, prompt_token_ids, response_text, response_tool_calls, \
         finish_reason, response_token_ids, response_logprobs, extra_choices, policy_version, \
         sampling, prompt_tokens, completion_tokens, latency_ms, ttft_ms, prefix_hash, \
         continuation_hash, created_at, history_hash, reply_hash, end_user, link_method, \
         side_reason, logged_at) \
         SELECT *, $33::timestamptz FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
           $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::jsonb[], \
           $12::bytea[], $13::text[], $14::jsonb[], $15::text[], $16::bytea[], $17::bytea[], \
           $18::jsonb[], $19::bigint[], $20::jsonb[], $21::bigint[], $22::bigint[], $23::bigint[], \
           $24::bigint[], $25::text[], $26::text[], $27::timestamptz[], $28::text[], $29::text[], \
           $30::text[], $31::text[], $32::text[]) \
         ON CONFLICT (response_id) DO NOTHING",
    )
    .bind(&rows.id)
    .bind(&rows.response_id)
    .bind(&rows.session_pk)
    .bind(&rows.seq)
    .bind(&rows.parent)
    .bind(&rows.key)
    .bind(&rows.turn_type)
    .bind(&rows.endpoint)
    .bind(&rows.model)
    .bind(&rows.messages)
    .bind(&rows.tools)
    .bind(&rows.prompt_ids)
    .bind(&rows.text)
    .bind(&rows.calls)
    .bind(&rows.finish)
    .bind(&rows.ids)
    .bind(&rows.logprobs)
    .bind(&rows.extra)
    .bind(&rows.policy)
    .bind(&rows.sampling)
    .bind(&rows.prompt_tokens)
    .bind(&rows.completion_tokens)
    .bind(&rows.latency)
    .bind(&rows.ttft)
    .bind(&rows.prefix_hash)
    .bind(&rows.continuation_hash)
    .bind(&rows.created_at)
    .bind(&rows.history_hash)
    .bind(&rows.reply_hash)
    .bind(&rows.end_user)
    .bind(&rows.link_method)
    .bind(&rows.side_reason)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(inserted.rows_affected())
}

/// Inserts the next states of parents that had none.
pub(super) async fn insert_next_states(
    tx: &mut sqlx::PgConnection,
    next: &NextStateColumns<'_>,
) -> Result<(), sqlx::Error> {
    if !next.turn_id.is_empty() {
        sqlx::query(
            "INSERT INTO next_states (turn_id, position, role, content, message, created_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], \
                                  $6::timestamptz[])",
        )
        .bind(&next.turn_id)
        .bind(&next.position)
        .bind(&next.role)
        .bind(&next.content)
        .bind(&next.message)
        .bind(&next.created_at)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Inserts thumbs read from chat replies ("👍" and the like).
pub(super) async fn insert_chat_thumbs(
    tx: &mut sqlx::PgConnection,
    thumbs: &ThumbColumns,
) -> Result<(), sqlx::Error> {
    if !thumbs.turn_id.is_empty() {
        sqlx::query(
            "INSERT INTO feedback (feedback_id, turn_id, rating, correction, source, created_at) \
             SELECT f.id, f.turn_id, f.rating, NULL, 'chat', f.created_at \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::timestamptz[]) \
               AS f(id, turn_id, rating, created_at) \
             ON CONFLICT (feedback_id) DO NOTHING",
        )
        .bind(&thumbs.feedback_id)
        .bind(&thumbs.turn_id)
        .bind(&thumbs.rating)
        .bind(&thumbs.created_at)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// One array per `turns` column, bound to `UNNEST`.
#[derive(Default)]
pub(super) struct TurnColumns<'a> {
    pub(super) id: Vec<i64>,
    pub(super) response_id: Vec<&'a str>,
    pub(super) session_pk: Vec<i64>,
    pub(super) seq: Vec<i64>,
    pub(super) parent: Vec<Option<i64>>,
    pub(super) key: Vec<&'a str>,
    pub(super) turn_type: Vec<&'a str>,
    pub(super) endpoint: Vec<&'a str>,
    pub(super) model: Vec<&'a str>,
    pub(super) messages: Vec<Json<&'a Value>>,
    pub(super) tools: Vec<Option<Json<&'a Value>>>,
    pub(super) prompt_ids: Vec<Vec<u8>>,
    pub(super) text: Vec<&'a str>,
    pub(super) calls: Vec<Option<Json<&'a Value>>>,
    pub(super) finish: Vec<&'a str>,
    pub(super) ids: Vec<Vec<u8>>,
    pub(super) logprobs: Vec<Vec<u8>>,
    pub(super) extra: Vec<Option<Json<Value>>>,
    pub(super) policy: Vec<i64>,
    pub(super) sampling: Vec<Json<&'a Value>>,
    pub(super) prompt_tokens: Vec<i64>,
    pub(super) completion_tokens: Vec<i64>,
    pub(super) latency: Vec<i64>,
    pub(super) ttft: Vec<Option<i64>>,
    pub(super) prefix_hash: Vec<Option<&'a str>>,
    pub(super) continuation_hash: Vec<&'a str>,
    pub(super) created_at: Vec<Time>,
    pub(super) history_hash: Vec<&'a str>,
    pub(super) reply_hash: Vec<&'a str>,
    pub(super) end_user: Vec<Option<&'a str>>,
    pub(super) link_method: Vec<&'static str>,
    pub(super) side_reason: Vec<Option<&'static str>>,
}

#[derive(Default)]
pub(super) struct NextStateColumns<'a> {
    pub(super) turn_id: Vec<i64>,
    pub(super) position: Vec<i64>,
    pub(super) role: Vec<&'a str>,
    pub(super) content: Vec<String>,
    pub(super) message: Vec<Json<&'a Value>>,
    pub(super) created_at: Vec<Time>,
}

#[derive(Default)]
pub(super) struct ThumbColumns {
    pub(super) feedback_id: Vec<String>,
    pub(super) turn_id: Vec<i64>,
    pub(super) rating: Vec<&'static str>,
    pub(super) created_at: Vec<Time>,
}
