# supervisord, the service manager of hosts booted without systemd.
include:
  - .package
  - .config
  - .service
