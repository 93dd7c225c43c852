# The balancer host: HAProxy in front of the Gatekeepers, passing TLS through to them.
include:
  - .package
  - .tls
  - .config
  - .service
