-- Everything Hindsight logs about served turns, and what the learner derives from them.

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,          -- hash of the key ('' when auth is off), never the key
    created_at  TEXT NOT NULL
);

CREATE TABLE sessions (
    id          INTEGER PRIMARY KEY,
    key_id      TEXT NOT NULL,
    session_id  TEXT NOT NULL,             -- the client's id, or a generated `sess_…`
    explicit    INTEGER NOT NULL,
    turn_count  INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    closed_at   TEXT,
    UNIQUE (key_id, session_id)
);

CREATE TABLE turns (
    id                  INTEGER PRIMARY KEY,
    response_id         TEXT NOT NULL UNIQUE,
    session_pk          INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL,   -- 1-based position in the session
    parent_turn         INTEGER REFERENCES turns(id) ON DELETE SET NULL,
    key_id              TEXT NOT NULL,
    turn_type           TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    model               TEXT NOT NULL,
    messages            TEXT NOT NULL,
    tools               TEXT,
    prompt_token_ids    BLOB NOT NULL,    -- u32 little-endian
    response_text       TEXT NOT NULL,
    response_tool_calls TEXT,
    finish_reason       TEXT NOT NULL,
    response_token_ids  BLOB NOT NULL,    -- u32 little-endian
    response_logprobs   BLOB NOT NULL,    -- f32 little-endian, behaviour policy
    extra_choices       TEXT,             -- choices 1.. when n > 1
    policy_version      INTEGER NOT NULL,
    sampling            TEXT NOT NULL,
    prompt_tokens       INTEGER NOT NULL,
    completion_tokens   INTEGER NOT NULL,
    latency_ms          INTEGER NOT NULL,
    ttft_ms             INTEGER,
    prefix_hash         TEXT,              -- hash of the history this request continued
    continuation_hash   TEXT NOT NULL,     -- hash of messages + this response
    created_at          TEXT NOT NULL,
    logged_at           TEXT NOT NULL
);
CREATE INDEX turns_continuation ON turns (key_id, continuation_hash);
CREATE INDEX turns_session ON turns (session_pk, seq);
CREATE INDEX turns_created ON turns (created_at);

CREATE TABLE next_states (
    id          INTEGER PRIMARY KEY,
    turn_id     INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'tool')),
    content     TEXT NOT NULL,
    message     TEXT NOT NULL,            -- the full message (tool_call_id, parts...)
    created_at  TEXT NOT NULL
);
CREATE INDEX next_states_turn ON next_states (turn_id, position);

CREATE TABLE feedback (
    id          INTEGER PRIMARY KEY,
    feedback_id TEXT NOT NULL UNIQUE,      -- makes journal replay idempotent
    turn_id     INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    rating      TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    correction  TEXT,
    source      TEXT NOT NULL CHECK (source IN ('api', 'chat', 'dashboard')),
    created_at  TEXT NOT NULL
);
CREATE INDEX feedback_turn ON feedback (turn_id);

CREATE TABLE judgements (
    id          INTEGER PRIMARY KEY,
    turn_id     INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    judge       TEXT NOT NULL,
    votes       TEXT NOT NULL,
    score       REAL,
    hint        TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX judgements_turn ON judgements (turn_id);

CREATE TABLE training_samples (
    id              INTEGER PRIMARY KEY,
    turn_id         INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    policy_version  INTEGER NOT NULL,
    reward          REAL,
    advantage       REAL,
    data            TEXT,
    used_in_step    INTEGER,
    created_at      TEXT NOT NULL
);
CREATE INDEX training_samples_turn ON training_samples (turn_id);

CREATE TABLE training_steps (
    id              INTEGER PRIMARY KEY,
    step            INTEGER NOT NULL,
    policy_version  INTEGER NOT NULL,
    metrics         TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

CREATE TABLE policy_versions (
    version     INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,
    status      TEXT NOT NULL,
    metrics     TEXT,
    created_at  TEXT NOT NULL
);
