DROP TABLE cluster_nodes;
DROP TABLE controller_leases;
DROP SEQUENCE lease_epochs;
