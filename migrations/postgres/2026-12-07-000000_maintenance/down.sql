DROP TABLE maintenance_records;
DROP TABLE maintenance_progress;
DROP TABLE maintenance_plans;

-- Maintenance: a plan says how often a gate needs service (by cycles, by days, or both);
-- a record says what was done. Records, like events, outlive the gate.
CREATE TABLE maintenance_plans (
    id TEXT PRIMARY KEY,
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
    id TEXT PRIMARY KEY,
    gate_id TEXT NOT NULL,
    plan_id TEXT REFERENCES maintenance_plans (id) ON DELETE SET NULL,
    done_at_ms BIGINT NOT NULL,
    done_by TEXT NOT NULL,
    cycles_at BIGINT,
    notes TEXT NOT NULL DEFAULT '',
    attachments TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX maintenance_records_gate ON maintenance_records (gate_id, done_at_ms);
