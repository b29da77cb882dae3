-- Stored responses of the Responses API (`store: true`): what GET /v1/responses/{id} returns and
-- what `previous_response_id` replays. The turn itself is logged in `turns` like a chat turn.

CREATE TABLE responses (
    id            TEXT PRIMARY KEY,        -- `resp_…`, the id returned to the client
    key_id        TEXT NOT NULL,           -- the key that created it ('' with auth off)
    session_id    TEXT,                    -- the session its turn was logged under
    body          JSONB NOT NULL,          -- the response object as returned
    conversation  JSONB NOT NULL,          -- chat messages: input history + input + output
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX responses_key ON responses (key_id, created_at);
