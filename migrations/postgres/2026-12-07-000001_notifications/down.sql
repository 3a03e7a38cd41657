DROP TABLE mail_outbox;
DROP TABLE notification_rules;
ALTER TABLE users DROP COLUMN email;
