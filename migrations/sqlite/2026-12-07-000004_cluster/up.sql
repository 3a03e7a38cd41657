-- Scale-out runs on PostgreSQL only (a cluster shares one database); these tables keep the
-- two schemas alike by name and stay empty on SQLite.
CREATE TABLE controller_leases (
    controller_id TEXT PRIMARY KEY REFERENCES controllers (id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX controller_leases_node ON controller_leases (node_id);

CREATE TABLE cluster_nodes (
    node_id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    draining BOOLEAN NOT NULL DEFAULT FALSE
);
