-- The Proxy's heartbeat (services/proxy/health.py): one row per Proxy, written on the primary every
-- health interval and read back on each replica, so the Proxy measures each replica's lag on
-- its own clock. Created on the primary; replication brings it to the replicas.
CREATE TABLE IF NOT EXISTS sqlgate.heartbeat (
  proxy VARCHAR(64) NOT NULL PRIMARY KEY,
  epoch BIGINT UNSIGNED NOT NULL,
  seq BIGINT UNSIGNED NOT NULL,
  written TIMESTAMP(6) NOT NULL
) ENGINE=InnoDB;
