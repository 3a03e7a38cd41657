-- Drops the first schema, dependents first.
DROP TABLE maintenance_records;
DROP TABLE maintenance_plans;
DROP TABLE audit_log;
DROP TABLE gate_events;
DROP TABLE refresh_tokens;
DROP TABLE refresh_token_families;
DROP TABLE api_keys;
DROP TABLE grants;
DROP TABLE users;
DROP TABLE roles;
DROP TABLE gates;
DROP TABLE controllers;
DROP TABLE sites;
