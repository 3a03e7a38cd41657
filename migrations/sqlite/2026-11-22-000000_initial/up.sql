-- Gatehouse's first schema, SQLite dialect. The PostgreSQL folder holds the same logical
-- tables; column types are chosen so that one diesel schema (Text, BigInt, Integer, Bool)
-- reads and writes both. Times are milliseconds since the Unix epoch in BIGINT columns;
-- identifiers of people and secrets are UUID strings; JSON is stored as TEXT.

-- Fleet configuration.
CREATE TABLE sites (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    timezone TEXT NOT NULL
);

-- Foreign keys of the fleet tables are checked at commit time inside `Store::apply` (the
-- store sets `defer_foreign_keys`), so that a batch may list its changes in any order.
CREATE TABLE controllers (
    id TEXT PRIMARY KEY NOT NULL,
    site TEXT NOT NULL REFERENCES sites (id),
    profile TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    request_timeout_ms BIGINT,
    inter_frame_delay_ms BIGINT,
    poll_interval_ms BIGINT
);
CREATE INDEX controllers_site ON controllers (site);

CREATE TABLE gates (
    id TEXT PRIMARY KEY NOT NULL,
    controller TEXT NOT NULL REFERENCES controllers (id),
    unit INTEGER NOT NULL CHECK (unit BETWEEN 0 AND 255),
    name TEXT NOT NULL,
    travel_timeout_s BIGINT NOT NULL,
    auto_close_after_s BIGINT,
    left_open_alert_after_s BIGINT,
    UNIQUE (controller, unit)
);

-- People, roles and what they may operate.
CREATE TABLE roles (
    name TEXT PRIMARY KEY NOT NULL
);
INSERT INTO roles (name) VALUES ('admin'), ('operator'), ('resident'), ('viewer');

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL REFERENCES roles (name),
    created_at BIGINT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE
);

-- A grant names exactly one gate or one site; `windows` is a JSON list of time windows
-- (an empty list means always). Grants die with their user, gate or site.
CREATE TABLE grants (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    gate_id TEXT REFERENCES gates (id) ON DELETE CASCADE,
    site_id TEXT REFERENCES sites (id) ON DELETE CASCADE,
    windows TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    CHECK ((gate_id IS NULL) <> (site_id IS NULL))
);
CREATE INDEX grants_user ON grants (user_id);
CREATE INDEX grants_gate ON grants (gate_id);
CREATE INDEX grants_site ON grants (site_id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL REFERENCES roles (name),
    site_id TEXT REFERENCES sites (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- Refresh tokens rotate within a family; presenting a used token revokes the whole family
-- (reuse detection), hence the family table.
CREATE TABLE refresh_token_families (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX refresh_token_families_user ON refresh_token_families (user_id);

CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    family_id TEXT NOT NULL REFERENCES refresh_token_families (id) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    issued_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- The event log. `gate` has no foreign key: history outlives a removed gate. AUTOINCREMENT
-- so that an id is never reused, even after the newest rows are deleted: readers resume
-- "after id N". The typed columns serve queries; `payload` is the whole event as JSON and
-- is what readers decode.
CREATE TABLE gate_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gate TEXT NOT NULL,
    controller TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    cause TEXT NOT NULL,
    command_id TEXT,
    action TEXT,
    status TEXT,
    reason TEXT,
    state TEXT NOT NULL,
    cycles BIGINT,
    payload TEXT NOT NULL,
    -- Serves "gate X since seq N" and makes a retried append a no-op.
    UNIQUE (gate, seq)
);
-- Finished-command lookups after a restart. Partial: only those rows are indexed, so that
-- the other events cost nothing here (queries must spell the predicate literally for the
-- planner to use it).
CREATE INDEX gate_events_finished ON gate_events (at_ms) WHERE kind = 'command_finished';

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    source_ip TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
CREATE INDEX audit_log_actor ON audit_log (actor, at_ms);

-- Maintenance: a plan says how often a gate needs service (by cycles, by days, or both);
-- a record says what was done. Records, like events, outlive the gate.
CREATE TABLE maintenance_plans (
    id TEXT PRIMARY KEY NOT NULL,
    gate_id TEXT NOT NULL REFERENCES gates (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    every_cycles BIGINT,
    every_days BIGINT,
    notify TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    CHECK (every_cycles IS NOT NULL OR every_days IS NOT NULL)
);
CREATE INDEX maintenance_plans_gate ON maintenance_plans (gate_id);

CREATE TABLE maintenance_records (
    id TEXT PRIMARY KEY NOT NULL,
    gate_id TEXT NOT NULL,
    plan_id TEXT REFERENCES maintenance_plans (id) ON DELETE SET NULL,
    done_at_ms BIGINT NOT NULL,
    done_by TEXT NOT NULL,
    cycles_at BIGINT,
    notes TEXT NOT NULL DEFAULT '',
    attachments TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX maintenance_records_gate ON maintenance_records (gate_id, done_at_ms);
