-- Every command id taken, with its command (gate and action): the id is the idempotency key
-- across gates and nodes, so it is decided here rather than in one node's memory. Kept for
-- two days (CONTRACTS.md: at least 24 hours), then forgotten by `claimed_at`.
CREATE TABLE command_ids (
    id TEXT PRIMARY KEY NOT NULL,
    gate_id TEXT NOT NULL,
    action TEXT NOT NULL,
    claimed_at BIGINT NOT NULL
);
CREATE INDEX command_ids_claimed_at ON command_ids (claimed_at);
