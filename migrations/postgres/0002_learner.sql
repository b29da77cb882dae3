-- What the learner needs beyond capture: judge claims, sample kinds, version guards, serving state.

-- A main turn is judgeable once it has a next state or feedback; `judged_at` older than its
-- newest feedback makes it judgeable again (explicit feedback outranks the judge).
ALTER TABLE turns ADD COLUMN judged_at TIMESTAMPTZ;
ALTER TABLE turns ADD COLUMN judge_claimed_by TEXT;
ALTER TABLE turns ADD COLUMN judge_claim_until TIMESTAMPTZ;
CREATE INDEX turns_unjudged ON turns (id) WHERE judged_at IS NULL AND turn_type = 'main';

ALTER TABLE judgements ADD COLUMN hint_votes JSONB;   -- every hint vote, chosen or not
ALTER TABLE judgements ADD COLUMN source TEXT;        -- feedback | rules | local | openai

ALTER TABLE training_samples ADD COLUMN kind TEXT;    -- rl | opd | both
ALTER TABLE training_samples ADD COLUMN hint TEXT;
CREATE INDEX training_samples_unused ON training_samples (id) WHERE used_in_step IS NULL;

ALTER TABLE training_steps ADD COLUMN created_version BIGINT;

ALTER TABLE policy_versions ADD COLUMN step BIGINT;
ALTER TABLE policy_versions ADD COLUMN reason TEXT;   -- why a guard rejected it
ALTER TABLE policy_versions ADD COLUMN guard JSONB;   -- the probe results

-- One row: which version serves. pinned_version NULL = follow the latest promoted version.
CREATE TABLE learner_state (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    pinned_version      BIGINT,
    serving_version     BIGINT NOT NULL DEFAULT 0,
    trainer_holder      TEXT,                 -- the replica elected to train
    trainer_lease_until TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL
);
INSERT INTO learner_state (id, serving_version, updated_at) VALUES (1, 0, now());
