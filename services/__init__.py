"""The Gatekeeper and the Proxy: two Tornado services in front of a replicated MySQL cluster."""
