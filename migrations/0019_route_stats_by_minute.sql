-- The window's reads and the deletion of old minutes select by minute (every process, every
-- two seconds): an index on it, not a scan of the table.
CREATE INDEX route_stats_minute ON route_stats (minute);
