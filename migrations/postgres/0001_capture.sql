-- Everything Hindsight logs about served turns, and what the learner derives from them.

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,          -- hash of the key ('' when auth is off), never the key
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE sessions (
    id          BIGSERIAL PRIMARY KEY,
    key_id      TEXT NOT NULL,
    session_id  TEXT NOT NULL,             -- the client's id, or a generated `sess_…`
    explicit    BOOLEAN NOT NULL,
    turn_count  BIGINT NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    closed_at   TIMESTAMPTZ,
    UNIQUE (key_id, session_id)
);

CREATE TABLE turns (
    id                  BIGSERIAL PRIMARY KEY,
    response_id         TEXT NOT NULL UNIQUE,
    session_pk          BIGINT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq                 BIGINT NOT NULL,   -- 1-based position in the session
    parent_turn         BIGINT REFERENCES turns(id) ON DELETE SET NULL,
    key_id              TEXT NOT NULL,
    turn_type           TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    model               TEXT NOT NULL,
    messages            JSONB NOT NULL,
    tools               JSONB,
    prompt_token_ids    BYTEA NOT NULL,    -- u32 little-endian
    response_text       TEXT NOT NULL,
    response_tool_calls JSONB,
    finish_reason       TEXT NOT NULL,
    response_token_ids  BYTEA NOT NULL,    -- u32 little-endian
    response_logprobs   BYTEA NOT NULL,    -- f32 little-endian, behaviour policy
    extra_choices       JSONB,             -- choices 1.. when n > 1
    policy_version      BIGINT NOT NULL,
    sampling            JSONB NOT NULL,
    prompt_tokens       BIGINT NOT NULL,
    completion_tokens   BIGINT NOT NULL,
    latency_ms          BIGINT NOT NULL,
    ttft_ms             BIGINT,
    prefix_hash         TEXT,              -- hash of the history this request continued
    continuation_hash   TEXT NOT NULL,     -- hash of messages + this response
    created_at          TIMESTAMPTZ NOT NULL,
    logged_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX turns_continuation ON turns (key_id, continuation_hash);
CREATE INDEX turns_session ON turns (session_pk, seq);
CREATE INDEX turns_created ON turns (created_at);

CREATE TABLE next_states (
    id          BIGSERIAL PRIMARY KEY,
    turn_id     BIGINT NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    position    BIGINT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'tool')),
    content     TEXT NOT NULL,
    message     JSONB NOT NULL,            -- the full message (tool_call_id, parts...)
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX next_states_turn ON next_states (turn_id, position);

CREATE TABLE feedback (
    id          BIGSERIAL PRIMARY KEY,
    feedback_id TEXT NOT NULL UNIQUE,      -- makes journal replay idempotent
    turn_id     BIGINT NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    rating      TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    correction  TEXT,
    source      TEXT NOT NULL CHECK (source IN ('api', 'chat', 'dashboard')),
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX feedback_turn ON feedback (turn_id);

CREATE TABLE judgements (
    id          BIGSERIAL PRIMARY KEY,
    turn_id     BIGINT NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    judge       TEXT NOT NULL,
    votes       JSONB NOT NULL,
    score       DOUBLE PRECISION,
    hint        TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX judgements_turn ON judgements (turn_id);

CREATE TABLE training_samples (
    id              BIGSERIAL PRIMARY KEY,
    turn_id         BIGINT NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    policy_version  BIGINT NOT NULL,
    reward          DOUBLE PRECISION,
    advantage       DOUBLE PRECISION,
    data            JSONB,
    used_in_step    BIGINT,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX training_samples_turn ON training_samples (turn_id);

CREATE TABLE training_steps (
    id              BIGSERIAL PRIMARY KEY,
    step            BIGINT NOT NULL,
    policy_version  BIGINT NOT NULL,
    metrics         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE policy_versions (
    version     BIGINT PRIMARY KEY,
    path        TEXT NOT NULL,
    status      TEXT NOT NULL,
    metrics     JSONB,
    created_at  TIMESTAMPTZ NOT NULL
);
