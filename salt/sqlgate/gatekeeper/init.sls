# The Gatekeeper: the only public entry point; checks the API key and forwards to the Proxy.
include:
  - sqlgate.app
  - .config
  - .service
