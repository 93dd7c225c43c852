"""The Proxy: classifies each statement and runs it on the node its routing mode picks."""
