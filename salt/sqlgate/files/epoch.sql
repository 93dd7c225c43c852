-- The cluster's epoch (docs/failover.md): one row, written by each promotion on the new primary
-- (epoch + 1 and its host name) and carried by replication to every node that follows it. The
-- Proxy writes only to the writable node whose epoch is the highest it has seen, so an old
-- primary that comes back writable is never written to.
CREATE TABLE IF NOT EXISTS sqlgate.epoch (
  id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
  epoch BIGINT UNSIGNED NOT NULL,
  primary_host VARCHAR(64) NOT NULL,
  promoted TIMESTAMP(6) NOT NULL
) ENGINE=InnoDB;
