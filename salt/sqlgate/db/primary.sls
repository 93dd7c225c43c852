# The primary: the server, its users, the Sakila sample database and the Proxy's
# heartbeat table.
include:
  - sqlgate.db
  - sqlgate.db.users
  - sqlgate.db.sakila
  - sqlgate.db.heartbeat
