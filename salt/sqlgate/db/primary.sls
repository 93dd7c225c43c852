# The primary ("manager"): the server, its users and the Sakila sample database.
include:
  - sqlgate.db
  - sqlgate.db.users
  - sqlgate.db.sakila
