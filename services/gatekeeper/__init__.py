"""The Gatekeeper: the only public service; checks the API key and the request, then forwards."""
