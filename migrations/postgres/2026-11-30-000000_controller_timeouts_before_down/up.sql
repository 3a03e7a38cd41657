-- Request timeouts in a row that take a controller's link down, over its profile's.
ALTER TABLE controllers ADD COLUMN timeouts_before_down BIGINT;
