"""The Gatekeeper: the only public service. HTTPS in front (a plain port only redirects); API
keys with scopes and rate limits, checked before any body is read; the request checked with
the Proxy's own code, then forwarded over mutual TLS with the key's scope and name; answers
bounded in size and kept quiet about the inside; one JSON log line per request."""
