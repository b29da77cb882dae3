//! SQL behind `learner.rs`, instantiated for each backend like `queries`. Only the claim
//! differs: Postgres locks candidate rows with `FOR UPDATE SKIP LOCKED` so concurrent workers
//! get disjoint sets; SQLite has one writer, so the single UPDATE statement is already atomic.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use super::learner::{
    JudgeClaim, JudgeTask, LearnerState, NewJudgement, NewSample, NewStep, NewVersion, SampleRow,
    StepRow, VersionRow,
};
use super::ops::{bytes_to_f32s, bytes_to_u32s};
use super::views::{FeedbackView, NextStateView};

/// `a, b, c` for an `IN (…)` list: integers only, so inlining them is safe.
fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Main turns (side turns — client side turns, length cuts, probes — are never judged nor
/// trained on) with a next state or feedback, unjudged or judged before their newest
/// feedback, whose claim is free or expired ($1 = now, $2 = limit).
const CANDIDATES: &str = "SELECT t.id FROM turns t \
    WHERE t.turn_type = 'main' \
    AND (t.judge_claim_until IS NULL OR t.judge_claim_until <= $1) \
    AND ((t.judged_at IS NULL \
          AND (EXISTS (SELECT 1 FROM next_states n WHERE n.turn_id = t.id) \
               OR EXISTS (SELECT 1 FROM feedback f WHERE f.turn_id = t.id))) \
         OR t.id IN (SELECT f.turn_id FROM feedback f JOIN turns j ON j.id = f.turn_id \
                     WHERE j.judged_at IS NOT NULL AND f.created_at > j.judged_at)) \
    ORDER BY t.id LIMIT $2";

const SAMPLE_COLUMNS: &str = "s.id, s.turn_id, s.kind, s.reward, s.hint, s.policy_version, \
    t.messages, t.tools, t.prompt_token_ids, t.response_token_ids, t.response_logprobs, \
    t.sampling, s.created_at";

const VERSION_COLUMNS: &str =
    "version, step, path, status, reason, guard, metrics, checksum, created_at";

macro_rules! backend_learner {
    ($module:ident, $db:ty, $lock:literal) => {
        pub mod $module {
            use super::*;
            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type DbRow = <Db as sqlx::Database>::Row;

            pub async fn claim_judge_tasks(
                pool: &Pool,
                claim: &JudgeClaim,
                limit: i64,
            ) -> Result<Vec<JudgeTask>, sqlx::Error> {
                let sql = format!(
                    "UPDATE turns SET judge_claimed_by = $3, judge_claim_until = $4 \
                     WHERE id IN ({CANDIDATES} {}) \
                     AND (judge_claim_until IS NULL OR judge_claim_until <= $1) RETURNING id",
                    $lock
                );
                let mut ids: Vec<i64> = sqlx::query_scalar(&sql)
                    .bind(claim.claimed_at)
                    .bind(limit)
                    .bind(&claim.worker)
                    .bind(claim.until)
                    .fetch_all(pool)
                    .await?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                ids.sort_unstable();
                let list = id_list(&ids);
                let mut next_states: HashMap<i64, Vec<NextStateView>> = HashMap::new();
                for row in sqlx::query(&format!(
                    "SELECT turn_id, role, content, message FROM next_states \
                     WHERE turn_id IN ({list}) ORDER BY turn_id, position"
                ))
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
                for row in sqlx::query(&format!(
                    "SELECT f.turn_id, f.feedback_id, t.response_id, f.rating, f.correction, f.source, \
                     f.created_at FROM feedback f JOIN turns t ON t.id = f.turn_id \
                     WHERE f.turn_id IN ({list}) ORDER BY f.created_at, f.id"
                ))
                .fetch_all(pool)
                .await?
                {
                    feedback.entry(row.try_get("turn_id")?).or_default().push(FeedbackView {
                        id: row.try_get("feedback_id")?,
                        object: "feedback",
                        response_id: row.try_get("response_id")?,
                        rating: row.try_get("rating")?,
                        correction: row.try_get("correction")?,
                        source: row.try_get("source")?,
                        created_at: row.try_get("created_at")?,
                    });
                }
                let rows = sqlx::query(&format!(
                    "SELECT id, response_id, key_id, turn_type, messages, tools, response_text, \
                     response_tool_calls, prompt_token_ids, response_token_ids, response_logprobs, \
                     policy_version FROM turns WHERE id IN ({list}) ORDER BY id"
                ))
                .fetch_all(pool)
                .await?;
                let mut tasks = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: i64 = row.try_get("id")?;
                    let messages: Json<Value> = row.try_get("messages")?;
                    let tools: Option<Json<Value>> = row.try_get("tools")?;
                    let calls: Option<Json<Value>> = row.try_get("response_tool_calls")?;
                    let prompt: Vec<u8> = row.try_get("prompt_token_ids")?;
                    let response: Vec<u8> = row.try_get("response_token_ids")?;
                    let logprobs: Vec<u8> = row.try_get("response_logprobs")?;
                    tasks.push(JudgeTask {
                        claim: JudgeClaim { turn_id: id, ..claim.clone() },
                        turn_id: id,
                        response_id: row.try_get("response_id")?,
                        key_id: row.try_get("key_id")?,
                        turn_type: row.try_get("turn_type")?,
                        messages: messages.0,
                        tools: tools.map(|t| t.0),
                        response_text: row.try_get("response_text")?,
                        response_tool_calls: calls.map(|c| c.0),
                        prompt_token_ids: bytes_to_u32s(&prompt),
                        response_token_ids: bytes_to_u32s(&response),
                        response_logprobs: bytes_to_f32s(&logprobs),
                        policy_version: row.try_get("policy_version")?,
                        next_state: next_states.remove(&id).unwrap_or_default(),
                        feedback: feedback.remove(&id).unwrap_or_default(),
                    });
                }
                Ok(tasks)
            }

            /// Ends a claim held by `claim` (judged_at set or not); false when not held.
            async fn end_claim(
                conn: &mut <Db as sqlx::Database>::Connection,
                claim: &JudgeClaim,
                judged: bool,
            ) -> Result<bool, sqlx::Error> {
                let set = if judged { "judged_at = $4, " } else { "" };
                let sql = format!(
                    "UPDATE turns SET {set}judge_claimed_by = NULL, judge_claim_until = NULL \
                     WHERE id = $1 AND judge_claimed_by = $2 AND judge_claim_until = $3"
                );
                let mut query = sqlx::query(&sql)
                    .bind(claim.turn_id)
                    .bind(&claim.worker)
                    .bind(claim.until);
                if judged {
                    query = query.bind(claim.claimed_at);
                }
                Ok(query.execute(&mut *conn).await?.rows_affected() > 0)
            }

            pub async fn record_judgement(
                pool: &Pool,
                claim: &JudgeClaim,
                judgement: &NewJudgement,
                sample: Option<&NewSample>,
            ) -> Result<bool, sqlx::Error> {
                let mut tx = pool.begin().await?;
                if !end_claim(&mut tx, claim, true).await? {
                    return Ok(false); // dropping `tx` rolls back
                }
                let now = chrono::Utc::now();
                sqlx::query(
                    "INSERT INTO judgements (turn_id, judge, votes, score, hint, hint_votes, source, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(claim.turn_id)
                .bind(&judgement.judge)
                .bind(Json(&judgement.votes))
                .bind(judgement.score)
                .bind(&judgement.hint)
                .bind(Json(&judgement.hint_votes))
                .bind(&judgement.source)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                // The newest judgement supersedes: an earlier sample not trained on yet goes.
                sqlx::query("DELETE FROM training_samples WHERE turn_id = $1 AND used_in_step IS NULL")
                    .bind(claim.turn_id)
                    .execute(&mut *tx)
                    .await?;
                if let Some(sample) = sample {
                    sqlx::query(
                        "INSERT INTO training_samples (turn_id, policy_version, reward, kind, hint, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(claim.turn_id)
                    .bind(sample.policy_version)
                    .bind(sample.reward)
                    .bind(&sample.kind)
                    .bind(&sample.hint)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            pub async fn release_judge_claim(pool: &Pool, claim: &JudgeClaim) -> Result<(), sqlx::Error> {
                let mut conn = pool.acquire().await?;
                end_claim(&mut conn, claim, false).await?;
                Ok(())
            }

            pub async fn skip_judging(pool: &Pool, claim: &JudgeClaim) -> Result<bool, sqlx::Error> {
                let mut conn = pool.acquire().await?;
                end_claim(&mut conn, claim, true).await
            }

            fn sample_from_row(row: &DbRow) -> Result<SampleRow, sqlx::Error> {
                let messages: Json<Value> = row.try_get("messages")?;
                let tools: Option<Json<Value>> = row.try_get("tools")?;
                let prompt: Vec<u8> = row.try_get("prompt_token_ids")?;
                let response: Vec<u8> = row.try_get("response_token_ids")?;
                let logprobs: Vec<u8> = row.try_get("response_logprobs")?;
                let kind: Option<String> = row.try_get("kind")?;
                let reward: Option<f64> = row.try_get("reward")?;
                let sampling: Json<Value> = row.try_get("sampling")?;
                Ok(SampleRow {
                    id: row.try_get("id")?,
                    turn_id: row.try_get("turn_id")?,
                    kind: kind.unwrap_or_else(|| "rl".to_string()),
                    reward: reward.unwrap_or(0.0),
                    hint: row.try_get("hint")?,
                    policy_version: row.try_get("policy_version")?,
                    messages: messages.0,
                    tools: tools.map(|t| t.0),
                    prompt_token_ids: bytes_to_u32s(&prompt),
                    response_token_ids: bytes_to_u32s(&response),
                    response_logprobs: bytes_to_f32s(&logprobs),
                    sampling: sampling.0,
                    created_at: row.try_get("created_at")?,
                })
            }

            pub async fn unused_samples(pool: &Pool, limit: i64) -> Result<Vec<SampleRow>, sqlx::Error> {
                let rows = sqlx::query(&format!(
                    "SELECT {SAMPLE_COLUMNS} FROM training_samples s JOIN turns t ON t.id = s.turn_id \
                     WHERE s.used_in_step IS NULL AND t.turn_type = 'main' ORDER BY s.id LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter().map(sample_from_row).collect()
            }

            pub async fn count_unused_samples(pool: &Pool) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM training_samples s JOIN turns t ON t.id = s.turn_id \
                     WHERE s.used_in_step IS NULL AND t.turn_type = 'main'",
                )
                    .fetch_one(pool)
                    .await
            }

            pub async fn record_step(pool: &Pool, step: &NewStep) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO training_steps (step, policy_version, created_version, metrics, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(step.step)
                .bind(step.policy_version)
                .bind(step.created_version)
                .bind(Json(&step.metrics))
                .bind(chrono::Utc::now())
                .execute(&mut *tx)
                .await?;
                for chunk in step.sample_ids.chunks(500) {
                    sqlx::query(&format!(
                        "UPDATE training_samples SET used_in_step = $1 \
                         WHERE id IN ({}) AND used_in_step IS NULL",
                        id_list(chunk)
                    ))
                    .bind(step.step)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }

            pub async fn steps(pool: &Pool, limit: i64) -> Result<Vec<StepRow>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT id, step, policy_version, created_version, metrics, created_at \
                     FROM training_steps ORDER BY id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let metrics: Json<Value> = row.try_get("metrics")?;
                        Ok(StepRow {
                            id: row.try_get("id")?,
                            step: row.try_get("step")?,
                            policy_version: row.try_get("policy_version")?,
                            created_version: row.try_get("created_version")?,
                            metrics: metrics.0,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            pub async fn insert_version(pool: &Pool, v: &NewVersion) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO policy_versions (version, step, path, status, reason, guard, metrics, checksum, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(v.version)
                .bind(v.step)
                .bind(&v.path)
                .bind(&v.status)
                .bind(&v.reason)
                .bind(v.guard.as_ref().map(Json))
                .bind(v.metrics.as_ref().map(Json))
                .bind(&v.checksum)
                .bind(chrono::Utc::now())
                .execute(pool)
                .await?;
                Ok(())
            }

            pub async fn set_version_status(
                pool: &Pool,
                version: i64,
                status: &str,
                reason: Option<&str>,
            ) -> Result<bool, sqlx::Error> {
                let result = sqlx::query("UPDATE policy_versions SET status = $2, reason = $3 WHERE version = $1")
                    .bind(version)
                    .bind(status)
                    .bind(reason)
                    .execute(pool)
                    .await?;
                Ok(result.rows_affected() > 0)
            }

            pub async fn versions(pool: &Pool, only: Option<i64>) -> Result<Vec<VersionRow>, sqlx::Error> {
                let rows = match only {
                    Some(v) => sqlx::query(&format!(
                        "SELECT {VERSION_COLUMNS} FROM policy_versions WHERE version = $1"
                    ))
                    .bind(v)
                    .fetch_all(pool)
                    .await?,
                    None => sqlx::query(&format!(
                        "SELECT {VERSION_COLUMNS} FROM policy_versions ORDER BY version DESC"
                    ))
                    .fetch_all(pool)
                    .await?,
                };
                rows.iter()
                    .map(|row| {
                        let guard: Option<Json<Value>> = row.try_get("guard")?;
                        let metrics: Option<Json<Value>> = row.try_get("metrics")?;
                        Ok(VersionRow {
                            version: row.try_get("version")?,
                            step: row.try_get("step")?,
                            path: row.try_get("path")?,
                            status: row.try_get("status")?,
                            reason: row.try_get("reason")?,
                            guard: guard.map(|g| g.0),
                            metrics: metrics.map(|m| m.0),
                            checksum: row.try_get("checksum")?,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            pub async fn latest_version(pool: &Pool) -> Result<i64, sqlx::Error> {
                let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM policy_versions")
                    .fetch_one(pool)
                    .await?;
                Ok(latest.unwrap_or(0))
            }

            pub async fn learner_state(pool: &Pool) -> Result<LearnerState, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT pinned_version, serving_version, updated_at FROM learner_state WHERE id = 1",
                )
                .fetch_one(pool)
                .await?;
                Ok(LearnerState {
                    pinned_version: row.try_get("pinned_version")?,
                    serving_version: row.try_get("serving_version")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            pub async fn set_pinned(pool: &Pool, version: Option<i64>) -> Result<(), sqlx::Error> {
                sqlx::query("UPDATE learner_state SET pinned_version = $1, updated_at = $2 WHERE id = 1")
                    .bind(version)
                    .bind(chrono::Utc::now())
                    .execute(pool)
                    .await?;
                Ok(())
            }

            pub async fn set_serving_version(pool: &Pool, version: i64) -> Result<(), sqlx::Error> {
                sqlx::query("UPDATE learner_state SET serving_version = $1, updated_at = $2 WHERE id = 1")
                    .bind(version)
                    .bind(chrono::Utc::now())
                    .execute(pool)
                    .await?;
                Ok(())
            }
        }
    };
}

backend_learner!(pg, sqlx::Postgres, "FOR UPDATE OF t SKIP LOCKED");
backend_learner!(lite, sqlx::Sqlite, "");
