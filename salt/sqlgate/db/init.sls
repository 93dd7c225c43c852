# A MySQL or MariaDB server (the flavour comes from map.jinja), configured for GTID replication.
include:
  - .package
  - .config
  - .service
