//! Postgres fast path for a batch of new turns: the same linking as `apply::pg::apply_turn`,
//! decided in memory over the whole batch, then written with a fixed number of set-based
//! statements (`INSERT … SELECT FROM UNNEST(…)`) instead of ~4 round trips per turn. Round
//! trips, not SQL work, bound the per-turn path on a busy machine.
//!
//! Anything unusual (a response id already stored, a session deleted meanwhile) rolls the
//! batch back and returns None: the caller then applies it turn by turn.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;

use super::apply::Applied;
use super::apply_pg_rows::{
    insert_chat_thumbs, insert_next_states, insert_turns, NextStateColumns, ThumbColumns,
    TurnColumns,
};
use super::canonical::{chat_rating, content_text, split_trailing_replies};
use super::capture::{CapturedTurn, LinkMethod, SideReason};
use super::linking::{Linking, CONTENT_LINKS};
use super::ops::{f32s_to_bytes, u32s_to_bytes, Rating, WriteOp};

type Time = chrono::DateTime<chrono::Utc>;

/// Whether `ops` can take the fast path: no response id twice.
pub fn eligible(ops: &[WriteOp]) -> bool {
    let mut seen = HashSet::new();
    ops.iter().all(|op| match op {
        WriteOp::Turn { turn } => seen.insert(turn.response_id.as_str()),
        WriteOp::Feedback { .. } => true,
    })
}

/// `ops` without the turns whose response id is already stored (journal replay, retries).
pub async fn without_stored(pool: &PgPool, ops: &[WriteOp]) -> Result<Vec<WriteOp>, sqlx::Error> {
    let ids: Vec<&str> = ops
        .iter()
        .filter_map(|op| op.pending_response().map(|(id, _)| id))
        .collect();
    let stored: HashSet<String> = if ids.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar("SELECT response_id FROM turns WHERE response_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect()
    };
    Ok(ops
        .iter()
        .filter(|op| {
            !op.pending_response()
                .is_some_and(|(id, _)| stored.contains(id))
        })
        .cloned()
        .collect())
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum TurnRef {
    Stored(i64),
    Batch(usize),
}

struct Session {
    /// None: created by this batch.
    pk: Option<i64>,
    key: String,
    name: String,
    explicit: bool,
    closed: Option<Time>,
    newly_closed: bool,
    /// Turns so far (known for explicit sessions, which need it to pick a parent).
    count: i64,
    /// Turns this batch adds.
    added: i64,
    latest: Option<TurnRef>,
    created_at: Time,
    updated_at: Time,
}

struct Planned<'a> {
    turn: &'a CapturedTurn,
    linking: Linking<'a>,
    session: usize,
    /// 1-based position among this batch's turns of its session.
    index: i64,
    parent: Option<TurnRef>,
    method: LinkMethod,
}

/// Candidate parents of one content link: (kind, key, user, hash) → newest first.
type Candidates = HashMap<(usize, String, String, String), Vec<(TurnRef, i64)>>;

fn messages_of(turn: &CapturedTurn) -> &[Value] {
    turn.messages.as_array().map_or(&[], Vec::as_slice)
}

/// Applies an eligible batch in one transaction; None (rolled back) when it must be applied
/// turn by turn instead.
pub async fn apply_batch(
    pool: &PgPool,
    ops: &[WriteOp],
    known_keys: &HashSet<String>,
) -> Result<Option<Applied>, sqlx::Error> {
    let turns: Vec<&CapturedTurn> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Turn { turn } => Some(&**turn),
            WriteOp::Feedback { .. } => None,
        })
        .collect();
    let mut tx = pool.begin().await?;
    let mut applied = Applied::default();
    for turn in &turns {
        let key = turn.api_key_id.as_deref().unwrap_or("");
        if !known_keys.contains(key) && !applied.new_keys.iter().any(|k| k == key) {
            sqlx::query(
                "INSERT INTO api_keys (key_id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(key)
            .bind(turn.created_at)
            .execute(&mut *tx)
            .await?;
            applied.new_keys.push(key.to_string());
        }
    }
    if !turns.is_empty() && !write_turns(&mut tx, &turns).await? {
        return Ok(None); // dropping `tx` rolls back
    }
    // Feedback ops follow their turns (they are queued behind them), so after all turns.
    for op in ops {
        if let WriteOp::Feedback { feedback } = op {
            super::apply::pg::insert_feedback(&mut tx, feedback).await?;
        }
    }
    tx.commit().await?;
    Ok(Some(applied))
}

async fn write_turns(
    tx: &mut sqlx::PgConnection,
    turns: &[&CapturedTurn],
) -> Result<bool, sqlx::Error> {
    let linkings: Vec<Linking> = turns.iter().map(|t| Linking::of(t)).collect();

    // Stored turns this batch's requests continue by content (newest first per hash).
    let mut wanted: [HashSet<(&str, &str, &str)>; 3] = Default::default();
    for linking in &linkings {
        for (kind, hash) in linking.lookups.iter().enumerate() {
            if let Some(hash) = hash {
                wanted[kind].insert((linking.key, linking.user, hash.as_str()));
            }
        }
    }
    let mut by_hash: Candidates = HashMap::new();
    if wanted.iter().any(|w| !w.is_empty()) {
        let parts: Vec<String> = CONTENT_LINKS
            .iter()
            .enumerate()
            .map(|(kind, (_, column))| {
                let p = 3 * kind;
                format!(
                    "SELECT {kind} AS kind, t.key_id, COALESCE(t.end_user, '') AS end_user, \
                     t.{column} AS hash, t.id, t.session_pk FROM turns t \
                     JOIN UNNEST(${}::text[], ${}::text[], ${}::text[]) AS w(key_id, end_user, hash) \
                       ON t.key_id = w.key_id AND t.{column} = w.hash \
                       AND COALESCE(t.end_user, '') = w.end_user \
                     JOIN sessions s ON s.id = t.session_pk WHERE s.closed_at IS NULL",
                    p + 1,
                    p + 2,
                    p + 3
                )
            })
            .collect();
        let sql = format!("{} ORDER BY id DESC", parts.join(" UNION ALL "));
        let mut query = sqlx::query_as::<_, (i32, String, String, String, i64, i64)>(&sql);
        for set in &wanted {
            let (keys, rest): (Vec<&str>, Vec<(&str, &str)>) =
                set.iter().map(|(k, u, h)| (*k, (*u, *h))).unzip();
            let (users, hashes): (Vec<&str>, Vec<&str>) = rest.into_iter().unzip();
            query = query.bind(keys).bind(users).bind(hashes);
        }
        for (kind, key, user, hash, id, session_pk) in query.fetch_all(&mut *tx).await? {
            by_hash
                .entry((kind as usize, key, user, hash))
                .or_default()
                .push((TurnRef::Stored(id), session_pk));
        }
    }

    // Named sessions that already exist, with their latest turn.
    let named: HashSet<(&str, &str)> = linkings
        .iter()
        .filter_map(|l| Some((l.key, l.named?.0)))
        .collect();
    let (named_keys, named_ids): (Vec<&str>, Vec<&str>) = named.into_iter().unzip();
    type NamedRow = (i64, String, String, i64, Option<Time>, Option<i64>);
    let named_rows: Vec<NamedRow> = if named_keys.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT s.id, s.key_id, s.session_id, s.turn_count, s.closed_at, \
             (SELECT id FROM turns WHERE session_pk = s.id ORDER BY seq DESC LIMIT 1) \
             FROM sessions s JOIN UNNEST($1::text[], $2::text[]) AS w(key_id, name) \
               ON s.key_id = w.key_id AND s.session_id = w.name",
        )
        .bind(&named_keys)
        .bind(&named_ids)
        .fetch_all(&mut *tx)
        .await?
    };

    let mut sessions: Vec<Session> = Vec::new();
    let mut by_pk: HashMap<i64, usize> = HashMap::new();
    let mut by_name: HashMap<(String, String), usize> = HashMap::new();
    for (pk, key, name, count, closed, latest) in named_rows {
        by_pk.insert(pk, sessions.len());
        by_name.insert((key.clone(), name.clone()), sessions.len());
        sessions.push(Session {
            pk: Some(pk),
            key,
            name,
            explicit: true,
            closed,
            newly_closed: false,
            count,
            added: 0,
            latest: latest.map(TurnRef::Stored),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        });
    }

    // Link every turn in arrival order, exactly as turn-by-turn application would.
    let mut planned: Vec<Planned> = Vec::with_capacity(turns.len());
    for (turn, linking) in turns.iter().zip(linkings) {
        let key = linking.key;
        // A named session first: content links then look only inside it.
        let named = linking.named.map(|(name, source)| {
            let s = *by_name
                .entry((key.to_string(), name.to_string()))
                .or_insert_with(|| {
                    sessions.push(new_session(key, name.to_string(), true, turn.created_at));
                    sessions.len() - 1
                });
            (s, source)
        });
        let mut parent: Option<(TurnRef, usize)> = None;
        let mut content = None;
        'links: for (kind, hash) in linking.lookups.iter().enumerate() {
            let Some(hash) = hash else { continue };
            let found = (
                kind,
                key.to_string(),
                linking.user.to_string(),
                hash.clone(),
            );
            for &(turn_ref, session_pk) in by_hash.get(&found).into_iter().flatten() {
                let session = match (turn_ref, named) {
                    (TurnRef::Batch(i), _) => planned[i].session,
                    (TurnRef::Stored(_), Some(_)) => match by_pk.get(&session_pk) {
                        Some(&s) => s,
                        None => continue, // another session than the named one
                    },
                    (TurnRef::Stored(_), None) => *by_pk.entry(session_pk).or_insert_with(|| {
                        sessions.push(Session {
                            pk: Some(session_pk),
                            key: key.to_string(),
                            name: String::new(),
                            explicit: false,
                            closed: None,
                            newly_closed: false,
                            count: 0,
                            added: 0,
                            latest: None,
                            created_at: turn.created_at,
                            updated_at: turn.created_at,
                        });
                        sessions.len() - 1
                    }),
                };
                if named.is_some_and(|(s, _)| s != session) {
                    continue;
                }
                if sessions[session].closed.is_none() {
                    parent = Some((turn_ref, session));
                    content = Some(CONTENT_LINKS[kind].0);
                    break 'links;
                }
            }
        }
        let session = match (named, parent) {
            (Some((s, source)), _) => {
                if parent.is_none() && sessions[s].count >= 1 && source.follows_latest() {
                    // A named session's client may send only the new message.
                    parent = sessions[s].latest.map(|t| (t, s));
                }
                s
            }
            (None, Some((_, s))) => s,
            (None, None) => {
                sessions.push(new_session(key, new_session_name(), false, turn.created_at));
                sessions.len() - 1
            }
        };
        let this = TurnRef::Batch(planned.len());
        let s = &mut sessions[session];
        s.count += 1;
        s.added += 1;
        s.updated_at = turn.created_at;
        s.latest = Some(this);
        if turn.session_done {
            s.closed = Some(turn.created_at);
            s.newly_closed = true;
        }
        // Newest first, like `ORDER BY id DESC`.
        for (kind, hash) in linking.offers.iter().enumerate() {
            by_hash
                .entry((
                    kind,
                    key.to_string(),
                    linking.user.to_string(),
                    hash.clone(),
                ))
                .or_default()
                .insert(0, (this, 0));
        }
        planned.push(Planned {
            turn,
            method: linking.method(content),
            linking,
            session,
            index: s.added,
            parent: parent.map(|p| p.0),
        });
    }

    // Stored parents that already have a next state keep their first one.
    let stored_parent_ids: Vec<i64> = planned
        .iter()
        .filter_map(|p| match p.parent {
            Some(TurnRef::Stored(id)) => Some(id),
            _ => None,
        })
        .collect();
    let mut has_next: HashSet<TurnRef> = if stored_parent_ids.is_empty() {
        HashSet::new()
    } else {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT DISTINCT turn_id FROM next_states WHERE turn_id = ANY($1)")
                .bind(&stored_parent_ids)
                .fetch_all(&mut *tx)
                .await?;
        ids.into_iter().map(TurnRef::Stored).collect()
    };

    // Ids up front, so in-batch parents can be referenced in the same INSERT.
    let new_sessions: Vec<usize> = (0..sessions.len())
        .filter(|&i| sessions[i].pk.is_none())
        .collect();
    let (turn_ids, session_ids): (Vec<i64>, Vec<i64>) = sqlx::query_as(
        "SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('turns', 'id')) FROM generate_series(1, $1)), \
                ARRAY(SELECT nextval(pg_get_serial_sequence('sessions', 'id')) FROM generate_series(1, $2))",
    )
    .bind(planned.len() as i64)
    .bind(new_sessions.len() as i64)
    .fetch_one(&mut *tx)
    .await?;
    let (mut turn_ids, mut session_ids) = (turn_ids, session_ids);
    turn_ids.sort_unstable();
    session_ids.sort_unstable();
    let mut session_pks: Vec<i64> = sessions.iter().map(|s| s.pk.unwrap_or(0)).collect();
    for (&i, &id) in new_sessions.iter().zip(&session_ids) {
        session_pks[i] = id;
    }
    // Turn count before this batch, per session (from the database, under its row lock).
    let mut base = vec![0i64; sessions.len()];

    if !new_sessions.is_empty() {
        let rows = sqlx::query(
            "INSERT INTO sessions (id, key_id, session_id, explicit, turn_count, created_at, updated_at, closed_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bool[], $5::bigint[], \
                                  $6::timestamptz[], $7::timestamptz[], $8::timestamptz[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(new_sessions.iter().map(|&i| session_pks[i]).collect::<Vec<_>>())
        .bind(new_sessions.iter().map(|&i| sessions[i].key.as_str()).collect::<Vec<_>>())
        .bind(new_sessions.iter().map(|&i| sessions[i].name.as_str()).collect::<Vec<_>>())
        .bind(new_sessions.iter().map(|&i| sessions[i].explicit).collect::<Vec<_>>())
        .bind(new_sessions.iter().map(|&i| sessions[i].added).collect::<Vec<_>>())
        .bind(new_sessions.iter().map(|&i| sessions[i].created_at).collect::<Vec<_>>())
        .bind(new_sessions.iter().map(|&i| sessions[i].updated_at).collect::<Vec<_>>())
        .bind(new_sessions.iter().map(|&i| sessions[i].closed).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        if rows.rows_affected() != new_sessions.len() as u64 {
            return Ok(false); // a named session appeared meanwhile
        }
    }
    let existing: Vec<usize> = (0..sessions.len())
        .filter(|&i| sessions[i].pk.is_some() && sessions[i].added > 0)
        .collect();
    if !existing.is_empty() {
        let counts: Vec<(i64, i64)> = sqlx::query_as(
            "UPDATE sessions s SET turn_count = s.turn_count + v.added, updated_at = v.updated_at, \
               closed_at = COALESCE(v.closed_at, s.closed_at) \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::timestamptz[], $4::timestamptz[]) \
               AS v(id, added, updated_at, closed_at) \
             WHERE s.id = v.id RETURNING s.id, s.turn_count",
        )
        .bind(existing.iter().map(|&i| session_pks[i]).collect::<Vec<_>>())
        .bind(existing.iter().map(|&i| sessions[i].added).collect::<Vec<_>>())
        .bind(existing.iter().map(|&i| sessions[i].updated_at).collect::<Vec<_>>())
        .bind(
            existing
                .iter()
                .map(|&i| sessions[i].newly_closed.then_some(sessions[i].closed).flatten())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        if counts.len() != existing.len() {
            return Ok(false); // a session was deleted meanwhile
        }
        for (pk, count) in counts {
            let i = by_pk[&pk];
            base[i] = count - sessions[i].added;
        }
    }

    let id_of = |r: TurnRef| match r {
        TurnRef::Stored(id) => id,
        TurnRef::Batch(i) => turn_ids[i],
    };
    let now = chrono::Utc::now();
    let mut rows = TurnColumns::default();
    let mut next = NextStateColumns::default();
    let mut thumbs = ThumbColumns::default();
    for (i, p) in planned.iter().enumerate() {
        let turn = p.turn;
        let first = turn.choices.first();
        rows.id.push(turn_ids[i]);
        rows.response_id.push(turn.response_id.as_str());
        rows.session_pk.push(session_pks[p.session]);
        rows.seq.push(base[p.session] + p.index);
        rows.parent.push(p.parent.map(id_of));
        rows.key.push(p.linking.key);
        rows.turn_type.push(p.linking.turn_type());
        rows.endpoint.push(turn.endpoint.as_str());
        rows.model.push(turn.model.as_str());
        rows.messages.push(Json(&turn.messages));
        rows.tools.push(turn.tools.as_ref().map(Json));
        rows.prompt_ids.push(u32s_to_bytes(&turn.prompt_token_ids));
        rows.text.push(first.map_or("", |c| c.text.as_str()));
        rows.calls
            .push(first.and_then(|c| c.tool_calls.as_ref()).map(Json));
        rows.finish
            .push(first.map_or("", |c| c.finish_reason.as_str()));
        rows.ids.push(
            first
                .map(|c| u32s_to_bytes(&c.token_ids))
                .unwrap_or_default(),
        );
        rows.logprobs.push(
            first
                .map(|c| f32s_to_bytes(&c.logprobs))
                .unwrap_or_default(),
        );
        rows.extra.push(
            (turn.choices.len() > 1)
                .then(|| Json(serde_json::to_value(&turn.choices[1..]).unwrap_or(Value::Null))),
        );
        rows.policy.push(turn.policy_version as i64);
        rows.sampling.push(Json(&turn.sampling));
        rows.prompt_tokens.push(turn.prompt_tokens as i64);
        rows.completion_tokens.push(turn.completion_tokens as i64);
        rows.latency.push(turn.latency_ms as i64);
        rows.ttft
            .push(turn.time_to_first_token_ms.map(|v| v as i64));
        rows.prefix_hash.push(p.linking.prefix_hash());
        rows.continuation_hash.push(p.linking.continuation_hash());
        rows.created_at.push(turn.created_at);
        rows.history_hash.push(p.linking.offers[1].as_str());
        rows.reply_hash.push(p.linking.offers[2].as_str());
        rows.end_user.push(p.linking.end_user());
        rows.link_method.push(p.method.as_str());
        rows.side_reason
            .push(p.linking.side.map(SideReason::as_str));

        let (true, Some(parent)) = (p.linking.records_next_state(), p.parent) else {
            continue;
        };
        let (_, replies) = split_trailing_replies(messages_of(turn));
        if !replies.is_empty() && has_next.insert(parent) {
            for (position, message) in replies.iter().enumerate() {
                next.turn_id.push(id_of(parent));
                next.position.push(position as i64);
                next.role.push(
                    message
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("user"),
                );
                next.content
                    .push(content_text(message.get("content").unwrap_or(&Value::Null)));
                next.message.push(Json(message));
                next.created_at.push(turn.created_at);
            }
        }
        let rating = replies
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| chat_rating(&content_text(m.get("content").unwrap_or(&Value::Null))))
            .and_then(Rating::parse);
        if let Some(rating) = rating {
            thumbs
                .feedback_id
                .push(format!("fb_{}", uuid::Uuid::now_v7().simple()));
            thumbs.turn_id.push(id_of(parent));
            thumbs.rating.push(rating.as_str());
            thumbs.created_at.push(turn.created_at);
        }
    }

    if insert_turns(tx, &rows, now).await? != planned.len() as u64 {
        return Ok(false); // a response id is already stored
    }
    insert_next_states(tx, &next).await?;
    insert_chat_thumbs(tx, &thumbs).await?;
    Ok(true)
}

fn new_session(key: &str, name: String, explicit: bool, at: Time) -> Session {
    Session {
        pk: None,
        key: key.to_string(),
        name,
        explicit,
        closed: None,
        newly_closed: false,
        count: 0,
        added: 0,
        latest: None,
        created_at: at,
        updated_at: at,
    }
}

fn new_session_name() -> String {
    format!("sess_{}", uuid::Uuid::now_v7().simple())
}
