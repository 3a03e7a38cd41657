ALTER TABLE controllers DROP COLUMN timeouts_before_down;
