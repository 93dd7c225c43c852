# The Proxy: routes reads to replicas and writes to the primary.
include:
  - sqlgate.app
  - .config
  - .service
