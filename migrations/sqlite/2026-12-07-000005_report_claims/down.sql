ALTER TABLE reports DROP COLUMN claimed_by;
