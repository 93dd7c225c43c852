# A read-only replica that follows the primary by GTID.
include:
  - sqlgate.db
  - sqlgate.db.replication
