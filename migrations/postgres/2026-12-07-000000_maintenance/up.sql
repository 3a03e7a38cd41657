-- Maintenance, as built: the initial schema's two tables were never used, so they are
-- replaced. A plan applies to one gate or, as the default for gates without plans of their
-- own, to every gate of a site; progress is where each gate stands against each plan since
-- its last service; records say what was done. Records, like events, outlive the gate.
DROP TABLE maintenance_records;
DROP TABLE maintenance_plans;

CREATE TABLE maintenance_plans (
    id TEXT PRIMARY KEY,
    gate_id TEXT REFERENCES gates (id) ON DELETE CASCADE,
    site_id TEXT REFERENCES sites (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    every_cycles BIGINT CHECK (every_cycles > 0),
    every_days BIGINT CHECK (every_days > 0),
    warn_cycles BIGINT NOT NULL DEFAULT 0 CHECK (warn_cycles >= 0),
    warn_days BIGINT NOT NULL DEFAULT 0 CHECK (warn_days >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK ((gate_id IS NULL) <> (site_id IS NULL)),
    CHECK (every_cycles IS NOT NULL OR every_days IS NOT NULL)
);
CREATE INDEX maintenance_plans_gate ON maintenance_plans (gate_id);
CREATE INDEX maintenance_plans_site ON maintenance_plans (site_id);

-- announced: the highest level ('ok', 'due', 'overdue') already raised as an event on the
-- gate's stream since since_ms, so that a restart does not raise it twice.
CREATE TABLE maintenance_progress (
    plan_id TEXT NOT NULL REFERENCES maintenance_plans (id) ON DELETE CASCADE,
    gate_id TEXT NOT NULL REFERENCES gates (id) ON DELETE CASCADE,
    since_ms BIGINT NOT NULL,
    since_cycles BIGINT,
    announced TEXT NOT NULL DEFAULT 'ok' CHECK (announced IN ('ok', 'due', 'overdue')),
    PRIMARY KEY (plan_id, gate_id)
);
CREATE INDEX maintenance_progress_gate ON maintenance_progress (gate_id);

-- parts: a JSON list of strings; attachments: a JSON list (kept for uploads).
CREATE TABLE maintenance_records (
    id TEXT PRIMARY KEY,
    gate_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    plan_id TEXT REFERENCES maintenance_plans (id) ON DELETE SET NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'completed')),
    opened_at BIGINT NOT NULL,
    opened_by TEXT NOT NULL,
    lockout BOOLEAN NOT NULL DEFAULT FALSE,
    completed_at BIGINT,
    completed_by TEXT,
    cycles_at BIGINT,
    summary TEXT NOT NULL DEFAULT '',
    parts TEXT NOT NULL DEFAULT '[]',
    notes TEXT NOT NULL DEFAULT '',
    attachments TEXT NOT NULL DEFAULT '[]',
    CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);
CREATE INDEX maintenance_records_gate ON maintenance_records (gate_id, opened_at);
CREATE INDEX maintenance_records_site ON maintenance_records (site_id, opened_at);
CREATE INDEX maintenance_records_opened ON maintenance_records (opened_at);
