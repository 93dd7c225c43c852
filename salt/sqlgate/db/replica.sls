# A host of role replica: a database node (node.sls) that follows the current primary by GTID,
# or is the primary itself after a failover promoted it.
include:
  - sqlgate.db.node
