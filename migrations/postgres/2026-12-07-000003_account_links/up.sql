-- Emailed one-time links that let their holder set a user's password: invitations (a first
-- password) and password resets. Only a SHA-256 digest of the secret is kept. `used_at` is
-- set when the link is used, and also when a newer link of the same purpose replaces it.
CREATE TABLE account_links (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL CHECK (purpose IN ('invitation', 'password_reset')),
    digest TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    CHECK (expires_at > created_at)
);
CREATE INDEX account_links_user ON account_links (user_id, purpose);
