-- SHA-256 of a published adapter's files (see `learn::publish::adapter_checksum`), recorded
-- with the version and checked before it serves; NULL on versions published before this.
ALTER TABLE policy_versions ADD COLUMN checksum TEXT;
