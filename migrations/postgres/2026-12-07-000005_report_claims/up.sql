-- Which node runs a report, so that in a cluster only the reports of nodes no longer alive
-- are put back in the queue (NULL: claimed by a node running alone, or before this column).
ALTER TABLE reports ADD COLUMN claimed_by TEXT;
