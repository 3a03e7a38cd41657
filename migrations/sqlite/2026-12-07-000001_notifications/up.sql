-- Where notifications reach a user.
ALTER TABLE users ADD COLUMN email TEXT;

-- A rule: a trigger ('fault', 'obstruction', 'left_open', 'link_down', 'maintenance_due',
-- 'maintenance_overdue', 'login_lockout'), optionally one site, how long a condition must
-- persist (after_s), and its recipients: JSON lists of user ids and of role names.
CREATE TABLE notification_rules (
    id TEXT PRIMARY KEY NOT NULL,
    trigger_kind TEXT NOT NULL,
    site_id TEXT REFERENCES sites (id) ON DELETE CASCADE,
    after_s BIGINT NOT NULL DEFAULT 0 CHECK (after_s >= 0),
    user_ids TEXT NOT NULL DEFAULT '[]',
    roles TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL
);

-- The durable outbox: one row per message and recipient, delivered with retries. Rows are
-- kept after delivery (the dedupe window and the operators' view read them).
CREATE TABLE mail_outbox (
    id TEXT PRIMARY KEY NOT NULL,
    dedupe_key TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body_text TEXT NOT NULL,
    body_html TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    sent_at BIGINT,
    last_error TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (status, next_attempt_at);
CREATE INDEX mail_outbox_dedupe ON mail_outbox (dedupe_key, recipient, created_at);
CREATE INDEX mail_outbox_created ON mail_outbox (created_at);
