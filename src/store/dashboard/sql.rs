//! The dashboard's SQL, instantiated for each backend. Only two things differ: how a timestamp
//! becomes a bucket number and which LIKE is case-insensitive.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::Row;

use super::{
    preview, Counters, JudgementDetail, LiveCursor, LiveEvent, RewardFilter, SampleDetail,
    ServingState, SessionFilter, SessionRow, StepRow, Time, VersionRow, LIVE_BATCH,
};

/// Tables counted per time bucket (by `created_at`).
pub const SERIES_TABLES: &[&str] = &["turns", "next_states", "feedback", "judgements"];

/// Characters of text a live event carries; the timeline has the rest.
const PREVIEW_CHARS: usize = 280;

const SESSION_ROW: &str = "SELECT s.id, s.session_id, s.key_id, s.explicit, s.turn_count, \
    s.created_at, s.updated_at, s.closed_at, \
    (SELECT COUNT(*) FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE t.session_pk = s.id AND f.rating = 'up') AS feedback_up, \
    (SELECT COUNT(*) FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE t.session_pk = s.id AND f.rating = 'down') AS feedback_down, \
    (SELECT COUNT(*) FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE t.session_pk = s.id AND f.correction IS NOT NULL AND f.correction <> '') AS corrections, \
    (SELECT COUNT(DISTINCT j.turn_id) FROM judgements j JOIN turns t ON t.id = j.turn_id WHERE t.session_pk = s.id) AS judged, \
    (SELECT AVG(x.reward) FROM training_samples x JOIN turns t ON t.id = x.turn_id WHERE t.session_pk = s.id) AS mean_reward, \
    (SELECT MAX(t.policy_version) FROM turns t WHERE t.session_pk = s.id) AS last_version \
    FROM sessions s";

const REWARDED: &str = "EXISTS (SELECT 1 FROM training_samples x JOIN turns t ON t.id = x.turn_id \
    WHERE t.session_pk = s.id AND x.reward IS NOT NULL AND ";

const CORRECTED: &str = "(EXISTS (SELECT 1 FROM feedback f JOIN turns t ON t.id = f.turn_id \
    WHERE t.session_pk = s.id AND f.correction IS NOT NULL AND f.correction <> '') \
    OR EXISTS (SELECT 1 FROM judgements j JOIN turns t ON t.id = j.turn_id \
    WHERE t.session_pk = s.id AND j.hint IS NOT NULL AND j.hint <> ''))";

/// The WHERE clause of a sessions query. Only fixed SQL is spliced in; values are bound as
/// $1 search pattern, $2 key, $3 from, $4 to.
fn session_where(filter: &SessionFilter, like: &str) -> String {
    let mut clauses = vec![
        format!(
            "($1 IS NULL OR s.session_id {like} $1 ESCAPE '\\' OR EXISTS (SELECT 1 FROM turns t \
             WHERE t.session_pk = s.id AND (t.response_id {like} $1 ESCAPE '\\' \
             OR t.response_text {like} $1 ESCAPE '\\' OR CAST(t.messages AS TEXT) {like} $1 ESCAPE '\\')))"
        ),
        "($2 IS NULL OR s.key_id = $2)".to_string(),
        "($3 IS NULL OR s.updated_at >= $3)".to_string(),
        "($4 IS NULL OR s.created_at < $4)".to_string(),
    ];
    match filter.rewarded {
        Some(RewardFilter::Any) => clauses.push(format!("{REWARDED} x.reward <> 0)")),
        Some(RewardFilter::Positive) => clauses.push(format!("{REWARDED} x.reward > 0)")),
        Some(RewardFilter::Negative) => clauses.push(format!("{REWARDED} x.reward < 0)")),
        Some(RewardFilter::None) => clauses.push(format!("NOT {REWARDED} x.reward <> 0)")),
        None => {}
    }
    match filter.corrected {
        Some(true) => clauses.push(CORRECTED.to_string()),
        Some(false) => clauses.push(format!("NOT {CORRECTED}")),
        None => {}
    }
    clauses.join(" AND ")
}

/// `%text%` with LIKE's wildcards escaped.
fn like_pattern(search: &Option<String>) -> Option<String> {
    search.as_ref().map(|text| {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    })
}

/// The last user message's text of a request, for previews.
fn last_user_text(messages: &Value) -> String {
    let Some(message) = messages
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

macro_rules! dashboard_sql {
    ($module:ident, $db:ty, like = $like:literal, bucket = $bucket:literal) => {
        pub mod $module {
            use super::*;
            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type DbRow = <Db as sqlx::Database>::Row;

            pub async fn counters(pool: &Pool) -> Result<Counters, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM turns) AS turns, \
                     (SELECT COUNT(*) FROM turns WHERE turn_type = 'main') AS main_turns, \
                     (SELECT COUNT(*) FROM sessions) AS sessions, \
                     (SELECT COUNT(DISTINCT turn_id) FROM next_states) AS with_next, \
                     (SELECT COUNT(*) FROM feedback) AS feedback, \
                     (SELECT COUNT(*) FROM feedback WHERE rating = 'up') AS up, \
                     (SELECT COUNT(*) FROM feedback WHERE rating = 'down') AS down, \
                     (SELECT COUNT(*) FROM feedback WHERE correction IS NOT NULL AND correction <> '') AS corrections, \
                     (SELECT COUNT(DISTINCT turn_id) FROM judgements) AS judged, \
                     (SELECT COUNT(*) FROM training_samples) AS samples, \
                     (SELECT COUNT(*) FROM training_samples WHERE used_in_step IS NULL) AS waiting, \
                     (SELECT COUNT(*) FROM training_steps) AS steps, \
                     (SELECT MAX(step) FROM training_steps) AS last_step, \
                     (SELECT COUNT(*) FROM policy_versions) AS versions, \
                     (SELECT MAX(version) FROM policy_versions) AS latest, \
                     (SELECT MAX(version) FROM policy_versions WHERE status = 'promoted') AS promoted, \
                     (SELECT COUNT(*) FROM policy_versions WHERE status = 'rejected') AS rejected",
                )
                .fetch_one(pool)
                .await?;
                Ok(Counters {
                    turns: row.try_get("turns")?,
                    main_turns: row.try_get("main_turns")?,
                    sessions: row.try_get("sessions")?,
                    turns_with_next_state: row.try_get("with_next")?,
                    feedback: row.try_get("feedback")?,
                    feedback_up: row.try_get("up")?,
                    feedback_down: row.try_get("down")?,
                    corrections: row.try_get("corrections")?,
                    judged_turns: row.try_get("judged")?,
                    samples: row.try_get("samples")?,
                    samples_waiting: row.try_get("waiting")?,
                    steps: row.try_get("steps")?,
                    last_step: row.try_get("last_step")?,
                    versions: row.try_get("versions")?,
                    latest_version: row.try_get("latest")?,
                    latest_promoted: row.try_get("promoted")?,
                    rejected_versions: row.try_get("rejected")?,
                })
            }

            pub async fn serving_state(pool: &Pool) -> Result<Option<ServingState>, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT serving_version, pinned_version, trainer_holder, updated_at \
                     FROM learner_state WHERE id = 1",
                )
                .fetch_optional(pool)
                .await?;
                row.map(|row| {
                    Ok(ServingState {
                        serving_version: row.try_get("serving_version")?,
                        pinned_version: row.try_get("pinned_version")?,
                        trainer_holder: row.try_get("trainer_holder")?,
                        updated_at: row.try_get("updated_at")?,
                    })
                })
                .transpose()
            }

            pub async fn samples_by_kind(pool: &Pool) -> Result<BTreeMap<String, i64>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT COALESCE(kind, 'unknown') AS kind, COUNT(*) AS n FROM training_samples GROUP BY kind",
                )
                .fetch_all(pool)
                .await?;
                let mut out = BTreeMap::new();
                for row in rows {
                    *out.entry(row.try_get::<String, _>("kind")?).or_insert(0) += row.try_get::<i64, _>("n")?;
                }
                Ok(out)
            }

            /// (turn, rating, score) of every feedback × non-feedback judgement on one turn,
            /// in insertion order (so the last one per turn is the latest).
            pub async fn feedback_judge_pairs(
                pool: &Pool,
            ) -> Result<Vec<(i64, String, Option<f64>)>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT f.turn_id, f.rating, j.score FROM feedback f \
                     JOIN judgements j ON j.turn_id = f.turn_id \
                     WHERE COALESCE(j.source, '') <> 'feedback' AND j.judge <> 'feedback' \
                     ORDER BY f.id, j.id",
                )
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("turn_id")?, r.try_get("rating")?, r.try_get("score")?)))
                    .collect()
            }

            pub async fn bucket_counts(
                pool: &Pool,
                table: &str,
                since: Time,
                bucket_seconds: i64,
            ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
                if !SERIES_TABLES.contains(&table) {
                    return Err(sqlx::Error::Protocol(format!("not a series table: {table}")));
                }
                let rows = sqlx::query(&format!(
                    "SELECT {} AS b, COUNT(*) AS n FROM {table} WHERE created_at >= $2 GROUP BY 1",
                    $bucket
                ))
                .bind(bucket_seconds)
                .bind(since)
                .fetch_all(pool)
                .await?;
                rows.iter().map(|r| Ok((r.try_get("b")?, r.try_get("n")?))).collect()
            }

            fn session_from_row(row: &DbRow) -> Result<SessionRow, sqlx::Error> {
                Ok(SessionRow {
                    pk: row.try_get("id")?,
                    session_id: row.try_get("session_id")?,
                    key_id: row.try_get("key_id")?,
                    explicit: row.try_get("explicit")?,
                    turn_count: row.try_get("turn_count")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    closed_at: row.try_get("closed_at")?,
                    feedback_up: row.try_get("feedback_up")?,
                    feedback_down: row.try_get("feedback_down")?,
                    corrections: row.try_get("corrections")?,
                    judged: row.try_get("judged")?,
                    mean_reward: row.try_get("mean_reward")?,
                    last_version: row.try_get("last_version")?,
                })
            }

            pub async fn sessions(
                pool: &Pool,
                filter: &SessionFilter,
            ) -> Result<(Vec<SessionRow>, i64), sqlx::Error> {
                let clause = session_where(filter, $like);
                let pattern = like_pattern(&filter.search);
                let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM sessions s WHERE {clause}"))
                    .bind(&pattern)
                    .bind(&filter.key)
                    .bind(filter.from)
                    .bind(filter.to)
                    .fetch_one(pool)
                    .await?;
                let rows = sqlx::query(&format!(
                    "{SESSION_ROW} WHERE {clause} ORDER BY s.updated_at DESC, s.id DESC LIMIT $5 OFFSET $6"
                ))
                .bind(&pattern)
                .bind(&filter.key)
                .bind(filter.from)
                .bind(filter.to)
                .bind(filter.limit)
                .bind(filter.offset)
                .fetch_all(pool)
                .await?;
                let rows = rows.iter().map(session_from_row).collect::<Result<_, _>>()?;
                Ok((rows, total))
            }

            pub async fn session_row(
                pool: &Pool,
                pk: i64,
                _filter: &SessionFilter,
            ) -> Result<Option<SessionRow>, sqlx::Error> {
                let row = sqlx::query(&format!("{SESSION_ROW} WHERE s.id = $1"))
                    .bind(pk)
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(session_from_row).transpose()
            }

            pub async fn session_judgements(
                pool: &Pool,
                pk: i64,
            ) -> Result<HashMap<String, Vec<JudgementDetail>>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT t.response_id, j.judge, j.source, j.votes, j.score, j.hint, j.hint_votes, j.created_at \
                     FROM judgements j JOIN turns t ON t.id = j.turn_id WHERE t.session_pk = $1 ORDER BY j.id",
                )
                .bind(pk)
                .fetch_all(pool)
                .await?;
                let mut out: HashMap<String, Vec<JudgementDetail>> = HashMap::new();
                for row in rows {
                    let votes: Json<Value> = row.try_get("votes")?;
                    let hint_votes: Option<Json<Value>> = row.try_get("hint_votes")?;
                    out.entry(row.try_get("response_id")?).or_default().push(JudgementDetail {
                        judge: row.try_get("judge")?,
                        source: row.try_get("source")?,
                        votes: votes.0,
                        score: row.try_get("score")?,
                        hint: row.try_get("hint")?,
                        hint_votes: hint_votes.map(|v| v.0),
                        created_at: row.try_get("created_at")?,
                    });
                }
                Ok(out)
            }

            pub async fn session_samples(
                pool: &Pool,
                pk: i64,
            ) -> Result<HashMap<String, Vec<SampleDetail>>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT t.response_id, x.kind, x.reward, x.hint, x.used_in_step, x.policy_version, x.created_at \
                     FROM training_samples x JOIN turns t ON t.id = x.turn_id WHERE t.session_pk = $1 ORDER BY x.id",
                )
                .bind(pk)
                .fetch_all(pool)
                .await?;
                let mut out: HashMap<String, Vec<SampleDetail>> = HashMap::new();
                for row in rows {
                    out.entry(row.try_get("response_id")?).or_default().push(SampleDetail {
                        kind: row.try_get("kind")?,
                        reward: row.try_get("reward")?,
                        hint: row.try_get("hint")?,
                        used_in_step: row.try_get("used_in_step")?,
                        policy_version: row.try_get("policy_version")?,
                        created_at: row.try_get("created_at")?,
                    });
                }
                Ok(out)
            }

            pub async fn steps(pool: &Pool, limit: i64) -> Result<Vec<StepRow>, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT step, policy_version, created_version, metrics, created_at FROM training_steps \
                     ORDER BY step DESC, id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(pool)
                .await?;
                let Some(oldest) = rows.last().map(|r| r.try_get::<i64, _>("step")).transpose()? else {
                    return Ok(Vec::new());
                };
                let mut stats: HashMap<i64, (i64, Option<f64>, Option<f64>)> = HashMap::new();
                for row in sqlx::query(
                    "SELECT x.used_in_step AS step, COUNT(*) AS n, AVG(x.reward) AS reward, \
                     AVG((SELECT AVG(j.score) FROM judgements j WHERE j.turn_id = x.turn_id)) AS score \
                     FROM training_samples x WHERE x.used_in_step >= $1 GROUP BY x.used_in_step",
                )
                .bind(oldest)
                .fetch_all(pool)
                .await?
                {
                    stats.insert(row.try_get("step")?, (row.try_get("n")?, row.try_get("reward")?, row.try_get("score")?));
                }
                let mut out = Vec::with_capacity(rows.len());
                for row in rows.iter().rev() {
                    let step: i64 = row.try_get("step")?;
                    let metrics: Json<Value> = row.try_get("metrics")?;
                    let (samples, sample_reward, judge_score) = stats.get(&step).cloned().unwrap_or((0, None, None));
                    out.push(StepRow {
                        step,
                        policy_version: row.try_get("policy_version")?,
                        created_version: row.try_get("created_version")?,
                        metrics: metrics.0,
                        created_at: row.try_get("created_at")?,
                        samples,
                        sample_reward,
                        judge_score,
                    });
                }
                Ok(out)
            }

            fn version_from_row(row: &DbRow) -> Result<VersionRow, sqlx::Error> {
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
            }

            const VERSION_COLUMNS: &str = "version, step, path, status, reason, guard, metrics, checksum, created_at";

            pub async fn turn_key(pool: &Pool, response_id: &str) -> Result<Option<String>, sqlx::Error> {
                sqlx::query_scalar("SELECT key_id FROM turns WHERE response_id = $1")
                    .bind(response_id)
                    .fetch_optional(pool)
                    .await
            }

            pub async fn live_cursor(pool: &Pool) -> Result<LiveCursor, sqlx::Error> {
                let row = sqlx::query(
                    "SELECT COALESCE((SELECT MAX(id) FROM turns), 0) AS turns, \
                     COALESCE((SELECT MAX(id) FROM next_states), 0) AS next_states, \
                     COALESCE((SELECT MAX(id) FROM feedback), 0) AS feedback, \
                     COALESCE((SELECT MAX(id) FROM judgements), 0) AS judgements, \
                     COALESCE((SELECT MAX(id) FROM training_steps), 0) AS steps, \
                     COALESCE((SELECT MAX(version) FROM policy_versions), -1) AS versions, \
                     (SELECT CAST(serving_version AS TEXT) || ':' || COALESCE(CAST(pinned_version AS TEXT), '-') \
                      FROM learner_state WHERE id = 1) AS learner",
                )
                .fetch_one(pool)
                .await?;
                Ok(LiveCursor {
                    turns: row.try_get("turns")?,
                    next_states: row.try_get("next_states")?,
                    feedback: row.try_get("feedback")?,
                    judgements: row.try_get("judgements")?,
                    steps: row.try_get("steps")?,
                    versions: row.try_get("versions")?,
                    learner: row.try_get("learner")?,
                })
            }

            pub async fn live_turns(pool: &Pool, after: i64, out: &mut Vec<LiveEvent>) -> Result<i64, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT t.id, t.response_id, t.seq, t.session_pk, s.session_id, t.key_id, t.turn_type, \
                     t.model, t.policy_version, t.messages, t.response_text, t.finish_reason, t.created_at \
                     FROM turns t JOIN sessions s ON s.id = t.session_pk WHERE t.id > $1 ORDER BY t.id LIMIT $2",
                )
                .bind(after)
                .bind(LIVE_BATCH)
                .fetch_all(pool)
                .await?;
                let mut last = after;
                for row in rows {
                    last = row.try_get("id")?;
                    let messages: Json<Value> = row.try_get("messages")?;
                    let response: String = row.try_get("response_text")?;
                    out.push(LiveEvent { kind: "turn", data: json!({
                        "id": last,
                        "response_id": row.try_get::<String, _>("response_id")?,
                        "seq": row.try_get::<i64, _>("seq")?,
                        "session_pk": row.try_get::<i64, _>("session_pk")?,
                        "session_id": row.try_get::<String, _>("session_id")?,
                        "key_id": row.try_get::<String, _>("key_id")?,
                        "turn_type": row.try_get::<String, _>("turn_type")?,
                        "model": row.try_get::<String, _>("model")?,
                        "policy_version": row.try_get::<i64, _>("policy_version")?,
                        "request": preview(&last_user_text(&messages.0), PREVIEW_CHARS),
                        "response": preview(&response, PREVIEW_CHARS),
                        "finish_reason": row.try_get::<String, _>("finish_reason")?,
                        "created_at": row.try_get::<Time, _>("created_at")?,
                    })});
                }
                Ok(last)
            }

            pub async fn live_next_states(pool: &Pool, after: i64, out: &mut Vec<LiveEvent>) -> Result<i64, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT n.id, t.response_id, t.session_pk, n.role, n.content, n.created_at \
                     FROM next_states n JOIN turns t ON t.id = n.turn_id WHERE n.id > $1 ORDER BY n.id LIMIT $2",
                )
                .bind(after)
                .bind(LIVE_BATCH)
                .fetch_all(pool)
                .await?;
                let mut last = after;
                for row in rows {
                    last = row.try_get("id")?;
                    let content: String = row.try_get("content")?;
                    out.push(LiveEvent { kind: "next_state", data: json!({
                        "id": last,
                        "response_id": row.try_get::<String, _>("response_id")?,
                        "session_pk": row.try_get::<i64, _>("session_pk")?,
                        "role": row.try_get::<String, _>("role")?,
                        "content": preview(&content, PREVIEW_CHARS),
                        "created_at": row.try_get::<Time, _>("created_at")?,
                    })});
                }
                Ok(last)
            }

            pub async fn live_judgements(pool: &Pool, after: i64, out: &mut Vec<LiveEvent>) -> Result<i64, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT j.id, t.response_id, t.session_pk, j.judge, j.source, j.score, j.hint, j.created_at \
                     FROM judgements j JOIN turns t ON t.id = j.turn_id WHERE j.id > $1 ORDER BY j.id LIMIT $2",
                )
                .bind(after)
                .bind(LIVE_BATCH)
                .fetch_all(pool)
                .await?;
                let mut last = after;
                for row in rows {
                    last = row.try_get("id")?;
                    let hint: Option<String> = row.try_get("hint")?;
                    out.push(LiveEvent { kind: "judgement", data: json!({
                        "id": last,
                        "response_id": row.try_get::<String, _>("response_id")?,
                        "session_pk": row.try_get::<i64, _>("session_pk")?,
                        "judge": row.try_get::<String, _>("judge")?,
                        "source": row.try_get::<Option<String>, _>("source")?,
                        "score": row.try_get::<Option<f64>, _>("score")?,
                        "hint": hint.map(|h| preview(&h, PREVIEW_CHARS)),
                        "created_at": row.try_get::<Time, _>("created_at")?,
                    })});
                }
                Ok(last)
            }

            pub async fn live_feedback(pool: &Pool, after: i64, out: &mut Vec<LiveEvent>) -> Result<i64, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT f.id, t.response_id, t.session_pk, f.rating, f.correction, f.source, f.created_at \
                     FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE f.id > $1 ORDER BY f.id LIMIT $2",
                )
                .bind(after)
                .bind(LIVE_BATCH)
                .fetch_all(pool)
                .await?;
                let mut last = after;
                for row in rows {
                    last = row.try_get("id")?;
                    let correction: Option<String> = row.try_get("correction")?;
                    out.push(LiveEvent { kind: "feedback", data: json!({
                        "id": last,
                        "response_id": row.try_get::<String, _>("response_id")?,
                        "session_pk": row.try_get::<i64, _>("session_pk")?,
                        "rating": row.try_get::<String, _>("rating")?,
                        "correction": correction.map(|c| preview(&c, PREVIEW_CHARS)),
                        "source": row.try_get::<String, _>("source")?,
                        "created_at": row.try_get::<Time, _>("created_at")?,
                    })});
                }
                Ok(last)
            }

            pub async fn live_steps(pool: &Pool, after: i64, out: &mut Vec<LiveEvent>) -> Result<i64, sqlx::Error> {
                let rows = sqlx::query(
                    "SELECT id, step, policy_version, created_version, metrics, created_at FROM training_steps \
                     WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(LIVE_BATCH)
                .fetch_all(pool)
                .await?;
                let mut last = after;
                for row in rows {
                    last = row.try_get("id")?;
                    let metrics: Json<Value> = row.try_get("metrics")?;
                    out.push(LiveEvent { kind: "step", data: json!({
                        "step": row.try_get::<i64, _>("step")?,
                        "policy_version": row.try_get::<i64, _>("policy_version")?,
                        "created_version": row.try_get::<Option<i64>, _>("created_version")?,
                        "metrics": metrics.0,
                        "created_at": row.try_get::<Time, _>("created_at")?,
                    })});
                }
                Ok(last)
            }

            pub async fn live_versions(pool: &Pool, after: i64, out: &mut Vec<LiveEvent>) -> Result<i64, sqlx::Error> {
                let rows = sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM policy_versions WHERE version > $1 ORDER BY version LIMIT $2"
                ))
                .bind(after)
                .bind(LIVE_BATCH)
                .fetch_all(pool)
                .await?;
                let mut last = after;
                for row in rows {
                    let version = version_from_row(&row)?;
                    last = version.version;
                    out.push(LiveEvent { kind: "version", data: serde_json::to_value(version).unwrap_or(Value::Null) });
                }
                Ok(last)
            }
        }
    };
}

dashboard_sql!(
    pg,
    sqlx::Postgres,
    like = "ILIKE",
    bucket = "CAST(FLOOR(EXTRACT(EPOCH FROM created_at) / $1) AS BIGINT)"
);
dashboard_sql!(
    lite,
    sqlx::Sqlite,
    like = "LIKE",
    bucket = "CAST(strftime('%s', created_at) AS INTEGER) / $1"
);
