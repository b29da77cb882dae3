-- How each turn joined its session (see `store::linking`), the hashes the fallback links look
-- up, and why a side turn is never trained on.

-- header | body | previous_response_id | affinity_header | prompt_cache_key | metadata
-- | prefix | history | reply | new; NULL on turns logged before this migration.
ALTER TABLE turns ADD COLUMN link_method TEXT;
-- Hash of the request's non-system messages + this response: found by a later request whose
-- system prompt changed (a date line, injected notes).
ALTER TABLE turns ADD COLUMN history_hash TEXT;
-- Hash of the request's last non-system message + this response: found by a later request
-- whose older history was compacted but which kept this exchange.
ALTER TABLE turns ADD COLUMN reply_hash TEXT;
-- The request's `user`: content links only join turns of the same user (none matches none).
ALTER TABLE turns ADD COLUMN end_user TEXT;
-- client (X-Turn-Type: side) | length_cut | probe; NULL on main turns.
ALTER TABLE turns ADD COLUMN side_reason TEXT;
UPDATE turns SET side_reason = 'client' WHERE turn_type = 'side';

CREATE INDEX turns_history ON turns (key_id, history_hash);
CREATE INDEX turns_reply ON turns (key_id, reply_hash);
