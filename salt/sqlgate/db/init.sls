# A MySQL or MariaDB server (the flavour comes from map.jinja), configured for GTID replication
# over TLS.
include:
  - .package
  - .tls
  - .config
  - .service
