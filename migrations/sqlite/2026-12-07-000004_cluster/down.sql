DROP TABLE cluster_nodes;
DROP TABLE controller_leases;
