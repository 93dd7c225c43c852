# A read-only replica ("worker") that follows the primary by GTID.
include:
  - sqlgate.db
  - sqlgate.db.replication
