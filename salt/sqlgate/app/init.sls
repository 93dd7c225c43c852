# The project's code in a virtualenv, run by an unprivileged user: shared by Proxy and Gatekeeper.
include:
  - .user
  - .tls
  - .install
