-- Reports, generated in the background by the scheduler: what was asked (kind, site,
-- period, format), where it is (status, progress) and where its file is (a blob key).
CREATE TABLE reports (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('events', 'audit', 'maintenance')),
    site_id TEXT,
    from_ms BIGINT NOT NULL,
    to_ms BIGINT NOT NULL,
    format TEXT NOT NULL CHECK (format IN ('csv', 'pdf')),
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    progress BIGINT NOT NULL DEFAULT 0,
    row_count BIGINT NOT NULL DEFAULT 0,
    blob_key TEXT,
    size BIGINT,
    error TEXT,
    requested_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    CHECK (to_ms > from_ms)
);
CREATE INDEX reports_created ON reports (created_at);
CREATE INDEX reports_status ON reports (status, created_at);
