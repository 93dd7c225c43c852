# The host of role primary: a database node (node.sls) that is the primary until a failover
# names another one (pillar sqlgate:db:primary).
include:
  - sqlgate.db.node
