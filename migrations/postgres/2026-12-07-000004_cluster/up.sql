-- Scale-out: which node drives which controller. A lease has an owner node, a fencing epoch
-- drawn from one sequence (so that it only grows, whatever the controller), and an expiry in
-- milliseconds of the database's own clock (nodes' clocks are never compared).
CREATE SEQUENCE lease_epochs;
CREATE TABLE controller_leases (
    controller_id TEXT PRIMARY KEY REFERENCES controllers (id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX controller_leases_node ON controller_leases (node_id);

-- The nodes that said they are alive, until when, and whether they are leaving.
CREATE TABLE cluster_nodes (
    node_id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    draining BOOLEAN NOT NULL DEFAULT FALSE
);
